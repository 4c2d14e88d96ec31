"""Induction heads, measured on repeated random tokens: ``python -m utils.induction [MODEL]``.

On a sequence BOS, r_1..r_n, r_1..r_n of uniformly random tokens, nothing predicts the first
half, but a model with induction heads predicts the second half by finding the previous
occurrence of the current token and copying the token that followed it. Two numbers show it:

* the loss drop: mean loss on the second half minus mean loss on the first half (nats);
* the induction score of a head: its mean attention, from each second-half position q, to the key
  position q - (n - 1), the token right after the previous occurrence of the current token.
"""
from __future__ import annotations

import argparse
import json

import torch

from utils.models.transformer import HookedTinyTransformer, lm_cross_entropy


def repeated_random_tokens(model: HookedTinyTransformer, seq_len: int, batch: int, seed: int = 0) -> torch.Tensor:
    """[batch, 1 + 2 * seq_len]: BOS then a random sequence twice (BOS id excluded from the draw)."""
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"2 * seq_len + 1 = {2 * seq_len + 1} exceeds n_ctx = {model.cfg.n_ctx}")
    g = torch.Generator().manual_seed(seed)
    random = torch.randint(1, model.cfg.d_vocab, (batch, seq_len), generator=g)
    bos = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([bos, random, random], dim=1)


def induction_scores(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention on the induction diagonal. pattern: [batch, head, q, k] -> [head]."""
    # Second-half query q = seq_len + 1 + j attends to key q - (seq_len - 1) = 2 + j.
    stripe = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # [batch, head, 2 * seq_len + 2 - seq_len]
    return stripe[..., -seq_len:].mean(dim=(0, -1))


def previous_token_scores(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it: [batch, head, q, k] -> [head]."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


@torch.no_grad()
def induction_report(model: HookedTinyTransformer, seq_len: int = 50, batch: int = 32, seed: int = 0) -> dict:
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    losses = lm_cross_entropy(logits, tokens, per_token=True)  # position i predicts token i + 1
    # First half: predictions of tokens 2..seq_len. Second half: tokens seq_len+2..2*seq_len (the
    # first repeated token is skipped: its predecessor r_n has no earlier occurrence to copy from).
    first = losses[:, 1:seq_len].mean().item()
    second = losses[:, seq_len + 1:].mean().item()
    report = {"seq_len": seq_len, "batch": batch, "loss_first_half": round(first, 3),
              "loss_second_half": round(second, 3), "loss_drop": round(first - second, 3), "layers": {}}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        report["layers"][layer] = {
            "induction_score": [round(x, 3) for x in induction_scores(pattern, seq_len).tolist()],
            "previous_token_score": [round(x, 3) for x in previous_token_scores(pattern).tolist()],
        }
    return report


def main(argv=None) -> None:
    from utils.models import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="attn-only-2l")
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    model = load_model(args.model, device="cpu")
    report = induction_report(model, args.seq_len, args.batch)
    print(f"{args.model}: repeated random tokens, seq_len {args.seq_len}, batch {args.batch}")
    print(f"  loss first half {report['loss_first_half']:.3f}, second half {report['loss_second_half']:.3f}, "
          f"drop {report['loss_drop']:.3f} nats")
    for layer, scores in report["layers"].items():
        print(f"  layer {layer} induction scores     {scores['induction_score']}")
        print(f"  layer {layer} previous-token scores {scores['previous_token_score']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
