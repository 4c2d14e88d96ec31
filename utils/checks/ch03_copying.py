"""Checks for chapter 03, section 1: copying (eigenvalues of the full OV circuit, the copying
score, self-top-k). Reference: ``utils.induction.copying``. The notebook reaches them through
``utils.checks.ch03``.

Every check runs the student's function on seeded random inputs and on attn-only-1l (its layer-0
OV circuit). A mismatch is explained by the first catalogued mistake whose output the student's
output reproduces.

Eigenvalues are compared as multisets: any order is accepted. The student's eigenvalues are
matched one to one to the reference's (nearest first), a real tensor is read as eigenvalues with
zero imaginary part, and both are divided by the reference's largest |eigenvalue| (so one relative
tolerance serves random matrices and the real model, whose eigenvalues reach the thousands). The
comparison sees them as (real, imaginary) pairs: index (..., i, 0) is the real part of the i-th.

The first default case of every weight-shaped exercise is "square" (d_vocab == d_model == d_head),
so every transposition and wrong product order still runs and can be named; the next two are
rectangular.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from transformer_lens import FactoredMatrix

from utils import induction as ref
from utils.checks.core import Cases, CheckFailure, Exercise, run_check, square_case
from utils.checks.toolkit import attn_only_1l, misconception, nan_as_inf, randint, random_ov_weights, rng

CHAPTER = "03"
EXERCISES = ["eigenvalues_via_small_product", "full_ov_circuit_eigenvalues", "copying_score", "self_top_k_fraction"]


@lru_cache(maxsize=1)
def _real_ov() -> dict:
    return ref.ov_weights(attn_only_1l(), 0)


# --------------------------------------------------------------------------- eigenvalues as multisets


def _eigen_tensor(out, exercise: str) -> torch.Tensor:
    if isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        raise CheckFailure(f"{exercise}: torch.linalg.eig returns a pair (eigenvalues, eigenvectors); return only "
                           f"the eigenvalues (torch.linalg.eigvals, or .eigenvalues).")
    if not isinstance(out, torch.Tensor):
        raise CheckFailure(f"{exercise}: return the eigenvalues as a torch.Tensor, not a {type(out).__name__}.")
    return out


def _match(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``got`` reordered, along the last axis, to pair each value with the nearest reference value
    (greedy, closest pairs first). Both are complex128 of the same shape."""
    r = expected.shape[-1]
    g, e = got.reshape(-1, r), expected.reshape(-1, r)
    out = torch.empty_like(e)
    for b in range(len(e)):
        dist = (g[b][:, None] - e[b][None, :]).abs().nan_to_num(nan=1e300, posinf=1e300)
        for _ in range(r):
            i, j = divmod(int(dist.argmin()), r)
            out[b, j] = g[b, i]
            dist[i, :] = math.inf
            dist[:, j] = math.inf
    return out.reshape(expected.shape)


def _eigs(fn, reference, small, big, exercise: str):
    """Wrap an eigenvalue function (student's, reference or variant) to return comparable floats:
    [..., r, 2] (real, imag) of the values matched to the reference's, over the reference's largest
    |value|. ``small(inputs)`` is r, the number of eigenvalues wanted; ``big(inputs)`` the size of
    the big product, whose eigenvalues a dense computation would return."""
    if not callable(fn) or getattr(fn, "eigen_wrapped", False):
        return fn

    def wrapped(**inputs):
        out = _eigen_tensor(fn(**inputs), exercise)
        expected = reference(**inputs).to(torch.complex128)
        r, n = small(inputs), big(inputs)
        if out.ndim and out.shape[-1] == n and n > r:
            raise CheckFailure(
                f"{exercise}: you returned {n} eigenvalues per matrix, the eigenvalues of the big {n} x {n} "
                f"product. It has rank at most {r}, so at most {r} of them are nonzero, and those are the "
                f"eigenvalues of the small {r} x {r} product taken the other way round (B @ A instead of "
                f"A @ B): return those {r}. (For the real model the big matrix is 4096 x 4096 per head.)")
        out = out.detach().to(torch.complex128) if out.is_complex() else out.detach().double().to(torch.complex128)
        if out.ndim and out.shape[-1] > r:  # e.g. a d_model x d_model matrix's: keep the r largest
            out = out.gather(-1, out.abs().argsort(-1, descending=True)[..., :r])
        if out.shape == expected.shape:
            out = _match(out, expected)
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        return torch.view_as_real(out) / max(scale, 1e-30)

    wrapped.eigen_wrapped = True
    wrapped.__name__ = getattr(fn, "__name__", "eigenvalues")
    return wrapped


