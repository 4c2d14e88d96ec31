"""Access to the bundled tokenized corpus, and fixed-length training batches drawn from it."""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.paths import ASSETS

CORPUS_FILE = ASSETS / "corpus_tokens.safetensors"


@lru_cache(maxsize=1)
def load_corpus_tokens() -> dict[str, torch.Tensor]:
    """{"train": int64 ids, "val": int64 ids}: every document preceded by <|endoftext|> (id 0)."""
    from safetensors.numpy import load_file

    arrays = load_file(str(CORPUS_FILE))
    return {k: torch.from_numpy(v.astype("int64")) for k, v in arrays.items()}


def analysis_tokens(seq_len: int = 128, n_seqs: int | None = None, split: str = "val") -> torch.Tensor:
    """Held-out text cut into [n_seqs, seq_len] rows, each starting with BOS (id 0).

    Rows are consecutive, non-overlapping windows of the split, so the result is the same on every
    machine. This is the analysis set the chapters use.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    ids = load_corpus_tokens()[split]
    body = seq_len - 1
    rows = ids[: (len(ids) // body) * body].view(-1, body)
    if n_seqs is not None:
        if n_seqs > len(rows):
            raise ValueError(f"only {len(rows)} rows of length {seq_len} in the {split} split")
        rows = rows[:n_seqs]
    bos = torch.zeros(len(rows), 1, dtype=rows.dtype)
    return torch.cat([bos, rows], dim=1)


def batches(split: str, batch_size: int, seq_len: int, generator: torch.Generator):
    """Endless random windows [batch, seq_len] from a split; position 0 is always BOS.

    Real documents are already separated by BOS; forcing BOS at position 0 matches what
    ``to_tokens`` feeds the model at inference.
    """
    ids = load_corpus_tokens()[split]
    n = len(ids) - seq_len
    offsets = torch.arange(seq_len - 1)
    while True:
        starts = torch.randint(0, n, (batch_size,), generator=generator)
        window = ids[starts[:, None] + offsets]
        yield torch.cat([torch.zeros(batch_size, 1, dtype=ids.dtype), window], dim=1)
