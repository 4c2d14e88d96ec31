"""Checks for chapter 02, section 1: the full OV and QK circuits as FactoredMatrix (1a, 1b) and a
slice of the OV circuit from the model's cached activations (1c).

Also the helpers the other parts share: ``square_sizes`` (which cases use square sizes),
``real_weights`` (attn-only-1l's weights, head axis first) and ``real_weight_inputs`` (a real-model
case made of some of them).

The reference answers are utils/circuits/exercises.py; how the cases are chosen is in
``utils.checks.ch02``'s docstring. The notebook reaches these checks through ``utils.checks.ch02``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from transformer_lens import FactoredMatrix

from utils.checks.core import Cases, CheckFailure, Exercise, run_check, seed_for
from utils.checks.toolkit import (
    attn_only_1l,
    circuit_sizes,
    misconception,
    nan_as_inf,
    randint,
    random_ov_weights,
    rng,
)
from utils.circuits import exercises as ref
from utils.tensors import is_factored

CHAPTER = "02"
PROBE = 48  # rows/columns of a large circuit compared (a fixed random subset)


# --------------------------------------------------------------------------- shared helpers


def square_sizes(name: str, seed: int) -> bool:
    """Square sizes for the first default case and for about a third of all others."""
    return seed == seed_for(name, 0) or seed % 3 == 0


def _probe(n: int) -> torch.Tensor:
    if n <= 2 * PROBE:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(n))[:PROBE].sort().values


def _densify(value, d_model: int) -> torch.Tensor:
    """A student's FactoredMatrix as a comparable dense tensor (for a big vocabulary, the block on
    a fixed subset of rows and columns); refuses dense tensors and materialised factors."""
    if isinstance(value, torch.Tensor):
        raise CheckFailure(
            f"Return a FactoredMatrix (from transformer_lens import FactoredMatrix), not a dense tensor "
            f"(you returned shape {tuple(value.shape)}). For the real model each circuit is 4096 x 4096 per "
            f"head; keep it as FactoredMatrix(left, right) with an inner dimension of d_head.")
    if is_factored(value):
        A, B = value.A, value.B
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value):
        A, B = value  # a FactoredMatrix's two factors (how the sandboxed grader transports one)
    else:
        raise CheckFailure(f"Return one FactoredMatrix with a leading head axis, not a {type(value).__name__}.")
    if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
        raise CheckFailure(f"The two factors do not multiply: {tuple(A.shape)} and {tuple(B.shape)}.")
    if A.shape[-1] > d_model:
        raise CheckFailure(
            f"Your FactoredMatrix has an inner dimension of {A.shape[-1]}, more than d_model = {d_model}: "
            f"somewhere the vocab x vocab product was materialised. Multiply W_E into the left factor and "
            f"W_U (or W_E^T) into the right one, so the inner dimension stays d_head.")
    rows, cols = _probe(A.shape[-2]), _probe(B.shape[-1])
    return A[..., rows, :] @ B[..., :, cols]


def _factored(fn):
    """Wrap a circuit function (student's, reference or variant) to return a comparable tensor."""
    if not callable(fn) or getattr(fn, "densified", False):
        return fn

    def wrapped(**inputs):
        return _densify(fn(**inputs), inputs["W_E"].shape[-1])

    wrapped.densified = True  # wrapping twice is a no-op
    wrapped.__name__ = getattr(fn, "__name__", "circuit")
    return wrapped


def _fm(A, B) -> FactoredMatrix:
    return FactoredMatrix(A, B)


# --------------------------------------------------------------------------- 1a. the full OV circuit


def _ov_inputs(seed: int) -> dict:
    g = rng(seed)
    return random_ov_weights(g, square_sizes("full_ov_circuit", seed))


@lru_cache(maxsize=1)
def real_weights() -> dict:
    model = attn_only_1l()
    return {name: getattr(model, name).detach()[0] if name[2] in "QKVO" else getattr(model, name).detach()
            for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U", "b_Q")}


def real_weight_inputs(*names):
    return lambda: {n: real_weights()[n] for n in names}


FULL_OV = Exercise(
    chapter=CHAPTER,
    name="full_ov_circuit",
    reference=_factored(ref.full_ov_circuit),
    make_inputs=_ov_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(real_weight_inputs("W_E", "W_V", "W_O", "W_U"),),
    misconceptions=(
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model] and a token's embedding is "
           "its ROW: the circuit starts W_E @ W_V. (The paper's W_E, a [d_model, d_vocab] map of one-hot columns, is "
           "our W_E.T.)",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_E.T @ W_V, W_O @ W_U))),
        misconception("W_O before W_V", "Your OV product is in the wrong order: W_O came before W_V. An embedding is "
           "first read by W_V (into d_head) and then written back by W_O, so in code the circuit is "
           "W_E @ W_V @ W_O @ W_U; the paper's 'W_O W_V' is the same map written right to left for column vectors.",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_E @ W_O, W_V @ W_U))),
        misconception("paper order typed literally", "You typed the paper's W_U W_O W_V W_E with the code's matrices. "
           "The paper applies matrices to column vectors from right to left; with our row vectors the same circuit "
           "reads left to right: W_E @ W_V @ W_O @ W_U.",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_U @ W_O, W_V @ W_E))),
        misconception("OV circuit transposed", "Your circuit is transposed: it must be [source, out] (row s = the "
           "logit change when the head attends to token s), but you returned [out, source], the paper's orientation. "
           "Use FactoredMatrix(W_E @ W_V, W_O @ W_U).",
           _factored(lambda W_E, W_V, W_O, W_U: _fm((W_O @ W_U).transpose(-1, -2), (W_E @ W_V).transpose(-1, -2)))),
        misconception("W_U transposed", "You used W_U transposed. W_U is [d_model, d_vocab]: logits = x @ W_U.",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_E @ W_V, W_O @ W_U.T))),
    ),
)