# --------------------------------------------------------------------------- 1a. eigenvalues of AB from BA


def _small_product_inputs(seed: int) -> dict:
    g = rng(seed)
    h, r = randint(g, 1, 3), randint(g, 2, 5)
    n = r + randint(g, 3, 9)
    return dict(A=torch.randn(h, n, r, generator=g), B=torch.randn(h, r, n, generator=g) / math.sqrt(n))


def _real_small_product() -> dict:
    w = _real_ov()
    return dict(A=w["W_E"] @ w["W_V"], B=w["W_O"] @ w["W_U"])


def _small_product_eigs(fn):
    return _eigs(fn, ref.eigenvalues_via_small_product, lambda i: i["A"].shape[-1], lambda i: i["A"].shape[-2],
                 "eigenvalues_via_small_product")


_SINGULAR = ("singular values instead of eigenvalues", "You returned singular values (svd / svdvals). They "
             "are the eigenvalues of M^T M, always real and >= 0, and they measure how much M stretches, "
             "not whether it maps a direction back onto itself: a rotation and a reflection both have "
             "singular values 1. Use torch.linalg.eigvals.")
_EIGVALSH = ("eigvalsh on a non-symmetric matrix", "You used torch.linalg.eigvalsh (or eigh). It assumes a "
             "SYMMETRIC matrix and reads only its lower triangle, so on these non-symmetric products it silently "
             "returns the eigenvalues of a different matrix. Use torch.linalg.eigvals, which returns complex "
             "values.")
_REAL_PART = ("imaginary parts dropped", "You kept only the real parts. A real matrix can have complex "
              "eigenvalues, in conjugate pairs a +- bi (a rotation inside the head's subspace); return the complex "
              "tensor from torch.linalg.eigvals as it is.")
_MAGNITUDE = ("magnitudes instead of eigenvalues", "You returned |eigenvalue|, which throws away the sign and the "
              "phase, the very thing that tells copying (positive real) from suppression (negative) and rotation "
              "(complex). Return the complex eigenvalues themselves.")

EIGENVALUES_VIA_SMALL_PRODUCT = Exercise(
    chapter=CHAPTER,
    name="eigenvalues_via_small_product",
    reference=_small_product_eigs(ref.eigenvalues_via_small_product),
    make_inputs=_small_product_inputs,
    rtol=1e-3, atol=1e-4,
    extra_inputs=(_real_small_product,),
    misconceptions=(
        misconception(*_SINGULAR, _small_product_eigs(lambda A, B: torch.linalg.svdvals(B @ A))),
        misconception(*_EIGVALSH, _small_product_eigs(lambda A, B: torch.linalg.eigvalsh(B @ A))),
        misconception(*_REAL_PART, _small_product_eigs(lambda A, B: torch.linalg.eigvals(B @ A).real)),
        misconception(*_MAGNITUDE, _small_product_eigs(lambda A, B: torch.linalg.eigvals(B @ A).abs())),
    ),
)


def eigenvalues_via_small_product(fn, cases: Cases = None) -> None:
    """Check ``fn(A[*batch, n, r], B[*batch, r, n]) -> eigenvalues[*batch, r]`` (complex, any order);
    the real-model case is attn-only-1l's full OV circuit factors W_E W_V and W_O W_U."""
    run_check(EIGENVALUES_VIA_SMALL_PRODUCT, _small_product_eigs(fn), cases)


# --------------------------------------------------------------------------- 1b. the full OV circuit's eigenvalues


def _ov_inputs(seed: int) -> dict:
    g = rng(seed)
    return random_ov_weights(g, square_case("full_ov_circuit_eigenvalues", seed))


