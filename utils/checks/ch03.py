"""Checks for chapter 03 (copying, induction heads and composition).

Every check runs the student's function on seeded random inputs and on a real model: attn-only-1l
for the OV-circuit and eigenvalue exercises; for the induction and composition exercises the
bundled attn-only-2l when it ships, otherwise attn-only-1l (patterns, losses) or a seeded randomly
initialised 2-layer model of the attn-only-2l family (composition). A mismatch is explained by the
first catalogued mistake whose output the student's output reproduces.

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

from utils import copying as ref
from utils import induction as ind
from utils.tensors import causal_mask
from utils.checks.ch00 import PER_TOKEN_LOSS as _CH00_PER_TOKEN_LOSS
from utils.checks.toolkit import misconception, attn_only_1l, random_ov_weights, nan_as_inf, randint, rng
from utils.checks.core import Cases, CheckFailure, Exercise, default_case, question, run_check, square_case
# The circuit-from-the-weights and the patching / attribution exercises live in their own modules;
# the notebook reaches every chapter-03 check through this one.
from utils.checks import ch03_circuit as _circuit
from utils.checks import ch03_patching as _patching
from utils.checks.ch03_circuit import (IN_CONTEXT_LEARNING_SCORE, K_COMPOSITION_CIRCUIT,  # noqa: F401
                                       POSITIONAL_ATTENTION_PATTERN, TOP_1_DIAGONAL_ACCURACY,
                                       in_context_learning_score, k_composition_circuit,
                                       positional_attention_pattern, top_1_diagonal_accuracy)
from utils.checks.ch03_patching import (HEAD_LOGIT_ATTRIBUTION, INDUCTION_LOGIT_DIFF,  # noqa: F401
                                        NORMALISED_PATCHING_METRIC, PATCHED_HEAD_OUTPUTS,
                                        PATCHED_RESIDUAL_POSITIONS, head_logit_attribution,
                                        induction_logit_diff, normalised_patching_metric, patched_head_outputs,
                                        patched_residual_positions)

CHAPTER = "03"
EXERCISES = [
    "eigenvalues_via_small_product", "full_ov_circuit_eigenvalues", "copying_score", "self_top_k_fraction",
    "per_token_loss", "induction_scores", "previous_token_scores", "induction_loss_drop", "ablate_heads",
    "composition_score", "composition_scores",
    "copying_question", "k_composition_question", "baseline_question",
] + _circuit.EXERCISES + _patching.EXERCISES + ["patching_question"]
REAL_SEQ_LEN = 20  # repeated random tokens of the real-model cases: BOS + 2 x 20


# --------------------------------------------------------------------------- shared helpers




@lru_cache(maxsize=1)
def _two_layer_bundled() -> bool:
    from utils.models.loading import MODEL_DIR

    return (MODEL_DIR / "attn-only-2l.safetensors").exists() and (MODEL_DIR / "attn-only-2l.json").exists()


@lru_cache(maxsize=1)
def _two_layer_model():
    """The bundled attn-only-2l, or (until it ships) a seeded random model of its shape."""
    from utils.models import HookedTinyTransformer, ModelConfig, load_model

    if _two_layer_bundled():
        return load_model("attn-only-2l", device="cpu")
    cfg = ModelConfig(n_layers=2, d_model=128, n_heads=8, d_head=32, d_vocab=4096, n_ctx=128, seed=2)
    return HookedTinyTransformer(cfg).eval()


def _induction_model():
    """A TRAINED model for the pattern and loss cases: attn-only-2l if bundled, else attn-only-1l."""
    return _two_layer_model() if _two_layer_bundled() else attn_only_1l()


@lru_cache(maxsize=1)
def _repeated_run() -> dict:
    model = _induction_model()
    tokens = ind.repeated_random_tokens(model, REAL_SEQ_LEN, batch=2, seed=0)
    keep = lambda n: n.endswith("hook_pattern") or n.endswith("hook_z")  # noqa: E731
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=keep)
    last = model.cfg.n_layers - 1
    return dict(tokens=tokens, logits=logits, first_pattern=cache["blocks.0.attn.hook_pattern"],
                last_pattern=cache[f"blocks.{last}.attn.hook_pattern"], z=cache[f"blocks.{last}.attn.hook_z"])


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
        misconception("W_E^T instead of W_U", "You closed the circuit with W_E^T instead of W_U: W_E W_V W_O W_E^T compares "
           "the head's output with the token EMBEDDINGS. What the head does to the logits goes through the "
           "unembedding: W_E W_V W_O W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_V, W_O @ W_E.T))),
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model] and a token's embedding is its "
           "ROW: the circuit starts W_E @ W_V.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E.T @ W_V, W_O @ W_U))),
        misconception("W_U transposed", "You used W_U transposed. W_U is [d_model, d_vocab]: logits = x @ W_U, so the circuit "
           "ends W_O @ W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_V, W_O @ W_U.T))),
        misconception("W_O before W_V", "Your OV product is in the wrong order: an embedding is first read by W_V (into "
           "d_head) and then written back by W_O, so in code the circuit is W_E @ W_V @ W_O @ W_U.",
           _ov_eigs(lambda W_E, W_V, W_O, W_U: _small(W_E @ W_O, W_V @ W_U))),
        misconception("paper order typed literally", "You typed the paper's W_U W_O W_V W_E with the code's matrices. The "
           "paper applies matrices to column vectors from right to left; with our row vectors the same circuit "
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
        misconception("|lambda| in the numerator", "You put absolute values in the numerator: sum |lambda| / sum |lambda| is "
           "always 1. The numerator is the REAL PART of the sum, Re(sum lambda): negative eigenvalues (suppression) "
           "must pull the score down, and complex pairs a +- bi contribute only their real part 2a.",
           lambda eigenvalues: eigenvalues.abs().sum(-1) / eigenvalues.abs().sum(-1)),
        misconception("|sum lambda| in the numerator", "Your numerator is |sum lambda|, the magnitude of the sum: a head "
           "whose eigenvalues are all negative (it suppresses the tokens it attends to) then scores +1 instead "
           "of -1. Use the real part, Re(sum lambda), which keeps the sign.",
           lambda eigenvalues: eigenvalues.sum(-1).abs() / eigenvalues.abs().sum(-1)),
        misconception("mean of Re lambda / |lambda|", "You averaged Re(lambda) / |lambda| over the eigenvalues, so a tiny "
           "eigenvalue counts as much as a huge one. The score weights each eigenvalue by its size: "
           "Re(sum lambda) / sum |lambda|.",
           lambda eigenvalues: (eigenvalues.real / eigenvalues.abs()).mean(-1)),
        misconception("denominator |sum lambda|", "Your denominator is |sum lambda|. It must be sum |lambda|, the total size "
           "of the eigenvalues: with |sum lambda| the score is just the sign of the sum (conjugate pairs cancel "
           "their imaginary parts) and every head looks like a perfect copier or suppressor.",
           lambda eigenvalues: eigenvalues.real.sum(-1) / eigenvalues.sum(-1).abs()),
        misconception("denominator without the imaginary parts", "Your denominator is sum |Re lambda|, which ignores the "
           "imaginary parts: a head whose eigenvalues are mostly rotations (a +- bi, b large) then scores near "
           "+-1. Divide by sum |lambda|, the full complex magnitudes.",
           lambda eigenvalues: eigenvalues.real.sum(-1) / eigenvalues.real.abs().sum(-1)),
        misconception("not normalised", "You returned Re(sum lambda) without dividing by sum |lambda|. The score must be "
           "scale-free, between -1 and 1, so heads (and models) with larger weights can be compared.",
           lambda eigenvalues: eigenvalues.real.sum(-1)),
        misconception("summed over heads", "You summed over the HEAD axis (dim 0). eigenvalues is [head, d_head]: sum over "
           "the last axis, one score per head.",
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
        misconception("column instead of row", "You looked at COLUMN t of the circuit, the source tokens that most raise "
           "t's logit. The question is what attending to t does: ROW t of W_E W_V W_O W_U ([source, out]) is the "
           "change in every logit, and t counts when its own logit is among the row's k largest.",
           _top_k_variant(transpose=True)),
        misconception("k ignored (top-1)", "You tested whether t is the single LARGEST entry of its row (argmax). The "
           "exercise asks whether it is among the top k (row.topk(k), with the k passed in).",
           _top_k_variant(top=1)),
        misconception("off by one in the rank", "Off by one: you counted t when at most k tokens beat it, which is the top "
           "k + 1. t is in the top k when FEWER than k tokens score higher (or: t in row.topk(k).indices).",
           _top_k_variant(rank_le=True)),
        misconception("W_E^T instead of W_U", "You closed the circuit with W_E^T instead of W_U, comparing the head's output "
           "with the token embeddings. What the head does to the logits goes through the unembedding: "
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


# --------------------------------------------------------------------------- 2a. per-token loss


def _loss_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, pos, vocab = randint(g, 2, 4), randint(g, 5, 9), randint(g, 11, 30)
    return dict(logits=torch.randn(batch, pos, vocab, generator=g) * 2,
                tokens=torch.randint(0, vocab, (batch, pos), generator=g))


def _ce(log_probs, tokens):
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


PER_TOKEN_LOSS = Exercise(
    chapter=CHAPTER,
    name="per_token_loss",
    reference=ref.per_token_loss,
    make_inputs=_loss_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(logits=_repeated_run()["logits"], tokens=_repeated_run()["tokens"]),),
    misconceptions=(
        misconception("softmax twice", "You normalised twice: the probabilities (softmax) went into a function that "
           "normalises again (F.cross_entropy or log_softmax expect raw LOGITS). The result is squashed towards "
           "log(d_vocab). Apply log_softmax once, to the logits.",
           lambda logits, tokens: _ce(logits.softmax(-1).log_softmax(-1), tokens)),
        misconception("log of log-probabilities", "You took the log of log-probabilities (torch.log(log_softmax(...))): "
           "log-probabilities are already logs, and negative, so their log is NaN. The loss is -log_softmax(logits) "
           "at the next token.",
           lambda logits, tokens: _ce(logits.log_softmax(-1).log(), tokens)),
        misconception("sliced alike ([:, 1:])", "You dropped the first position of BOTH logits and tokens, so position i's "
           "logits are still scored against token i itself. The logits at i predict token i + 1: "
           "logits[:, :-1] against tokens[:, 1:].",
           lambda logits, tokens: -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]),
        misconception("sliced alike ([:, :-1])", "You dropped the last position of BOTH logits and tokens, so position i's "
           "logits are still scored against token i itself. The logits at i predict token i + 1: "
           "logits[:, :-1] against tokens[:, 1:].",
           lambda logits, tokens: -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]),
        *_CH00_PER_TOKEN_LOSS.misconceptions,
        misconception("averaged over the batch", "You averaged over the batch. Return one loss per (sequence, position), "
           "shape [batch, pos - 1]: the halves of a repeated sequence are compared position by position later.",
           lambda logits, tokens: ref.per_token_loss(logits, tokens).mean(0)),
    ),
)


def per_token_loss(fn, cases: Cases = None) -> None:
    """Check ``fn(logits[batch, pos, d_vocab], tokens[batch, pos]) -> loss[batch, pos - 1]``; the
    real-model case is the chapter's model on repeated random tokens."""
    run_check(PER_TOKEN_LOSS, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2b. induction and previous-token scores


def _stripe_pattern(g: torch.Generator, batch: int, offsets: list, n: int, strength: float = 3.0) -> torch.Tensor:
    """Random causal patterns [batch, head, n, n]; head h leans towards key q - offsets[h] (None: no lean)."""
    scores = torch.randn(batch, len(offsets), n, n, generator=g)
    q = torch.arange(n)
    for h, off in enumerate(offsets):
        if off is not None:
            keys = q - off
            ok = keys >= 0
            scores[:, h, q[ok], keys[ok]] += strength
    return scores.masked_fill(~causal_mask(n), float("-inf")).softmax(-1)


def _induction_inputs(seed: int) -> dict:
    g = rng(seed)
    seq_len, batch = randint(g, 4, 8), randint(g, 1, 3)
    # an induction head, a duplicate-token head, a previous-token head, a random head, ...
    offsets = [seq_len - 1, seq_len, 1, None, seq_len - 1][:randint(g, 4, 5)]
    return dict(pattern=_stripe_pattern(g, batch, offsets, 2 * seq_len + 1), seq_len=seq_len)


def _stripe(pattern, offset, take=None, drop_last=0):
    s = pattern.diagonal(offset=offset, dim1=-2, dim2=-1)
    if take is not None:
        s = s[..., s.shape[-1] - take - drop_last: s.shape[-1] - drop_last]
    return s


INDUCTION_SCORES = Exercise(
    chapter=CHAPTER,
    name="induction_scores",
    reference=ind.induction_scores,
    make_inputs=_induction_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=_repeated_run()["last_pattern"], seq_len=REAL_SEQ_LEN),),
    misconceptions=(
        misconception("offset seq_len (duplicate-token stripe)", "You measured attention from each second-half token to the "
           "PREVIOUS OCCURRENCE OF ITSELF, key q - seq_len: that is a duplicate-token head. An induction head "
           "attends to the token AFTER the previous occurrence, key q - seq_len + 1 (diagonal offset "
           "-(seq_len - 1)), because that is the token it predicts comes next.",
           lambda pattern, seq_len: _stripe(pattern, -seq_len, seq_len).mean((0, -1))),
        misconception("stripe above the diagonal", "Your diagonal offset has the wrong sign: keys AFTER the query are masked "
           "(their attention is always 0). The induction stripe lies below the main diagonal: "
           "pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).",
           lambda pattern, seq_len: _stripe(pattern, seq_len - 1, seq_len).mean((0, -1))),
        misconception("first-half queries included", "You averaged the whole stripe, including queries in the FIRST half, "
           "where nothing has repeated yet. Only the seq_len second-half queries (the last seq_len entries of the "
           "stripe) can do induction.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1)).mean((0, -1))),
        misconception("BOS forgotten (queries one too early)", "Your queries are one position too early: with the BOS at "
           "position 0 the second half is positions seq_len + 1 .. 2 seq_len (the LAST seq_len entries of the "
           "stripe); you used seq_len .. 2 seq_len - 1.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len, drop_last=1).mean((0, -1))),
        misconception("averaged over heads", "You averaged over the HEAD axis. pattern is [batch, head, query, key]: average "
           "over the batch and the queries, one score per head.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len).mean((1, -1))),
        misconception("not averaged over the batch", "You returned one score per sequence and head; average over the batch "
           "too: one score per head.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len).mean(-1)),
    ),
)


def induction_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern[batch, head, 2 n + 1, 2 n + 1], seq_len=n) -> score[head]``; the real-model
    case is the last layer's pattern on repeated random tokens (attn-only-2l once it ships)."""
    run_check(INDUCTION_SCORES, nan_as_inf(fn), cases)


def _previous_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, n = randint(g, 1, 3), randint(g, 5, 10)
    offsets = [1, 0, None, 2, 1][:randint(g, 3, 5)]
    return dict(pattern=_stripe_pattern(g, batch, offsets, n))


def _previous_with_query_0(pattern):
    n = pattern.shape[-1]
    i = torch.arange(n)
    return pattern[..., i, i - 1].mean((0, -1))  # i - 1 = -1 wraps round to the last key (masked: 0)


PREVIOUS_TOKEN_SCORES = Exercise(
    chapter=CHAPTER,
    name="previous_token_scores",
    reference=ind.previous_token_scores,
    make_inputs=_previous_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=_repeated_run()["first_pattern"]),),
    misconceptions=(
        misconception("main diagonal", "You read the MAIN diagonal A[q, q], attention to the current token. The previous "
           "token is key q - 1: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).",
           lambda pattern: _stripe(pattern, 0).mean((0, -1))),
        misconception("above the diagonal", "You read A[q, q + 1], the NEXT token, which the causal mask always sets to 0. "
           "The previous token is key q - 1: offset=-1.",
           lambda pattern: _stripe(pattern, 1).mean((0, -1))),
        misconception("query 0 included", "You included query 0, which has no previous token: pattern[..., i, i - 1] with "
           "i = 0 reads key -1, i.e. the LAST key (always 0 under the causal mask), which drags the mean down. "
           "Average over queries 1 .. n - 1 only (the diagonal at offset -1 has exactly those).",
           _previous_with_query_0),
        misconception("averaged over heads", "You averaged over the HEAD axis. pattern is [batch, head, query, key]: average "
           "over the batch and the queries, one score per head.",
           lambda pattern: _stripe(pattern, -1).mean((1, -1))),
        misconception("not averaged over the batch", "You returned one score per sequence and head; average over the batch "
           "too: one score per head.",
           lambda pattern: _stripe(pattern, -1).mean(-1)),
    ),
)


