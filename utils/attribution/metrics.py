"""How good are a model's transcoders? FVE of the MLP output, L0, dead features, and the
next-token loss of the model with its MLPs replaced by them.

Measured on held-out rows (``analysis_tokens``, the validation split). As in chapter 05, position 0
(BOS) is left as it is when splicing: the transcoders never saw it in training.
"""
from __future__ import annotations

from typing import Sequence

import torch

from utils.attribution.transcoder import Transcoder
from utils.data.dataset import analysis_tokens
from utils.sae.metrics import fraction_variance_explained


def replacement_hooks(transcoders: Sequence[Transcoder]) -> list:
    """Hooks that swap each transcoder's MLP output for the transcoder's prediction (BOS kept)."""
    hooks, inputs = [], {}
    for tc in transcoders:
        def read(x, hook, layer=tc.cfg.layer):
            inputs[layer] = x
            return x

        def write(y, hook, tc=tc):
            y = y.clone()
            y[:, 1:] = tc(inputs[tc.cfg.layer][:, 1:].to(tc.W_enc.dtype))[0].to(y.dtype)
            return y

        hooks += [(tc.cfg.hook_in, read), (tc.cfg.hook_out, write)]
    return hooks


@torch.no_grad()
def evaluate_transcoders(model, transcoders: Sequence[Transcoder], n_seqs: int = 64, seq_len: int = 128,
                         batch: int = 32) -> list[dict]:
    """Per transcoder: FVE of its MLP's output, L0, dead fraction; and (in every record) the loss of
    the clean model, with every listed MLP replaced, and with those MLPs zero-ablated."""
    tokens = analysis_tokens(seq_len, n_seqs)
    names = list(dict.fromkeys(h for tc in transcoders for h in (tc.cfg.hook_in, tc.cfg.hook_out)))
    xs = {h: [] for h in names}
    ce = {"clean": 0.0, "replaced": 0.0, "zero_ablated": 0.0}
    zero = [(tc.cfg.hook_out, lambda y, hook: torch.cat([y[:, :1], torch.zeros_like(y[:, 1:])], 1))
            for tc in transcoders]
    for start in range(0, n_seqs, batch):
        rows = tokens[start:start + batch]
        loss, cache = model.run_with_cache(rows, names_filter=names, return_type="loss")
        for h in names:
            xs[h].append(cache[h][:, 1:].reshape(-1, cache[h].shape[-1]))
        ce["clean"] += loss.item() * len(rows)
        ce["replaced"] += model.run_with_hooks(rows, return_type="loss",
                                               fwd_hooks=replacement_hooks(transcoders)).item() * len(rows)
        ce["zero_ablated"] += model.run_with_hooks(rows, return_type="loss", fwd_hooks=zero).item() * len(rows)
    ce = {k: v / n_seqs for k, v in ce.items()}
    records = []
    for tc in transcoders:
        x, y = torch.cat(xs[tc.cfg.hook_in]), torch.cat(xs[tc.cfg.hook_out])
        y_hat, f = tc(x)
        records.append({
            "layer": tc.cfg.layer, "fve": fraction_variance_explained(y, y_hat).item(),
            "l0": (f > 0).sum(-1).float().mean().item(), "dead_fraction": ((f > 0).sum(0) == 0).float().mean().item(),
            "ce_clean": ce["clean"], "ce_replaced_all": ce["replaced"], "ce_zero_ablated_all": ce["zero_ablated"],
            "eval_tokens": len(x)})
    return records