def _ov_eigs(fn):
    return _eigs(fn, ref.full_ov_circuit_eigenvalues, lambda i: i["W_V"].shape[-1], lambda i: i["W_E"].shape[0],
                 "full_ov_circuit_eigenvalues")


def _small(left, right):
    """Eigenvalues of left @ right via right @ left (any shapes that allow both)."""
    return torch.linalg.eigvals(right @ left)


FULL_OV_CIRCUIT_EIGENVALUES = Exercise(
    chapter=CHAPTER,
    name="full_ov_circuit_eigenvalues",
    reference=_ov_eigs(ref.full_ov_circuit_eigenvalues),
    make_inputs=_ov_inputs,
    rtol=1e-3, atol=1e-4,
    extra_inputs=(lambda: dict(_real_ov()),),
    misconceptions=(
        misconception("eigenvalues of W_OV alone", "You computed the eigenvalues of the head's OV matrix W_V W_O alone "
           "(d_model -> d_model). The exercise asks for the FULL OV circuit W_E W_V W_O W_U, tokens to logits "
           "(the paper's W_U W_O W_V W_E): include the embedding and the unembedding, and take the eigenvalues of "
           "the small product (W_O W_U)(W_E W_V).",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: torch.linalg.eigvals(W_O @ W_V))),
        misconception("singular values of the full circuit", "You returned the singular values of the full OV circuit "
           "(FactoredMatrix.S or an SVD). Singular values are always real and >= 0: they say how much the "
           "circuit stretches, not whether it maps a token back onto itself. Use the eigenvalues "
           "(FactoredMatrix.eigenvalues, or torch.linalg.eigvals of the small product).",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: FactoredMatrix(W_E @ W_V, W_O @ W_U).S)),
        misconception(*_SINGULAR, _ov_eigs(lambda W_E, W_V, W_O, W_U: torch.linalg.svdvals((W_O @ W_U) @ (W_E @ W_V)))),
        misconception("W_E^T instead of W_U", "You closed the circuit with W_E^T instead of W_U: W_E W_V W_O W_E^T "
           "compares the head's output with the token EMBEDDINGS. What the head does to the logits goes through the "
           "unembedding: W_E W_V W_O W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_V, W_O @ W_E.T))),
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model] and a token's embedding is "
           "its ROW: the circuit starts W_E @ W_V.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E.T @ W_V, W_O @ W_U))),
        misconception("W_U transposed", "You used W_U transposed. W_U is [d_model, d_vocab]: logits = x @ W_U, so the "
           "circuit ends W_O @ W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_V, W_O @ W_U.T))),
        misconception("W_O before W_V", "Your OV product is in the wrong order: an embedding is first read by W_V "
           "(into d_head) and then written back by W_O, so in code the circuit is W_E @ W_V @ W_O @ W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_O, W_V @ W_U))),
        misconception("paper order typed literally", "You typed the paper's W_U W_O W_V W_E with the code's matrices. "
           "The paper applies matrices to column vectors from right to left; with our row vectors the same circuit "
           "reads left to right: W_E @ W_V @ W_O @ W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_U @ W_O, W_V @ W_E))),
    ),
)


def full_ov_circuit_eigenvalues(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_V, W_O, W_U) -> eigenvalues[head, d_head]`` (complex, any order within a
    head) of every head's full OV circuit; the real-model case is attn-only-1l."""
    run_check(FULL_OV_CIRCUIT_EIGENVALUES, _ov_eigs(fn), cases)


# --------------------------------------------------------------------------- 1c. the copying score


def _copying_inputs(seed: int) -> dict:
    """Eigenvalues of random real matrices (so: real values and conjugate pairs), some heads shifted
    towards copying (+), some towards suppression (-)."""
    g = rng(seed)
    h, r = randint(g, 2, 4), randint(g, 3, 8)
    shift = (torch.rand(h, 1, 1, generator=g) * 4 - 2) * torch.eye(r)
    M = torch.randn(h, r, r, generator=g) + shift
    return dict(eigenvalues=torch.linalg.eigvals(M))


@lru_cache(maxsize=1)
def _real_eigenvalues() -> torch.Tensor:
    return ref.full_ov_circuit_eigenvalues(**_real_ov())


def _real_valued(fn, exercise: str):
    """Accept a complex result whose imaginary part is rounding noise (e.g. a missing .real on a sum
    over conjugate pairs) by taking its real part; refuse a genuinely complex one."""
    if not callable(fn) or getattr(fn, "real_valued", False):
        return fn

    def wrapped(**inputs):
        out = fn(**inputs)
        if isinstance(out, torch.Tensor) and out.is_complex():
            if bool((out.imag.abs() > 1e-4 * out.abs().clamp_min(1e-30)).any()):
                raise CheckFailure(f"{exercise}: your result is complex with a non-negligible imaginary part; "
                                   f"the score is a real number per head (take the real part of the sum).")
            out = out.real
        return out

    wrapped.real_valued = True
    return wrapped


COPYING_SCORE = Exercise(
    chapter=CHAPTER,
    name="copying_score",
    reference=ref.copying_score,
    make_inputs=_copying_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(eigenvalues=_real_eigenvalues()),),
    misconceptions=(
        misconception("|lambda| in the numerator", "You put absolute values in the numerator: sum |lambda| / sum "
           "|lambda| is always 1. The numerator is the REAL PART of the sum, Re(sum lambda): negative eigenvalues "
           "(suppression) must pull the score down, and complex pairs a +- bi contribute only their real part 2a.",
           lambda eigenvalues: eigenvalues.abs().sum(-1) / eigenvalues.abs().sum(-1)),
        misconception("|sum lambda| in the numerator", "Your numerator is |sum lambda|, the magnitude of the sum: a "
           "head whose eigenvalues are all negative (it suppresses the tokens it attends to) then scores +1 instead "
           "of -1. Use the real part, Re(sum lambda), which keeps the sign.",
           lambda eigenvalues: eigenvalues.sum(-1).abs() / eigenvalues.abs().sum(-1)),
        misconception("mean of Re lambda / |lambda|", "You averaged Re(lambda) / |lambda| over the eigenvalues, so a "
           "tiny eigenvalue counts as much as a huge one. The score weights each eigenvalue by its size: "
           "Re(sum lambda) / sum |lambda|.",
           lambda eigenvalues: (eigenvalues.real / eigenvalues.abs()).mean(-1)),
        misconception("denominator |sum lambda|", "Your denominator is |sum lambda|. It must be sum |lambda|, the "
           "total size of the eigenvalues: with |sum lambda| the score is just the sign of the sum (conjugate pairs "
           "cancel their imaginary parts) and every head looks like a perfect copier or suppressor.",
           lambda eigenvalues: eigenvalues.real.sum(-1) / eigenvalues.sum(-1).abs()),
        misconception("denominator without the imaginary parts", "Your denominator is sum |Re lambda|, which ignores "
           "the imaginary parts: a head whose eigenvalues are mostly rotations (a +- bi, b large) then scores near "
           "+-1. Divide by sum |lambda|, the full complex magnitudes.",
           lambda eigenvalues: eigenvalues.real.sum(-1) / eigenvalues.real.abs().sum(-1)),
        misconception("not normalised", "You returned Re(sum lambda) without dividing by sum |lambda|. The score must "
           "be scale-free, between -1 and 1, so heads (and models) with larger weights can be compared.",
           lambda eigenvalues: eigenvalues.real.sum(-1)),
        misconception("summed over heads", "You summed over the HEAD axis (dim 0). eigenvalues is [head, d_head]: sum "
           "over the last axis, one score per head.",
           lambda eigenvalues: eigenvalues.real.sum(0) / eigenvalues.abs().sum(0)),
    ),
)


