"""What the LM trainer logs and the shipped-model gate checks: repeated random tokens, head scores,
held-out losses and the in-context-learning score.

Model-level measurements, kept out of the chapter packages so that ``utils.models.train`` (its
training log, ``trajectory_point``) and ``tests/test_data.py`` (the gate on the bundled
attn-only-2l, ``GATE``/``gate_report``/``gate_failures``) import no chapter. Chapter 03's package
``utils.induction`` re-exports every name here; three of them are graded there as exercises
(``induction_scores``, ``previous_token_scores``, ``in_context_learning_score``), so this is their
reference form too.

On a sequence BOS, r_1..r_n, r_1..r_n of uniformly random tokens, nothing predicts the first
half, but a model with induction heads predicts the second half by finding the previous
occurrence of the current token and copying the token that followed it. Two numbers show it:

* the loss drop: mean loss on the second half minus mean loss on the first half (nats);
* the induction score of a head: its mean attention, from each second-half position q, to the key
  position q - (n - 1), the token right after the previous occurrence of the current token.

Contents: ``repeated_random_tokens``; ``induction_scores``, ``previous_token_scores``,
``induction_report``; ``in_context_learning_score`` (``ICL_EARLY``, ``ICL_LATE``),
``held_out_losses``, ``second_copy_losses``, ``chunk_means``, ``copying_point``, ``trajectory_point``; the gate:
``GATE``, ``gate_report``, ``gate_failures``, ``record_gate``.
"""
from __future__ import annotations

import json

import torch
from jaxtyping import Float

from utils.models.transformer import HookedTinyTransformer, lm_cross_entropy
from utils.tensors import require_ndim


def model_device(model: HookedTinyTransformer) -> torch.device:
    """Where the model's weights live: tokens compared with its logits (the loss) must be there too."""
    return next(model.parameters()).device


def repeated_random_tokens(model: HookedTinyTransformer, seq_len: int, batch: int, seed: int = 0) -> torch.Tensor:
    """[batch, 1 + 2 * seq_len]: BOS then a random sequence twice (BOS id excluded from the draw)."""
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"2 * seq_len + 1 = {2 * seq_len + 1} exceeds n_ctx = {model.cfg.n_ctx}")
    g = torch.Generator().manual_seed(seed)
    random = torch.randint(1, model.cfg.d_vocab, (batch, seq_len), generator=g)
    bos = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([bos, random, random], dim=1).to(model_device(model))


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


# Token positions (0 is BOS) that the in-context-learning score compares, inclusive. The context
# is 128 tokens, so "late" is its last 28 tokens and "early" the 11 after the first few.
ICL_EARLY = (5, 15)
ICL_LATE = (100, 127)


def in_context_learning_score(
    losses: Float[torch.Tensor, "batch pos_minus_1"],
    early: tuple[int, int] = ICL_EARLY,
    late: tuple[int, int] = ICL_LATE,
) -> float:
    """Mean loss of the tokens at positions late[0]..late[1] minus that at early[0]..early[1]
    (both inclusive; token positions, so the loss of token t is column t - 1 of ``per_token_loss``).

    Negative when the model predicts a token better the more context precedes it; Olsson et al.
    (2022) use the loss at token 500 minus that at token 50 of a longer context.
    """
    require_ndim(losses, "losses", 2)
    (e0, e1), (l0, l1) = early, late
    if not 1 <= e0 <= e1 < l0 <= l1 <= losses.shape[1]:
        raise ValueError(f"need 1 <= early[0] <= early[1] < late[0] <= late[1] <= {losses.shape[1]} (token positions "
                         f"of a per-token loss with {losses.shape[1]} columns); got early={early}, late={late}")
    return float(losses[:, l0 - 1:l1].mean() - losses[:, e0 - 1:e1].mean())


def second_copy_losses(model: HookedTinyTransformer, seq_len: int, batch: int = 64, seed: int = 0) -> torch.Tensor:
    """[seq_len - 1]: mean loss, over ``batch`` rows of BOS, r, r, on each second-copy token r_2..r_n
    (r_1 is skipped: the token before it, r_n, has not occurred earlier)."""
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    with torch.no_grad():
        losses = lm_cross_entropy(model(tokens), tokens, per_token=True)  # column t - 1 is token t's loss
    return losses[:, seq_len + 1:].mean(0)


def chunk_means(values: torch.Tensor, size: int = 10) -> list[float]:
    """Means of consecutive chunks of ``size`` values (the last chunk may be shorter)."""
    return [round(chunk.mean().item(), 3) for chunk in values.split(size)]