def previous_token_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern[batch, head, n, n]) -> score[head]``; the real-model case is layer 0's
    pattern on repeated random tokens."""
    run_check(PREVIOUS_TOKEN_SCORES, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2c. the loss drop, and ablation


def _drop_inputs(seed: int) -> dict:
    """Losses shaped like a model with induction: high in the first half, low in the second, and
    high at the two unpredictable entries (0 and seq_len)."""
    g = rng(seed)
    n, batch = randint(g, 4, 9), randint(g, 1, 3)
    losses = torch.rand(batch, 2 * n, generator=g) * 2 + 3
    losses[:, n + 1:] = torch.rand(batch, n - 1, generator=g) * 1.5 + 0.2
    losses[:, [0, n]] = torch.rand(batch, 2, generator=g) * 2 + 5
    return dict(losses=losses, seq_len=n)


def _real_drop_inputs() -> dict:
    run = _repeated_run()
    return dict(losses=ref.per_token_loss(run["logits"], run["tokens"]), seq_len=REAL_SEQ_LEN)


INDUCTION_LOSS_DROP = Exercise(
    chapter=CHAPTER,
    name="induction_loss_drop",
    reference=ref.induction_loss_drop,
    make_inputs=_drop_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_drop_inputs,),
    misconceptions=(
        misconception("second half minus first", "Your sign is reversed: the drop is FIRST-half loss minus SECOND-half loss, "
           "positive when the model predicts the repeat better.",
           lambda losses, seq_len: float(losses[:, seq_len + 1:].mean() - losses[:, 1:seq_len].mean())),
        misconception("unpredictable entries included", "You split the losses at seq_len and kept everything. Entry 0 "
           "(r_1 predicted from BOS) and entry seq_len (r_1 of the repeat, predicted from r_n, which has no "
           "earlier occurrence) cannot be predicted in either half; both halves must predict r_2 .. r_n: entries "
           "1 .. seq_len - 1 and seq_len + 1 .. 2 seq_len - 1.",
           lambda losses, seq_len: float(losses[:, :seq_len].mean() - losses[:, seq_len:].mean())),
        misconception("losses indexed as if unshifted", "You indexed the losses as if entry i were the loss of token i. "
           "Entry i is the loss of PREDICTING token i + 1 (made at position i): r_2 .. r_n of the first copy are "
           "entries 1 .. seq_len - 1, and of the second copy entries seq_len + 1 .. 2 seq_len - 1.",
           lambda losses, seq_len: float(losses[:, 2:seq_len + 1].mean() - losses[:, seq_len + 2:].mean())),
        misconception("sums instead of means", "You subtracted SUMS of losses. Use the mean loss of each half (in nats per "
           "token), so the drop does not grow with the batch or the sequence length.",
           lambda losses, seq_len: float(losses[:, 1:seq_len].sum() - losses[:, seq_len + 1:].sum())),
        misconception("one number per sequence", "You returned one drop per sequence; return a single number, the mean over "
           "the batch (a float).",
           lambda losses, seq_len: losses[:, 1:seq_len].mean(-1) - losses[:, seq_len + 1:].mean(-1)),
    ),
)


def induction_loss_drop(fn, cases: Cases = None) -> None:
    """Check ``fn(losses[batch, 2 n], seq_len=n) -> float``; the real-model case is the chapter's model's
    per-token loss on repeated random tokens."""
    run_check(INDUCTION_LOSS_DROP, nan_as_inf(fn), cases)


def _ablate_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, pos, h, k = randint(g, 2, 3), randint(g, 6, 8), randint(g, 3, 5), randint(g, 2, 4)
    z = torch.randn(batch, pos, h, k, generator=g) + torch.randn(1, pos, h, k, generator=g) * 2  # per-position means
    n_heads = randint(g, 1, h - 1)
    heads = torch.randperm(h, generator=g)[:n_heads].sort().values.tolist()
    case = default_case("ablate_heads", seed)
    mean = case in (0, 2) if case is not None else bool(randint(g, 0, 1))
    return dict(z=z, heads=heads, mean=mean)


def _real_ablate_inputs() -> dict:
    return dict(z=_repeated_run()["z"], heads=[1, 2], mean=True)


def _ablate_variant(*, axis=2, complement=False, ignore_mean=False, mean_dims=(0, 1)):
    def ablate_heads(z, heads, mean=False):
        out = z.clone()
        idx = torch.tensor(heads, dtype=torch.long)
        if complement:
            idx = torch.tensor([i for i in range(z.shape[2]) if i not in heads], dtype=torch.long)
        sel = (slice(None),) * axis + (idx,)
        if mean and not ignore_mean:
            avg = z[sel].mean() if mean_dims is None else z[sel].mean(dim=mean_dims, keepdim=True)
            out[sel] = avg.expand_as(out[sel])
        else:
            out[sel] = 0.0
        return out

    return ablate_heads


def _returns_z(fn):
    if not callable(fn):
        return fn

    def wrapped(**inputs):
        out = fn(**inputs)
        if out is None:
            raise CheckFailure("ablate_heads returned None. Return the ablated z (a hook may edit its input in place, "
                               "but this function must still return it).")
        return out

    return wrapped


ABLATE_HEADS = Exercise(
    chapter=CHAPTER,
    name="ablate_heads",
    reference=ref.ablate_heads,
    make_inputs=_ablate_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_ablate_inputs,),
    misconceptions=(
        misconception("positions ablated instead of heads", "You indexed the wrong axis: z[:, heads] is POSITIONS. hook_z is "
           "[batch, pos, head, d_head], so a head is z[:, :, h].",
           _ablate_variant(axis=1)),
        misconception("every other head ablated", "You ablated every head EXCEPT the listed ones; ablate exactly the heads in "
           "`heads` and leave the others alone.",
           _ablate_variant(complement=True)),
        misconception("mean flag ignored", "With mean=True the heads are not zeroed but replaced by their mean z (over batch "
           "and positions), so they keep adding their average output and only the information they move is "
           "removed. You zeroed them anyway.",
           _ablate_variant(ignore_mean=True)),
        misconception("mean over the batch only", "Your mean is over the batch only (one mean per position). Mean-ablation "
           "here replaces each ablated head's z by its mean over the batch AND the positions: "
           "z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(0,))),
        misconception("mean over the positions only", "Your mean is over the positions only (one mean per sequence). "
           "Mean-ablation here replaces each ablated head's z by its mean over the batch AND the positions: "
           "z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(1,))),
        misconception("mean over the heads too", "Your mean also runs over the heads, mixing them. Each ablated head gets "
           "ITS OWN mean z over the batch and positions: z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(0, 1, 2))),
        misconception("mean of everything", "You replaced the heads by one number, the mean of the whole z. Each ablated head "
           "gets its own mean VECTOR (d_head numbers) over the batch and positions.",
           _ablate_variant(mean_dims=None)),
    ),
)


def ablate_heads(fn, cases: Cases = None) -> None:
    """Check ``fn(z[batch, pos, head, d_head], heads: list[int], mean: bool) -> z``; the real-model
    case is the chapter's model's last-layer ``hook_z`` on repeated random tokens, mean-ablated."""
    run_check(ABLATE_HEADS, _returns_z(nan_as_inf(fn)), cases)


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
def _real_score_inputs() -> dict:
    w = ref.attn_weights(_two_layer_model())
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
    extra_inputs=(lambda: dict(_real_score_inputs()),),
    misconceptions=(
        misconception("product in the wrong order", "Your product is in the wrong order: W_B W_A. The earlier head WRITES "
           "with W_A and the later head READS with W_B, and in our row-vector code data flows left to right: "
           "||W_A @ W_B||_F.",
           lambda W_A, W_B: _fro(W_B @ W_A) / (_fro(W_A) * _fro(W_B))),
        misconception("missing Frobenius normalisation", "You returned ||W_A W_B||_F without dividing by ||W_A||_F ||W_B||_F. "
           "Unnormalised, the score grows with the size of the weights; normalised it lies in [0, 1] and heads "
           "can be compared.",
           lambda W_A, W_B: _fro(W_A @ W_B)),
        misconception("squared norms", "You used squared Frobenius norms. The score is ||W_A W_B||_F / (||W_A||_F ||W_B||_F) "
           "with the norms themselves (torch.linalg.matrix_norm, or .norm(dim=(-2, -1))).",
           lambda W_A, W_B: _fro(W_A @ W_B) ** 2 / (_fro(W_A) ** 2 * _fro(W_B) ** 2)),
        misconception("spectral norms", "You used the spectral norm (ord=2, the largest singular value). The composition "
           "score uses the Frobenius norm: ||M||_F = sqrt(sum of squares of the entries).",
           lambda W_A, W_B: torch.linalg.matrix_norm(W_A @ W_B, ord=2)
           / (torch.linalg.matrix_norm(W_A, ord=2) * torch.linalg.matrix_norm(W_B, ord=2))),
        misconception("norm over the whole batch", "Your norms run over the whole batch (e.g. W.norm() with no dim): take "
           "each matrix's norm over its last two axes, torch.linalg.matrix_norm(W) or W.norm(dim=(-2, -1)).",
           lambda W_A, W_B: (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())),
        misconception("elementwise product", "You multiplied elementwise (W_A * W_B). Composition is about the MATRIX "
           "product W_A @ W_B: what W_A writes, passed through what W_B reads.",
           lambda W_A, W_B: _fro(W_A * W_B) / (_fro(W_A) * _fro(W_B))),
        misconception("cosine similarity of the matrices", "You computed the cosine similarity <W_A, W_B>_F / (||W_A|| ||W_B||), "
           "which asks whether the two matrices look alike. Composition asks whether one FEEDS the other: the "
           "norm of the matrix product, ||W_A @ W_B||_F / (||W_A||_F ||W_B||_F).",
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
    return dict(ref.attn_weights(_two_layer_model()), kind="K")


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
        misconception("Q- and K-composition swapped", "You swapped Q- and K-composition. The earlier head's output OV^0 = "
           "W_V^0 W_O^0 is read by the later head's QUERIES in Q-composition: W_B = W_Q^1 W_K^1T; by its KEYS in "
           "K-composition: W_B = (W_Q^1 W_K^1T)^T = W_K^1 W_Q^1T (the key side of the bilinear form, hence the "
           "transpose).",
           _scores_variant(swap_qk=True)),
        misconception("product in the wrong order", "Your products are in the wrong order (W_B W_A). The earlier head writes "
           "with W_A = OV^0 and the later head reads with W_B; in our row-vector code data flows left to right: "
           "||OV^0 @ W_B||_F.",
           _scores_variant(reverse=True)),
        misconception("layers swapped", "You composed layer 1 into layer 0. Information only flows forward: the EARLIER head "
           "(layer 0) writes with its OV and the LATER head (layer 1) reads with its QK or OV.",
           _scores_variant(layers=(1, 0))),
        misconception("rows and columns swapped", "Your result is transposed: rows must index the layer-0 heads and columns "
           "the layer-1 heads, [n_heads_layer0, n_heads_layer1].",
           _scores_variant(transpose_out=True)),
        misconception("W_O W_V (paper order typed literally)", "You typed the paper's W_O W_V with the code's matrices. With "
           "row vectors a head's OV matrix is W_V @ W_O ([d_model, d_model]); W_O @ W_V is [d_head, d_head], not a "
           "map of the residual stream.",
           _scores_variant(paper_ov=True)),
        misconception("W_K not transposed", "A head's QK matrix is W_Q @ W_K^T (q . k = x W_Q (x' W_K)^T), not W_Q @ W_K.",
           _scores_variant(untransposed_k=True)),
        misconception("missing Frobenius normalisation", "You returned ||W_A W_B||_F without dividing by ||W_A||_F ||W_B||_F; "
           "use the normalised composition score.",
           _scores_variant(normalise=False)),
    ),
)


def composition_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(W_Q, W_K, W_V, W_O, kind) -> scores[n_heads_layer0, n_heads_layer1]`` for weights
    stacked [n_layers = 2, head, ...] and kind in "Q", "K", "V" (the first three default cases are K,
    Q and V); the real-model case is K-composition in the 2-layer model."""
    run_check(COMPOSITION_SCORES, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- conceptual questions
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


copying_question = question(CHAPTER, "copying_question",
                            "Why can a head have a high eigenvalue copying score but a low self-top-5 fraction?")
k_composition_question = question(CHAPTER, "k_composition_question",
                                  "Which part of the layer-1 induction head reads the previous-token head's output?")
baseline_question = question(CHAPTER, "baseline_question",
                             "Why compare composition scores with random matrices of the same shapes?")
patching_question = question(CHAPTER, "patching_question",
                             "Why does patching the previous-token head alone score below zero?")