def copying_score(fn, cases: Cases = None) -> None:
    """Check ``fn(eigenvalues[head, r] complex) -> score[head]``; the real-model case is attn-only-1l's
    full OV circuit eigenvalues."""
    run_check(COPYING_SCORE, _real_valued(nan_as_inf(fn), "copying_score"), cases)


# --------------------------------------------------------------------------- 1d. top-k copying, token by token


def _top_k_inputs(seed: int) -> dict:
    """Heads from copying (W_O ~ +c W_V^T) through random to suppressing (W_O ~ -c W_V^T), with W_U
    partly aligned with W_E^T, so that the fractions spread out."""
    g = rng(seed)
    h, d = randint(g, 2, 3), randint(g, 6, 9)
    vocab, k_head, k = d + randint(g, 16, 30), randint(g, 2, 4), randint(g, 3, 5)
    W_E = torch.randn(vocab, d, generator=g)
    W_U = 0.5 * W_E.T + torch.randn(d, vocab, generator=g)
    W_V = torch.randn(h, d, k_head, generator=g) / math.sqrt(d)
    sign = torch.tensor([1.0, -1.0, 0.3])[:h, None, None]
    W_O = sign * W_V.transpose(-1, -2) + 0.6 * torch.randn(h, k_head, d, generator=g) / math.sqrt(k_head)
    return dict(W_E=W_E, W_V=W_V, W_O=W_O, W_U=W_U, k=k)


