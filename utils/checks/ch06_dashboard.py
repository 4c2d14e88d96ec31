"""Checks for chapter 06, exercises 1-3: what a feature dashboard shows (top-activating examples,
logit weights) and specificity and sensitivity against a hypothesis.

Layout as in utils.sae and utils.features (W_dec's ROW i is feature i), and why some exercises
start with square cases, in ``utils.checks.ch06``'s docstring; the reference answers are
utils/features/exercises.py. The notebook reaches these checks through ``utils.checks.ch06``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check
from utils.checks.toolkit import describe_parts, randint, rng, run_described, unit_rows
from utils.features import exercises as ref

CHAPTER = "06"


# =========================================================================== 1. top-activating examples


def _acts_inputs(seed: int) -> dict:
    g = rng(seed)
    n_seq, seq_len = randint(g, 5, 8), randint(g, 11, 16)  # never equal
    acts = torch.relu(torch.randn(n_seq, seq_len, generator=g) - 0.3) \
        * (1 + 3 * torch.rand(n_seq, seq_len, generator=g))
    # the two largest activations in one sequence, as on real text (a feature fires on a whole span)
    s, p1, p2 = randint(g, 0, n_seq - 1), randint(g, 0, seq_len // 2 - 1), randint(g, seq_len // 2, seq_len - 1)
    acts[s, p1], acts[s, p2] = acts.max() + 1.0, acts.max() + 0.5
    return {"acts": acts, "k": randint(g, 4, 7)}


def _unravel(flat, n_rows, n_cols):
    return flat // n_cols, flat % n_cols


TOP_ACTIVATING = Exercise(
    chapter=CHAPTER,
    name="top_activating",
    reference=ref.top_activating,
    make_inputs=_acts_inputs,
    misconceptions=(
        Misconception(
            "top k over the wrong axis",
            "You ranked the activations of the TRANSPOSED matrix ([seq_len, n_seq] flattened) but unravelled the "
            "indices as if they were [n_seq, seq_len] rows: the values are right, the (sequence, position) pairs "
            "are not. Flatten acts itself (acts.flatten() or acts.reshape(-1)) and unravel with divmod(index, "
            "seq_len).",
            lambda acts, k: (lambda v, i: (*_unravel(i, *acts.shape), v))(*acts.T.flatten().topk(k))),
        Misconception(
            "indices unravelled with n_seq",
            "A flat index into an [n_seq, seq_len] matrix is seq * seq_len + pos: divide by seq_len (the row "
            "length), not by n_seq.",
            lambda acts, k: (lambda v, i: (i // acts.shape[0], i % acts.shape[0], v))(*acts.flatten().topk(k))),
        Misconception(
            "sequence and position swapped",
            "Return (sequence indices, positions, values) in that order: you returned the positions first.",
            lambda acts, k: (lambda s, p, v: (p, s, v))(*ref.top_activating(acts, k))),
        Misconception(
            "smallest k",
            "The dashboard wants the k LARGEST activations (topk's default largest=True).",
            lambda acts, k: (lambda v, i: (i // acts.shape[1], i % acts.shape[1], v))(
                *acts.flatten().topk(k, largest=False))),
        Misconception(
            "largest last",
            "Order the examples from the largest activation down (topk returns them sorted that way; "
            "sort(descending=True) if you sorted yourself).",
            lambda acts, k: tuple(t.flip(0) for t in ref.top_activating(acts, k))),
        Misconception(
            "one example per sequence",
            "You took each sequence's maximum, then the k best sequences: when one sequence holds two of the "
            "top activations, the second is lost. Rank all (sequence, position) pairs together.",
            lambda acts, k: (lambda v, s: (s, acts.argmax(1)[s], v))(*acts.max(1).values.topk(k))),
    ),
)


def top_activating(fn, cases: Cases = None) -> None:
    """Check ``fn(acts[n_seq, seq_len], k) -> (seqs, positions, values)``, largest first."""
    run_described(TOP_ACTIVATING, fn, cases, describe_parts(("seqs", "positions", "values"),
                                                               TOP_ACTIVATING.rtol, TOP_ACTIVATING.atol))


# =========================================================================== 2. logit weights


def _logit_inputs(seed: int) -> dict:
    g = rng(seed)
    square = seed % 3 != 0  # most seeds square (see the module docstring); default_cases pick the order
    if square:
        d_mlp = d_model = d_vocab = d_sae = randint(g, 6, 9)
    else:
        d_model, d_mlp, d_sae, d_vocab = randint(g, 4, 5), randint(g, 7, 9), randint(g, 11, 13), randint(g, 15, 19)
    return {
        "W_dec": unit_rows(torch.randn(d_sae, d_mlp, generator=g)),  # [d_sae, d_mlp], unit rows
        "W_out": torch.randn(d_mlp, d_model, generator=g) / d_mlp ** 0.5,
        "W_U": torch.randn(d_model, d_vocab, generator=g) / d_model ** 0.5,
        "feature": randint(g, 0, d_sae - 1),
    }


LOGIT_WEIGHTS = Exercise(
    chapter=CHAPTER,
    name="logit_weights",
    reference=ref.logit_weights,
    make_inputs=_logit_inputs,
    default_cases=(1, 2, 0),  # square, square, rectangular (the seeds are hashed: see seed_for)
    misconceptions=(
        Misconception(
            "W_out left out",
            "The feature's direction lives in the MLP's HIDDEN space (d_mlp); the MLP's output weights W_out carry "
            "it into the residual stream before W_U can read it: W_dec[f] @ W_out @ W_U.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_U),
        Misconception(
            "W_U transposed",
            "W_U is [d_model, d_vocab] (TransformerLens layout): multiply by W_U itself, not W_U.T.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_out @ W_U.T),
        Misconception(
            "W_out transposed",
            "W_out is [d_mlp, d_model]: a hidden vector times W_out gives a residual vector. W_out.T goes the "
            "other way.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_out.T @ W_U),
        Misconception(
            "decoder column instead of row",
            "Feature f's direction is ROW f of W_dec ([d_sae, d_in], as in SAELens): W_dec[f], not the column "
            "W_dec[:, f].",
            lambda W_dec, W_out, W_U, feature: W_dec[:, feature] @ W_out @ W_U),
    ),
)


def logit_weights(fn, cases: Cases = None) -> None:
    """Check ``fn(W_dec, W_out, W_U, feature) -> [d_vocab]``."""
    run_check(LOGIT_WEIGHTS, fn, cases)


# =========================================================================== 4. specificity and sensitivity


def _spec_inputs(seed: int) -> dict:
    g = rng(seed)
    n = randint(g, 30, 50)
    hypothesis = torch.rand(n, generator=g) < 0.3
    hypothesis[:2] = torch.tensor([True, False])  # never empty, never everything
    fires = torch.where(hypothesis, torch.rand(n, generator=g) < 0.7, torch.rand(n, generator=g) < 0.2)
    fires[:2] = True  # fires somewhere, inside and outside the hypothesis
    acts = torch.where(fires, 0.05 + 2 * torch.rand(n, generator=g), torch.zeros(n))
    threshold = 0.0 if seed % 2 else float(0.5 * torch.rand((), generator=g))
    if threshold > 0:
        acts[0] = 1.5 + threshold  # keep the first two firing above the threshold
        acts[1] = 1.5 + threshold
    return {"acts": acts, "hypothesis": hypothesis, "threshold": threshold}


def _counts(acts, hypothesis, threshold, strict=True):
    fires = acts > threshold if strict else acts >= threshold
    both = (fires & hypothesis).sum().item()
    return both, fires.sum().item(), hypothesis.sum().item(), len(acts)


SPECIFICITY = Exercise(
    chapter=CHAPTER,
    name="specificity_sensitivity",
    reference=ref.specificity_sensitivity,
    make_inputs=_spec_inputs,
    default_cases=(0, 1, 2, 4),  # thresholds 0, > 0, 0, > 0
    misconceptions=(
        Misconception(
            "specificity and sensitivity swapped",
            "Specificity asks: when the feature fires, is the hypothesis true? (divide by the tokens where it "
            "fires). Sensitivity asks: when the hypothesis is true, does the feature fire? (divide by the "
            "hypothesis's tokens). You returned them the other way round.",
            lambda acts, hypothesis, threshold: ref.specificity_sensitivity(acts, hypothesis, threshold)[::-1]),
        Misconception(
            "counts instead of fractions",
            "Return fractions in [0, 1]: divide the tokens where both hold by the right total.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (float(b), float(b)))(
                *_counts(acts, hypothesis, threshold))),
        Misconception(
            "fraction of all tokens",
            "Divide by the tokens where the feature FIRES (specificity) and by the tokens the hypothesis covers "
            "(sensitivity), not by all tokens: rare hypotheses would always score near 0.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (b / n, b / n))(
                *_counts(acts, hypothesis, threshold))),
        Misconception(
            "fires at the threshold",
            "A feature fires where its activation is strictly ABOVE the threshold; with threshold 0, "
            "'acts >= 0' counts every token, since activations are never negative.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (b / f, b / h))(
                *_counts(acts, hypothesis, threshold, strict=False))),
    ),
)


def specificity_sensitivity(fn, cases: Cases = None) -> None:
    """Check ``fn(acts[n], hypothesis[n] bool, threshold) -> (specificity, sensitivity)``."""
    run_described(SPECIFICITY, fn, cases, describe_parts(("specificity", "sensitivity"),
                                                           SPECIFICITY.rtol, SPECIFICITY.atol))
