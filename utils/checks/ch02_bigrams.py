"""Checks for chapter 02, section 5: Spearman's rank correlation (the direct path against bigram
statistics, ``utils.circuits.bigrams``).

The reference answers are utils/circuits/exercises.py; how the cases are chosen is in
``utils.checks.ch02``'s docstring. The notebook reaches these checks through ``utils.checks.ch02``.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.checks.ch02_full_circuits import real_weights
from utils.checks.core import Cases, Exercise, run_check
from utils.checks.toolkit import (
    attn_only_1l,
    misconception,
    nan_as_inf,
    randint,
    rng,
)
from utils.circuits import exercises as ref
from utils.circuits.bigrams import bigram_counts

CHAPTER = "02"


# --------------------------------------------------------------------------- 5. rank correlation


def _spearman_inputs(seed: int) -> dict:
    g = rng(seed)
    n = randint(g, 8, 25)
    x = torch.randint(0, randint(g, 3, 6), (n,), generator=g).float()  # integer values: ties
    noise = torch.randn(n, generator=g)
    y = x * torch.rand(1, generator=g) * 2 + noise if seed % 2 else torch.randint(0, 4, (n,), generator=g).float()
    x[:2], y[:2] = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])  # never constant
    return dict(x=x, y=y)


@lru_cache(maxsize=1)
def _real_spearman_inputs() -> dict:
    from utils.data import analysis_tokens

    model, w = attn_only_1l(), real_weights()
    counts = bigram_counts(analysis_tokens(seq_len=128, n_seqs=600), model.cfg.d_vocab)
    source = model.to_single_token(" self")
    return dict(x=(w["W_E"][source] @ w["W_U"]).double(), y=counts.row(source))


def _pearson(a, b):
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ordinal(v):
    return v.argsort(stable=True).argsort(stable=True).double()


def _tied_rank(v, rule: str):
    """Ranks under another tie rule than averaging: 'min', 'max' or 'dense' (0-based)."""
    v = v.double()
    if rule == "min":
        return (v[None, :] < v[:, None]).sum(1).double()
    if rule == "max":
        return (v[None, :] <= v[:, None]).sum(1).double() - 1
    return torch.unique(v, return_inverse=True)[1].double()


def _shortcut(x, y):
    n = len(x)
    d = ref.average_ranks(x) - ref.average_ranks(y)
    return 1 - 6 * float((d ** 2).sum()) / (n * (n * n - 1))


SPEARMAN = Exercise(
    chapter=CHAPTER,
    name="spearman",
    reference=ref.spearman,
    make_inputs=_spearman_inputs,
    rtol=1e-3, atol=1e-4,
    extra_inputs=(lambda: dict(_real_spearman_inputs()),),
    misconceptions=(
        misconception("Pearson on the values", "You computed the Pearson correlation of the values themselves. "
           "Spearman's correlation is the Pearson correlation of their RANKS: replace each value by its position in "
           "sorted order first.",
           lambda x, y: _pearson(x, y)),
        misconception("argsort used as ranks", "x.argsort() is not the ranks: it lists the INDICES in sorted order. "
           "The rank of element i is where i lands in that order: the inverse permutation (argsort of the argsort, or "
           "ranks[order] = arange(n)).",
           lambda x, y: _pearson(x.argsort(stable=True).double(), y.argsort(stable=True).double())),
        misconception("ties not averaged", "Tied values must share one rank, the mean of the positions they occupy "
           "(e.g. two values tied for places 3 and 4 both get 3.5). You ranked ties in arbitrary order.",
           lambda x, y: _pearson(_ordinal(x), _ordinal(y))),
        misconception("ties given the lowest rank", "Your tied values all got the LOWEST of the positions they occupy "
           "(the 'min' rule). Spearman's correlation gives each tie the MEAN of those positions (two values tied "
           "for places 3 and 4 both get 3.5), so that the ranks still sum to the same total.",
           lambda x, y: _pearson(_tied_rank(x, "min"), _tied_rank(y, "min"))),
        misconception("ties given the highest rank", "Your tied values all got the HIGHEST of the positions they "
           "occupy (the 'max' rule). Spearman's correlation gives each tie the MEAN of those positions (3.5 for places "
           "3 and 4).",
           lambda x, y: _pearson(_tied_rank(x, "max"), _tied_rank(y, "max"))),
        misconception("dense ranks", "You numbered the distinct values 0, 1, 2, ... (dense ranks, e.g. from "
           "torch.unique's inverse), so a tie costs no places. Spearman's ranks are positions in the sorted order, and "
           "a tie shares the MEAN of the positions it occupies.",
           lambda x, y: _pearson(_tied_rank(x, "dense"), _tied_rank(y, "dense"))),
        misconception("ranks not centred", "You took the cosine of the ranks. A correlation subtracts each rank "
           "vector's mean first, otherwise two unrelated rankings still come out strongly positive.",
           lambda x, y: float((ref.average_ranks(x) * ref.average_ranks(y)).sum()
                              / (ref.average_ranks(x).norm() * ref.average_ranks(y).norm()))),
        misconception("shortcut formula with ties", "You used 1 - 6 sum d^2 / (n (n^2 - 1)). That shortcut is exact "
           "only without ties; with tied values use the Pearson correlation of the average ranks.",
           _shortcut),
    ),
)


def spearman(fn, cases: Cases = None) -> None:
    """Check ``fn(x, y) -> float`` (Spearman's rank correlation, ties averaged); the real-model
    case correlates the direct path of " self" with its bigram counts (4096 values, many tied)."""
    run_check(SPEARMAN, nan_as_inf(fn), cases)