@torch.no_grad()
def held_out_losses(model: HookedTinyTransformer, n_seqs: int = 256, batch_size: int = 64) -> dict:
    """Held-out text loss, and the in-context-learning score: mean loss of tokens at positions
    100-127 minus mean loss at positions 5-15 (more negative = more in-context learning).

    A model whose context is shorter than 128 tokens has no token 127: its score and the two
    window losses are None rather than a number measured on other positions.
    """
    from utils.data.dataset import analysis_tokens

    data = analysis_tokens(seq_len=model.cfg.n_ctx, n_seqs=n_seqs).to(model_device(model))
    losses = torch.cat([lm_cross_entropy(model(data[i:i + batch_size]), data[i:i + batch_size], per_token=True)
                        for i in range(0, len(data), batch_size)])
    out = {"val_loss": round(losses.mean().item(), 4), "icl_score": None, "loss_early": None, "loss_late": None}
    if losses.shape[1] >= ICL_LATE[1]:  # column t - 1 is token t's loss
        out["icl_score"] = round(in_context_learning_score(losses), 4)
        out["loss_early"] = round(losses[:, ICL_EARLY[0] - 1:ICL_EARLY[1]].mean().item(), 4)
        out["loss_late"] = round(losses[:, ICL_LATE[0] - 1:ICL_LATE[1]].mean().item(), 4)
    return out


def copying_point(model: HookedTinyTransformer) -> dict:
    """The copying half of a trajectory point, measured on repeated random tokens of the model's own
    vocabulary (no text): the second-copy loss at the whole context, its chunks, and the best
    previous-token (layer 0) and induction (last layer) heads."""
    n = (model.cfg.n_ctx - 1) // 2
    second = second_copy_losses(model, n, batch=32)
    report = induction_report(model, seq_len=n, batch=16)
    last = model.cfg.n_layers - 1
    return {"second_copy_loss": round(second.mean().item(), 3), "second_copy_chunks": chunk_means(second),
            "best_previous_token_score": max(report["layers"][0]["previous_token_score"]),
            "best_induction_score": max(report["layers"][last]["induction_score"])}


def trajectory_point(model: HookedTinyTransformer) -> dict:
    """What the training log records at each eval of a 2-layer model: held-out loss, the
    in-context-learning score, and ``copying_point``'s second-copy loss and best heads."""
    point = held_out_losses(model)
    point.update(copying_point(model))
    return point


# What the bundled attn-only-2l must reach (tests/test_data.py gates the shipped file on it).
GATE = {"second_copy_mean_below": 1.5, "second_copy_chunk_below": 2.5, "seq_lens": (63, 50),
        "previous_token_score_at_least": 0.4, "induction_score_at_least": 0.5}


def gate_report(model: HookedTinyTransformer, baseline: HookedTinyTransformer | None = None,
                batch: int = 64) -> dict:
    """Every number the gate checks, for ``model`` (and held-out loss / ICL for ``baseline``)."""
    out = {"second_copy": {}, "held_out": held_out_losses(model)}
    for n in GATE["seq_lens"]:
        second = second_copy_losses(model, n, batch=batch)
        out["second_copy"][n] = {"mean": round(second.mean().item(), 3), "chunks": chunk_means(second)}
    report = induction_report(model, seq_len=50, batch=32)
    last = model.cfg.n_layers - 1
    out["previous_token_scores_layer0"] = report["layers"][0]["previous_token_score"]
    out["induction_scores_last_layer"] = report["layers"][last]["induction_score"]
    if baseline is not None:
        out["baseline_held_out"] = held_out_losses(baseline)
    return out


def gate_failures(out: dict) -> list[str]:
    """The gate's unmet conditions, in words (empty when the model passes)."""
    failures = []
    for n, second in out["second_copy"].items():
        if not second["mean"] < GATE["second_copy_mean_below"]:
            failures.append(f"second-copy loss at n={n} is {second['mean']} (needs < {GATE['second_copy_mean_below']})")
        if not max(second["chunks"]) < GATE["second_copy_chunk_below"]:
            failures.append(f"a 10-token chunk at n={n} has loss {max(second['chunks'])} "
                            f"(needs < {GATE['second_copy_chunk_below']})")
    if not max(out["previous_token_scores_layer0"]) >= GATE["previous_token_score_at_least"]:
        failures.append(f"best layer-0 previous-token score {max(out['previous_token_scores_layer0'])} "
                        f"(needs >= {GATE['previous_token_score_at_least']})")
    if not max(out["induction_scores_last_layer"]) >= GATE["induction_score_at_least"]:
        failures.append(f"best last-layer induction score {max(out['induction_scores_last_layer'])} "
                        f"(needs >= {GATE['induction_score_at_least']})")
    base = out.get("baseline_held_out")
    if base is not None:
        if not out["held_out"]["val_loss"] < base["val_loss"]:
            failures.append(f"held-out loss {out['held_out']['val_loss']} is not below "
                            f"the baseline's {base['val_loss']}")
        if not out["held_out"]["icl_score"] < base["icl_score"]:
            failures.append(f"in-context-learning score {out['held_out']['icl_score']} is not more negative "
                            f"than the baseline's {base['icl_score']}")
    return failures


def record_gate(name: str, out: dict, failures: list[str]) -> None:
    """Keep the gate's numbers beside the weights (``gate`` in NAME.train.json) and in the model card."""
    from utils.models.loading import MODEL_DIR, write_model_card

    path = MODEL_DIR / f"{name}.train.json"
    report = json.loads(path.read_text())
    report["gate"] = {"passed": not failures, "failures": failures,
                      **{k: v for k, v in out.items() if k != "second_copy"},
                      "second_copy": {str(n): v for n, v in out["second_copy"].items()}}
    path.write_text(json.dumps(report, indent=1) + "\n")
    write_model_card(MODEL_DIR)