def _top_k_variant(*, transpose=False, unembed="W_U", top=None, fraction=True, rank_le=False, head_mean=False):
    def self_top_k_fraction(W_E, W_V, W_O, W_U, k):
        circuit = W_E @ W_V @ W_O @ (W_E.T if unembed == "W_E" else W_U)  # [head, vocab, vocab]
        if transpose:
            circuit = circuit.transpose(-1, -2)
        own = torch.diagonal(circuit, dim1=-2, dim2=-1)[..., None]
        beaten_by = (circuit > own).sum(-1)
        kk = k if top is None else top
        hits = ((beaten_by <= kk) if rank_le else (beaten_by < kk)).sum(-1).float()
        out = hits / circuit.shape[-1] if fraction else hits
        return out.mean(0) if head_mean else out

    return self_top_k_fraction


SELF_TOP_K_FRACTION = Exercise(
    chapter=CHAPTER,
    name="self_top_k_fraction",
    reference=lambda W_E, W_V, W_O, W_U, k: ref.self_top_k_fraction(W_E, W_V, W_O, W_U, k=k),
    make_inputs=_top_k_inputs,
    rtol=0, atol=1e-3,  # 1e-3: near-ties may flip a few of the real model's 4096 tokens
    extra_inputs=(lambda: dict(_real_ov(), k=5),),
    misconceptions=(
        misconception("column instead of row", "You looked at COLUMN t of the circuit, the source tokens that most "
           "raise t's logit. The question is what attending to t does: ROW t of W_E W_V W_O W_U ([source, out]) is the "
           "change in every logit, and t counts when its own logit is among the row's k largest.",
           _top_k_variant(transpose=True)),
        misconception("k ignored (top-1)", "You tested whether t is the single LARGEST entry of its row (argmax). The "
           "exercise asks whether it is among the top k (row.topk(k), with the k passed in).",
           _top_k_variant(top=1)),
        misconception("off by one in the rank", "Off by one: you counted t when at most k tokens beat it, which is the "
           "top k + 1. t is in the top k when FEWER than k tokens score higher (or: t in row.topk(k).indices).",
           _top_k_variant(rank_le=True)),
        misconception("W_E^T instead of W_U", "You closed the circuit with W_E^T instead of W_U, comparing the head's "
           "output with the token embeddings. What the head does to the logits goes through the unembedding: "
           "W_E W_V W_O W_U.",
           _top_k_variant(unembed="W_E")),
        misconception("count instead of fraction", "You returned the NUMBER of tokens that pass; return the fraction "
           "(divide by d_vocab), so heads and models of different vocabularies can be compared.",
           _top_k_variant(fraction=False)),
        misconception("averaged over heads", "You averaged over the heads. Return one fraction per head, shape [head].",
           _top_k_variant(head_mean=True)),
    ),
)


def self_top_k_fraction(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_V, W_O, W_U, k) -> fraction[head]``; the real-model case is attn-only-1l with
    k = 5 (its 4096 x 4096 circuits: build rows in chunks, or per head)."""
    run_check(SELF_TOP_K_FRACTION, nan_as_inf(fn), cases)
