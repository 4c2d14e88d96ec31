"""Checks for chapter 03, section 3: composition (the composition score of two matrices, the Q-, K-
and V-composition scores of a 2-layer model). Reference: ``utils.induction.copying``. The notebook
reaches them through ``utils.checks.ch03``.

Every check runs the student's function on seeded random inputs (the first default case square,
so every transposition and wrong product order still runs and can be named) and on the bundled
attn-only-2l's K-composition. A mismatch is explained by the first catalogued mistake whose output
the student's output reproduces.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from utils import induction as ref
from utils.checks import ch03_induction as _induction
from utils.checks.core import Cases, Exercise, default_case, run_check, square_case
from utils.checks.toolkit import misconception, nan_as_inf, randint, rng

CHAPTER = "03"
EXERCISES = ["composition_score", "composition_scores"]


# --------------------------------------------------------------------------- 3a. the composition score


def _low_rank(g, lead, m, n, r):
    return torch.randn(*lead, m, r, generator=g) @ torch.randn(*lead, r, n, generator=g) / math.sqrt(r)


def _score_inputs(seed: int) -> dict:
    g = rng(seed)
    h0, h1 = randint(g, 2, 3), randint(g, 2, 3)
    if square_case("composition_score", seed):
        m = n = p = randint(g, 4, 6)
    else:
        m, n, p = randint(g, 5, 7), randint(g, 8, 10), randint(g, 3, 4)
    r = randint(g, 2, 3)
    W_A = _low_rank(g, (h0, 1), m, n, r)  # [h0, 1, m, n]: broadcast against W_B's [1, h1, n, p]
    W_B = _low_rank(g, (1, h1), n, p, r)
    return dict(W_A=W_A, W_B=W_B)


@lru_cache(maxsize=1)
def real_score_inputs() -> dict:
    w = ref.attn_weights(_induction.attn_only_2l())
    ov0 = w["W_V"][0] @ w["W_O"][0]  # [head, d_model, d_model]
    qk1_t = w["W_K"][1] @ w["W_Q"][1].transpose(-1, -2)  # (W_Q W_K^T)^T: K-composition
    return dict(W_A=ov0[:, None], W_B=qk1_t[None])


def _fro(M):
    return torch.linalg.matrix_norm(M)


COMPOSITION_SCORE = Exercise(
    chapter=CHAPTER,
    name="composition_score",
    reference=ref.composition_score,
    make_inputs=_score_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(real_score_inputs()),),
    misconceptions=(
        misconception("product in the wrong order", "Your product is in the wrong order: W_B W_A. The earlier head "
           "WRITES with W_A and the later head READS with W_B, and in our row-vector code data flows left to right: "
           "||W_A @ W_B||_F.",
           lambda W_A, W_B: _fro(W_B @ W_A) / (_fro(W_A) * _fro(W_B))),
        misconception("missing Frobenius normalisation", "You returned ||W_A W_B||_F without dividing by ||W_A||_F "
           "||W_B||_F. Unnormalised, the score grows with the size of the weights; normalised it lies in [0, 1] and "
           "heads can be compared.",
           lambda W_A, W_B: _fro(W_A @ W_B)),
        misconception("squared norms", "You used squared Frobenius norms. The score is ||W_A W_B||_F / (||W_A||_F "
           "||W_B||_F) with the norms themselves (torch.linalg.matrix_norm, or .norm(dim=(-2, -1))).",
           lambda W_A, W_B: _fro(W_A @ W_B) ** 2 / (_fro(W_A) ** 2 * _fro(W_B) ** 2)),
        misconception("spectral norms", "You used the spectral norm (ord=2, the largest singular value). The "
           "composition score uses the Frobenius norm: ||M||_F = sqrt(sum of squares of the entries).",
           lambda W_A, W_B: torch.linalg.matrix_norm(W_A @ W_B, ord=2)
           / (torch.linalg.matrix_norm(W_A, ord=2) * torch.linalg.matrix_norm(W_B, ord=2))),
        misconception("norm over the whole batch", "Your norms run over the whole batch (e.g. W.norm() with no dim): "
           "take each matrix's norm over its last two axes, torch.linalg.matrix_norm(W) or W.norm(dim=(-2, -1)).",
           lambda W_A, W_B: (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())),
        misconception("elementwise product", "You multiplied elementwise (W_A * W_B). Composition is about the MATRIX "
           "product W_A @ W_B: what W_A writes, passed through what W_B reads.",
           lambda W_A, W_B: _fro(W_A * W_B) / (_fro(W_A) * _fro(W_B))),
        misconception("cosine similarity of the matrices", "You computed the cosine similarity <W_A, W_B>_F / (||W_A|| "
           "||W_B||), which asks whether the two matrices look alike. Composition asks whether one FEEDS the other: "
           "the norm of the matrix product, ||W_A @ W_B||_F / (||W_A||_F ||W_B||_F).",
           lambda W_A, W_B: (W_A * W_B).sum((-2, -1)) / (_fro(W_A) * _fro(W_B))),
    ),
)


def composition_score(fn, cases: Cases = None) -> None:
    """Check ``fn(W_A[*batch, m, n], W_B[*batch, n, p]) -> score[*batch]`` (leading axes broadcast);
    the real-model case is layer-0 OV against layer-1 (QK)^T of the 2-layer model."""
    run_check(COMPOSITION_SCORE, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 3b. composition scores of a model


_KIND_BY_CASE = {0: "K", 1: "Q", 2: "V"}


def _scores_inputs(seed: int) -> dict:
    g = rng(seed)
    h = randint(g, 2, 4)
    if square_case("composition_scores", seed):
        d = k = randint(g, 4, 6)
    else:
        d = randint(g, 7, 10)
        k = randint(g, 2, d - 3)
    w = {name: torch.randn(2, h, d, k, generator=g) / math.sqrt(d) for name in ("W_Q", "W_K", "W_V")}
    w["W_O"] = torch.randn(2, h, k, d, generator=g) / math.sqrt(k)
    case = default_case("composition_scores", seed)
    kind = _KIND_BY_CASE.get(case) if case is not None else None
    return dict(w, kind=kind or "QKV"[randint(g, 0, 2)])


def _real_scores_inputs() -> dict:
    return dict(ref.attn_weights(_induction.attn_only_2l()), kind="K")


def _scores_variant(*, swap_qk=False, reverse=False, layers=(0, 1), transpose_out=False, paper_ov=False,
                    untransposed_k=False, normalise=True):
    def composition_scores(W_Q, W_K, W_V, W_O, kind):
        e, l = layers
        ov = (lambda L: W_O[L] @ W_V[L]) if paper_ov else (lambda L: W_V[L] @ W_O[L])
        qk = W_Q[l] @ (W_K[l] if untransposed_k else W_K[l].transpose(-1, -2))
        eff = {"Q": "K", "K": "Q", "V": "V"}[kind] if swap_qk else kind
        W_B = {"Q": qk, "K": qk.transpose(-1, -2), "V": ov(l)}[eff]
        W_A = ov(e)
        out = _fro(W_B[None] @ W_A[:, None]) if reverse else _fro(W_A[:, None] @ W_B[None])
        if normalise:
            out = out / (_fro(W_A)[:, None] * _fro(W_B)[None])
        return out.T if transpose_out else out

    return composition_scores


COMPOSITION_SCORES = Exercise(
    chapter=CHAPTER,
    name="composition_scores",
    reference=lambda W_Q, W_K, W_V, W_O, kind: ref.composition_scores(W_Q, W_K, W_V, W_O, kind),
    make_inputs=_scores_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_scores_inputs,),
    misconceptions=(
        misconception("Q- and K-composition swapped", "You swapped Q- and K-composition. The earlier head's output "
           "OV^0 = W_V^0 W_O^0 is read by the later head's QUERIES in Q-composition: W_B = W_Q^1 W_K^1T; by its KEYS "
           "in K-composition: W_B = (W_Q^1 W_K^1T)^T = W_K^1 W_Q^1T (the key side of the bilinear form, hence the "
           "transpose).",
           _scores_variant(swap_qk=True)),
        misconception("product in the wrong order", "Your products are in the wrong order (W_B W_A). The earlier head "
           "writes with W_A = OV^0 and the later head reads with W_B; in our row-vector code data flows left to right: "
           "||OV^0 @ W_B||_F.",
           _scores_variant(reverse=True)),
        misconception("layers swapped", "You composed layer 1 into layer 0. Information only flows forward: the "
           "EARLIER head (layer 0) writes with its OV and the LATER head (layer 1) reads with its QK or OV.",
           _scores_variant(layers=(1, 0))),
        misconception("rows and columns swapped", "Your result is transposed: rows must index the layer-0 heads and "
           "columns the layer-1 heads, [n_heads_layer0, n_heads_layer1].",
           _scores_variant(transpose_out=True)),
        misconception("W_O W_V (paper order typed literally)", "You typed the paper's W_O W_V with the code's "
           "matrices. With row vectors a head's OV matrix is W_V @ W_O ([d_model, d_model]); W_O @ W_V is [d_head, "
           "d_head], not a map of the residual stream.",
           _scores_variant(paper_ov=True)),
        misconception("W_K not transposed", "A head's QK matrix is W_Q @ W_K^T (q . k = x W_Q (x' W_K)^T), not W_Q @ "
            "W_K.",
           _scores_variant(untransposed_k=True)),
        misconception("missing Frobenius normalisation", "You returned ||W_A W_B||_F without dividing by ||W_A||_F "
           "||W_B||_F; use the normalised composition score.",
           _scores_variant(normalise=False)),
    ),
)


def composition_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(W_Q, W_K, W_V, W_O, kind) -> scores[n_heads_layer0, n_heads_layer1]`` for weights
    stacked [n_layers = 2, head, ...] and kind in "Q", "K", "V" (the first three default cases are K,
    Q and V); the real-model case is K-composition in the 2-layer model."""
    run_check(COMPOSITION_SCORES, nan_as_inf(fn), cases)