def full_ov_circuit(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_V, W_O, W_U) -> FactoredMatrix [head, d_vocab (src), d_vocab (out)]``; the
    real-model case is attn-only-1l (compared on a fixed subset of rows and columns)."""
    run_check(FULL_OV, _factored(fn), cases)


# --------------------------------------------------------------------------- 1b. the full QK circuit


def _qk_inputs(seed: int) -> dict:
    g = rng(seed)
    h, vocab, d, k = circuit_sizes(g, square_sizes("full_qk_circuit", seed))
    return dict(W_E=torch.randn(vocab, d, generator=g), W_Q=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_K=torch.randn(h, d, k, generator=g) / math.sqrt(d))


QK_SWAPPED = ("Q and K swapped", "Queries and keys are swapped: entry [d, s] must be the score of QUERY "
               "(destination) token d on KEY (source) token s, (W_E W_Q)(W_E W_K)^T. You built "
               "(W_E W_K)(W_E W_Q)^T, its transpose, which reverses who attends to whom.")

FULL_QK = Exercise(
    chapter=CHAPTER,
    name="full_qk_circuit",
    reference=_factored(ref.full_qk_circuit),
    make_inputs=_qk_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(real_weight_inputs("W_E", "W_Q", "W_K"),),
    misconceptions=(
        misconception(*QK_SWAPPED, _factored(lambda W_E, W_Q, W_K: _fm(W_E @ W_K, (W_E @ W_Q).transpose(-1, -2)))),
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model]; token t's embedding is "
           "the row W_E[t], so both factors start from W_E: (W_E @ W_Q) and (W_E @ W_K).",
           _factored(lambda W_E, W_Q, W_K: _fm(W_E.T @ W_Q, (W_E.T @ W_K).transpose(-1, -2)))),
        misconception("W_K not transposed", "The key factor needs a transpose: a score is q . k = (x_d W_Q)(x_s "
           "W_K)^T, so the right factor is (W_E @ W_K)^T = W_K^T W_E^T, not W_K @ W_E^T.",
           _factored(lambda W_E, W_Q, W_K: _fm(W_E @ W_Q, W_K @ W_E.T))),
        misconception("scaled by 1/sqrt(d_head)", "The full QK circuit is the bilinear form W_E W_Q W_K^T W_E^T "
           "itself, without 1/sqrt(d_head): the scale belongs to the attention scores (and changes no ranking).",
           _factored(lambda W_E, W_Q, W_K: _fm(W_E @ W_Q / math.sqrt(W_Q.shape[-1]),
                                                (W_E @ W_K).transpose(-1, -2)))),
    ),
)


def full_qk_circuit(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_Q, W_K) -> FactoredMatrix [head, d_vocab (dest), d_vocab (src)]``."""
    run_check(FULL_QK, _factored(fn), cases)


# --------------------------------------------------------------------------- 1c. a slice from the model's pieces


def _activation_inputs(seed: int) -> dict:
    g = rng(seed)
    b, p, h = randint(g, 1, 2), randint(g, 3, 6), randint(g, 1, 3)
    if square_sizes("ov_from_activations", seed):
        vocab = d = k = randint(g, 5, 8)
    else:
        d = randint(g, 6, 10)
        k, vocab = randint(g, 2, d - 2), d + randint(g, 4, 12)
    n_out = randint(g, 2, vocab - 1)
    return dict(embed=torch.randn(b, p, d, generator=g), pos_embed=torch.randn(b, p, d, generator=g) * 2,
                W_V=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_O=torch.randn(h, k, d, generator=g) / math.sqrt(k),
                W_U=torch.randn(d, vocab, generator=g) / math.sqrt(d),
                out_tokens=torch.randperm(vocab, generator=g)[:n_out])


@lru_cache(maxsize=1)
def _real_activations() -> dict:
    from utils.data import analysis_tokens

    model = attn_only_1l()
    tokens = analysis_tokens(seq_len=12, n_seqs=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in ("hook_embed", "hook_pos_embed"))
    w = real_weights()
    return dict(embed=cache["hook_embed"], pos_embed=cache["hook_pos_embed"], W_V=w["W_V"], W_O=w["W_O"],
                W_U=w["W_U"], out_tokens=torch.tensor([0, 13, 198, 220, 271, 500, 1000, 2047, 3000, 4095]))


def _ov_acts(values_from, order="VO", transpose_U=False):
    def ov_from_activations(embed, pos_embed, W_V, W_O, W_U, out_tokens):
        x = embed + pos_embed if values_from == "both" else embed
        W_U = W_U.T if transpose_U else W_U
        if order == "VO":
            per_head = torch.einsum("bpd,hdk,hke->bphe", x, W_V, W_O)
        else:
            per_head = torch.einsum("bpa,hab,hbc->bphc", x, W_O, W_V)  # W_O first: needs d_model == d_head
        return per_head @ W_U[:, out_tokens]

    return ov_from_activations


OV_FROM_ACTIVATIONS = Exercise(
    chapter=CHAPTER,
    name="ov_from_activations",
    reference=ref.ov_from_activations,
    make_inputs=_activation_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(lambda: dict(_real_activations()),),
    misconceptions=(
        misconception("positional embedding in the values", "You added the positional embedding to the values. "
           "attn-only-1l uses shortformer positions: W_pos enters the queries and keys only, so a head's value "
           "input (and its OV circuit) is the token embedding alone. Use embed, not embed + pos_embed.",
           _ov_acts("both")),
        misconception("W_O before W_V", "Your OV product is in the wrong order: each position's embedding goes through "
           "W_V first (into d_head), then W_O (back to d_model), then W_U.",
           _ov_acts("embed", order="OV")),
        misconception("W_U transposed", "You used W_U transposed. W_U is [d_model, d_vocab]: select the out tokens' "
           "COLUMNS, W_U[:, out_tokens].",
           _ov_acts("embed", transpose_U=True)),
    ),
)


def ov_from_activations(fn, cases: Cases = None) -> None:
    """Check ``fn(embed, pos_embed, W_V, W_O, W_U, out_tokens) -> [batch, pos, head, n_out]``; the
    real-model case uses attn-only-1l's cached ``hook_embed`` and ``hook_pos_embed``."""
    run_check(OV_FROM_ACTIVATIONS, nan_as_inf(fn), cases)
