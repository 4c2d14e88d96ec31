"""Checks for chapter 02 (QK and OV circuits, and skip-trigrams).

Every check runs the student's function on seeded random inputs and, where the exercise is about
the real model, on the bundled attn-only-1l's own weights and activations. A mismatch is explained
by the first catalogued mistake whose output the student's output reproduces.

The first default case of every weight-shaped exercise is "square" (d_vocab == d_model == d_head,
or n_ctx == d_model): there every transposition and every wrong product order still runs, so the
check can name it instead of reporting a shape error. The other cases keep the sizes apart.

The reference answers are utils/circuits/exercises.py. One section per exercise (its inputs, its
reference, its catalogue of mistakes), in the notebook's order: longer than 400 lines because the
catalogue is the point, and splitting it would separate each exercise from its mistakes.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from transformer_lens import FactoredMatrix

from utils.checks.core import Cases, CheckFailure, Exercise, question, run_check, seed_for
from utils.checks.toolkit import (
    attn_only_1l,
    circuit_sizes,
    misconception,
    nan_as_inf,
    randint,
    random_ov_weights,
    random_pattern,
    rng,
)
from utils.circuits import exercises as ref
from utils.circuits.bigrams import bigram_counts
from utils.circuits.experiments import confirmation_prompts, filler_contexts
from utils.tensors import causal_mask, is_factored

CHAPTER = "02"
EXERCISES = [
    "full_ov_circuit", "full_qk_circuit", "ov_from_activations", "positional_qk_pattern",
    "positional_head_scores", "top_for_source", "confirmation_effect", "spearman",
    "axis_question", "baseline_question", "shortformer_question",
]
PROBE = 48  # rows/columns of a large circuit compared (a fixed random subset)


# --------------------------------------------------------------------------- shared helpers


def _square(name: str, seed: int) -> bool:
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
    return random_ov_weights(g, _square("full_ov_circuit", seed))


@lru_cache(maxsize=1)
def _real_weights() -> dict:
    model = attn_only_1l()
    return {name: getattr(model, name).detach()[0] if name[2] in "QKVO" else getattr(model, name).detach()
            for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U", "b_Q")}


def _real(*names):
    return lambda: {n: _real_weights()[n] for n in names}


FULL_OV = Exercise(
    chapter=CHAPTER,
    name="full_ov_circuit",
    reference=_factored(ref.full_ov_circuit),
    make_inputs=_ov_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(_real("W_E", "W_V", "W_O", "W_U"),),
    misconceptions=(
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model] and a token's embedding is its "
           "ROW: the circuit starts W_E @ W_V. (The paper's W_E, a [d_model, d_vocab] map of one-hot columns, is "
           "our W_E.T.)",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_E.T @ W_V, W_O @ W_U))),
        misconception("W_O before W_V", "Your OV product is in the wrong order: W_O came before W_V. An embedding is first "
           "read by W_V (into d_head) and then written back by W_O, so in code the circuit is "
           "W_E @ W_V @ W_O @ W_U; the paper's 'W_O W_V' is the same map written right to left for column vectors.",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_E @ W_O, W_V @ W_U))),
        misconception("paper order typed literally", "You typed the paper's W_U W_O W_V W_E with the code's matrices. The "
           "paper applies matrices to column vectors from right to left; with our row vectors the same circuit "
           "reads left to right: W_E @ W_V @ W_O @ W_U.",
           _factored(lambda W_E, W_V, W_O, W_U: _fm(W_U @ W_O, W_V @ W_E))),
        misconception("OV circuit transposed", "Your circuit is transposed: it must be [source, out] (row s = the logit "
           "change when the head attends to token s), but you returned [out, source], the paper's orientation. "
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
    h, vocab, d, k = circuit_sizes(g, _square("full_qk_circuit", seed))
    return dict(W_E=torch.randn(vocab, d, generator=g), W_Q=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_K=torch.randn(h, d, k, generator=g) / math.sqrt(d))


_QK_SWAPPED = ("Q and K swapped", "Queries and keys are swapped: entry [d, s] must be the score of QUERY "
               "(destination) token d on KEY (source) token s, (W_E W_Q)(W_E W_K)^T. You built "
               "(W_E W_K)(W_E W_Q)^T, its transpose, which reverses who attends to whom.")

FULL_QK = Exercise(
    chapter=CHAPTER,
    name="full_qk_circuit",
    reference=_factored(ref.full_qk_circuit),
    make_inputs=_qk_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(_real("W_E", "W_Q", "W_K"),),
    misconceptions=(
        misconception(*_QK_SWAPPED, _factored(lambda W_E, W_Q, W_K: _fm(W_E @ W_K, (W_E @ W_Q).transpose(-1, -2)))),
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model]; token t's embedding is the row "
           "W_E[t], so both factors start from W_E: (W_E @ W_Q) and (W_E @ W_K).",
           _factored(lambda W_E, W_Q, W_K: _fm(W_E.T @ W_Q, (W_E.T @ W_K).transpose(-1, -2)))),
        misconception("W_K not transposed", "The key factor needs a transpose: a score is q . k = (x_d W_Q)(x_s W_K)^T, so "
           "the right factor is (W_E @ W_K)^T = W_K^T W_E^T, not W_K @ W_E^T.",
           _factored(lambda W_E, W_Q, W_K: _fm(W_E @ W_Q, W_K @ W_E.T))),
        misconception("scaled by 1/sqrt(d_head)", "The full QK circuit is the bilinear form W_E W_Q W_K^T W_E^T itself, "
           "without 1/sqrt(d_head): the scale belongs to the attention scores (and changes no ranking).",
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
    if _square("ov_from_activations", seed):
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
    w = _real_weights()
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
        misconception("W_O before W_V", "Your OV product is in the wrong order: each position's embedding goes through W_V "
           "first (into d_head), then W_O (back to d_model), then W_U.",
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


# --------------------------------------------------------------------------- 2a. the positional QK circuit


def _pos_inputs(seed: int) -> dict:
    g = rng(seed)
    h = randint(g, 1, 3)
    if _square("positional_qk_pattern", seed):
        n = d = randint(g, 5, 8)
    else:
        n, d = randint(g, 4, 9), randint(g, 10, 14)
    k = randint(g, 2, 4)
    return dict(W_pos=torch.randn(n, d, generator=g), W_Q=torch.randn(h, d, k, generator=g) * 2 / math.sqrt(d),
                W_K=torch.randn(h, d, k, generator=g) * 2 / math.sqrt(d))


def _pos_variant(*, swap=False, transpose_pos=False, scale=True, axis=-1, mask=True):
    def positional_qk_pattern(W_pos, W_Q, W_K):
        P = W_pos.T if transpose_pos else W_pos
        q, k = P @ W_Q, P @ W_K
        scores = (k @ q.transpose(-1, -2)) if swap else (q @ k.transpose(-1, -2))
        if scale:
            scores = scores / math.sqrt(W_Q.shape[-1])
        if mask:
            scores = scores.masked_fill(~causal_mask(scores.shape[-1]), float("-inf"))
        return scores.softmax(axis)

    return positional_qk_pattern


POSITIONAL_QK_PATTERN = Exercise(
    chapter=CHAPTER,
    name="positional_qk_pattern",
    reference=lambda W_pos, W_Q, W_K: ref.positional_qk_pattern(W_pos, W_Q, W_K),
    make_inputs=_pos_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real("W_pos", "W_Q", "W_K"),),
    misconceptions=(
        misconception(*_QK_SWAPPED, _pos_variant(swap=True)),
        misconception("W_pos transposed", "You used W_pos transposed. W_pos is [n_ctx, d_model]: position i's embedding is "
           "its ROW W_pos[i], so the queries are W_pos @ W_Q.",
           _pos_variant(transpose_pos=True)),
        misconception("missing 1/sqrt(d_head)", "The model divides scores by sqrt(d_head) before the softmax; the positional "
           "pattern must too, or it comes out sharper than anything the model does.",
           _pos_variant(scale=False)),
        misconception("softmax over queries", "Your softmax ran over the QUERY axis. Each query position distributes its "
           "attention over the keys it can see: softmax(dim=-1) after the causal mask.",
           _pos_variant(axis=-2)),
        misconception("no causal mask", "There is no causal mask: query i may only attend to keys j <= i. Set the scores "
           "above the diagonal to -inf before the softmax.",
           _pos_variant(mask=False)),
    ),
)


def positional_qk_pattern(fn, cases: Cases = None) -> None:
    """Check ``fn(W_pos, W_Q, W_K) -> pattern [head, n_ctx, n_ctx]``; the real-model case uses
    attn-only-1l's W_pos, W_Q and W_K."""
    run_check(POSITIONAL_QK_PATTERN, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2b. positional head scores


def _scores_inputs(seed: int) -> dict:
    g = rng(seed)
    h, n = randint(g, 1, 4), randint(g, 4, 10)
    return dict(pattern=random_pattern(g, h, n))


@lru_cache(maxsize=1)
def _real_positional_pattern() -> torch.Tensor:
    w = _real_weights()
    return ref.positional_qk_pattern(w["W_pos"], w["W_Q"], w["W_K"], b_Q=w["b_Q"])


def _scores_variant(*, prev_offset=-1, first_from=1, norm="half", ratio_from=1):
    def positional_head_scores(pattern):
        n = pattern.shape[-1]
        i = torch.arange(n)
        if prev_offset == -1:
            previous = pattern[..., i[1:], i[1:] - 1].mean(-1)
        elif prev_offset == 0:
            previous = pattern[..., i[1:], i[1:]].mean(-1)
        else:
            previous = pattern[..., i[:-1], i[:-1] + 1].mean(-1)
        first = pattern[..., first_from:, 0].mean(-1)
        dist = (i[:, None] - i[None, :]).clamp(min=0).float()
        mean_dist = (pattern * dist).sum(-1)[..., ratio_from:]
        q = i[ratio_from:].float()
        divisor = {"half": q / 2, "full": q, "none": torch.ones_like(q)}[norm]
        return torch.stack([previous, first, (mean_dist / divisor).mean(-1)], -1)

    return positional_head_scores


POSITIONAL_HEAD_SCORES = Exercise(
    chapter=CHAPTER,
    name="positional_head_scores",
    reference=ref.positional_head_scores,
    make_inputs=_scores_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=_real_positional_pattern()),),
    misconceptions=(
        misconception("diagonal instead of previous token", "Your previous-token score reads the DIAGONAL A[i, i] (attention "
           "to the current token). The previous token of query i is key i - 1: A[i, i - 1], the diagonal just "
           "below the main one (torch.diagonal(A, offset=-1, dim1=-2, dim2=-1)).",
           _scores_variant(prev_offset=0)),
        misconception("previous token above the diagonal", "Your previous-token score reads A[i, i + 1], the NEXT token, "
           "which the causal mask always sets to 0. The previous token is key i - 1: offset=-1.",
           _scores_variant(prev_offset=1)),
        misconception("query 0 in the first-token score", "Your first-token score includes query 0, whose only choice is "
           "key 0 (A[0, 0] = 1 always). Average A[i, 0] over queries i >= 1 only.",
           _scores_variant(first_from=0)),
        misconception("distance divided by i", "Your distance ratio divides by i; a uniform pattern over keys 0..i has mean "
           "distance i / 2, and the ratio compares with that, so divide by i / 2.",
           _scores_variant(norm="full")),
        misconception("distance not normalised", "You returned the raw mean attention distance. Divide each query's mean "
           "distance by i / 2 (a uniform pattern's) before averaging, so that 1 means 'no preference'.",
           _scores_variant(norm="none")),
    ),
)


def positional_head_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern) -> [head, 3]`` (previous-token, first-token, distance ratio); the real-model
    case is attn-only-1l's positional pattern with its query bias."""
    run_check(POSITIONAL_HEAD_SCORES, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 3. top tokens for a source


def _top_inputs(seed: int) -> dict:
    g = rng(seed)
    vocab, r = randint(g, 24, 40), randint(g, 3, 6)
    spread = torch.rand(vocab, 1, generator=g) * 2.8 + 0.2  # destinations with big and small queries
    offset = torch.randn(r, 1, generator=g) * 3  # a key direction every source shares
    allowed = torch.rand(vocab, generator=g) < 0.8
    allowed[torch.randperm(vocab, generator=g)[:2]] = False
    return dict(qk_A=torch.randn(vocab, r, generator=g) * spread, qk_B=torch.randn(r, vocab, generator=g) + offset,
                ov_A=torch.randn(vocab, r, generator=g), ov_B=torch.randn(r, vocab, generator=g),
                source=randint(g, 0, vocab - 1), k=randint(g, 3, 5), allowed=allowed)


@lru_cache(maxsize=1)
def _real_top_inputs() -> dict:
    from utils.data import load_corpus_tokens

    model, w = attn_only_1l(), _real_weights()
    head = 2
    counts = torch.bincount(load_corpus_tokens()["train"], minlength=model.cfg.d_vocab)
    allowed = counts >= 200
    allowed[0] = False
    qk = ref.full_qk_circuit(w["W_E"], w["W_Q"][head], w["W_K"][head])
    ov = ref.full_ov_circuit(w["W_E"], w["W_V"][head], w["W_O"][head], w["W_U"])
    return dict(qk_A=qk.A, qk_B=qk.B, ov_A=ov.A, ov_B=ov.B, source=model.to_single_token("try"), k=5,
                allowed=allowed)


def _as_ids(fn):
    """Accept lists, tuples or tensors of ids: compare (destinations, outs) as two LongTensors."""
    if not callable(fn) or getattr(fn, "as_ids", False):
        return fn

    def wrapped(**inputs):
        out = fn(**inputs)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailure("top_for_source must return a pair (destinations, outs).")
        try:
            return tuple(torch.as_tensor(x).reshape(-1).long() for x in out)
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailure("top_for_source must return two tensors (or lists) of token ids.") from None

    wrapped.as_ids = True
    return wrapped


def _top_variant(*, dest_axis="col", out_axis="row", centre=True, mask=True):
    def top_for_source(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
        if dest_axis == "col":
            dest = qk_A @ (qk_B[:, source] - (qk_B.mean(-1) if centre else 0))
        else:
            dest = qk_A[source] @ qk_B
        out = ov_A[source] @ ov_B if out_axis == "row" else ov_A @ ov_B[:, source]
        if mask:
            dest, out = dest.masked_fill(~allowed, float("-inf")), out.masked_fill(~allowed, float("-inf"))
        return dest.topk(k).indices, out.topk(k).indices

    return top_for_source


TOP_FOR_SOURCE = Exercise(
    chapter=CHAPTER,
    name="top_for_source",
    reference=_as_ids(ref.top_for_source),
    make_inputs=_top_inputs,
    rtol=0, atol=0,
    extra_inputs=(lambda: dict(_real_top_inputs()),),
    misconceptions=(
        misconception("QK row instead of column", "Wrong axis for the destinations: you ranked ROW `source` of the QK "
           "circuit, i.e. the keys that `source` attends to when IT is the query. The destinations that attend "
           "to `source` are COLUMN `source`: qk_A @ qk_B[:, source] (rows are queries, columns keys).",
           _as_ids(_top_variant(dest_axis="row"))),
        misconception("OV column instead of row", "Wrong axis for the outs: you ranked COLUMN `source` of the OV circuit, "
           "the source tokens that would raise the logit of `source`. The logits raised by attending to "
           "`source` are ROW `source`: ov_A[source] @ ov_B (rows are sources, columns outputs).",
           _as_ids(_top_variant(out_axis="col"))),
        misconception("both axes swapped", "Both axes are swapped: destinations come from COLUMN `source` of the QK circuit "
           "([dest, src]) and outs from ROW `source` of the OV circuit ([src, out]).",
           _as_ids(_top_variant(dest_axis="row", out_axis="col"))),
        misconception("destinations not centred", "Your destinations use the raw scores QK[d, source]. A destination whose "
           "query is large scores high on EVERY source, and the softmax ignores that shared part: subtract each "
           "destination's mean score over all sources, QK[d, source] - mean_s QK[d, s] (qk_B.mean(-1) is the "
           "mean key).",
           _as_ids(_top_variant(centre=False))),
        misconception("allowed ignored", "You returned tokens where `allowed` is False: set their scores to -inf (for both "
           "rankings) before taking the top k.",
           _as_ids(_top_variant(mask=False))),
    ),
)


def top_for_source(fn, cases: Cases = None) -> None:
    """Check ``fn(qk_A, qk_B, ov_A, ov_B, source, k, allowed) -> (destinations[k], outs[k])``, best
    first; the real-model case is head 2 of attn-only-1l with source "try"."""
    run_check(TOP_FOR_SOURCE, _as_ids(fn), cases)


# --------------------------------------------------------------------------- 4. behavioural confirmation


def _effect_inputs(seed: int) -> dict:
    g = rng(seed)
    b, n, vocab = randint(g, 2, 5), randint(g, 3, 6), randint(g, 7, 15)
    without = torch.randn(b, n, vocab, generator=g) * 2 + 1.5
    with_a = without + torch.randn(b, n, vocab, generator=g) + torch.randn(b, n, 1, generator=g)
    return dict(logits_with=with_a, logits_without=without, out_tokens=torch.randint(0, vocab, (b,), generator=g))


@lru_cache(maxsize=1)
def _real_effect_inputs() -> dict:
    model = attn_only_1l()
    a, b, c = (model.to_single_token(t) for t in (" try", "):", " except"))
    contexts = filler_contexts(n=3, length=15, seed=0)
    with_a, without = confirmation_prompts(a, b, contexts, neutral=model.to_single_token("age"))
    with torch.no_grad():
        return dict(logits_with=model(with_a), logits_without=model(without),
                    out_tokens=torch.full((len(contexts),), c, dtype=torch.long))


def _effect_variant(*, baseline=True, sign=1, position=-1, axis=-1, probs=False):
    def confirmation_effect(logits_with, logits_without, out_tokens):
        idx = out_tokens[:, None]
        lw, lo = logits_with.log_softmax(axis)[:, position], logits_without.log_softmax(axis)[:, position]
        rw, ro = logits_with[:, position], logits_without[:, position]
        if not baseline:
            return rw.gather(-1, idx)[:, 0], lw.gather(-1, idx)[:, 0]
        second = (lw.exp() - lo.exp()) if probs else (lw - lo)
        return sign * (rw - ro).gather(-1, idx)[:, 0], sign * second.gather(-1, idx)[:, 0]

    return confirmation_effect


CONFIRMATION_EFFECT = Exercise(
    chapter=CHAPTER,
    name="confirmation_effect",
    reference=ref.confirmation_effect,
    make_inputs=_effect_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(_real_effect_inputs()),),
    misconceptions=(
        misconception("no baseline subtracted", "You compared the logits without subtracting the baseline: you returned c's "
           "logit (and log-probability) with the source s present. c's logit at d depends on much more than s "
           "(d's own direct path, the rest of the context, the biases); subtract the same quantity from the run "
           "where s is replaced by the neutral token.",
           _effect_variant(baseline=False)),
        misconception("baseline subtracted the wrong way", "Your differences have the wrong sign: the gain is (with s) minus "
           "(without s), so that a positive number means s raised c.",
           _effect_variant(sign=-1)),
        misconception("first position instead of last", "You read position 0. The prediction that c should follow d is "
           "made at d, the LAST position of each prompt: logits[:, -1].",
           _effect_variant(position=0)),
        misconception("log_softmax over positions", "Your log_softmax ran over the POSITION axis. A next-token "
           "distribution is normalised over the vocabulary: log_softmax(dim=-1).",
           _effect_variant(axis=1)),
        misconception("probabilities instead of log-probabilities", "The second output is the gain in LOG-probability, "
           "log p(c | s) - log p(c | neutral); you returned the difference of the probabilities themselves.",
           _effect_variant(probs=True)),
    ),
)


def _pair(fn):
    """Insist on the (logit_gain, logprob_gain) pair before comparing values."""
    if not callable(fn):
        return fn

    def wrapped(**inputs):
        out = fn(**inputs)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailure("confirmation_effect must return a pair (logit_gain, logprob_gain), each of "
                               "shape [batch].")
        batch = (len(inputs["out_tokens"]),)
        for name, value in zip(("logit_gain", "logprob_gain"), out):
            if isinstance(value, torch.Tensor) and tuple(value.shape) != batch:
                raise CheckFailure(f"confirmation_effect: {name} has shape {tuple(value.shape)}; it should be "
                                   f"[batch] = {batch}, one number per prompt pair.")
        return tuple(out)

    return wrapped


def confirmation_effect(fn, cases: Cases = None) -> None:
    """Check ``fn(logits_with, logits_without, out_tokens) -> (logit gain[batch], log-prob gain[batch])``;
    the real-model case runs attn-only-1l on "... try ... ):" prompts."""
    run_check(CONFIRMATION_EFFECT, _pair(nan_as_inf(fn)), cases)


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

    model, w = attn_only_1l(), _real_weights()
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
        misconception("Pearson on the values", "You computed the Pearson correlation of the values themselves. Spearman's "
           "correlation is the Pearson correlation of their RANKS: replace each value by its position in sorted "
           "order first.",
           lambda x, y: _pearson(x, y)),
        misconception("argsort used as ranks", "x.argsort() is not the ranks: it lists the INDICES in sorted order. The rank "
           "of element i is where i lands in that order: the inverse permutation (argsort of the argsort, or "
           "ranks[order] = arange(n)).",
           lambda x, y: _pearson(x.argsort(stable=True).double(), y.argsort(stable=True).double())),
        misconception("ties not averaged", "Tied values must share one rank, the mean of the positions they occupy (e.g. "
           "two values tied for places 3 and 4 both get 3.5). You ranked ties in arbitrary order.",
           lambda x, y: _pearson(_ordinal(x), _ordinal(y))),
        misconception("ties given the lowest rank", "Your tied values all got the LOWEST of the positions they occupy (the "
           "'min' rule). Spearman's correlation gives each tie the MEAN of those positions (two values tied "
           "for places 3 and 4 both get 3.5), so that the ranks still sum to the same total.",
           lambda x, y: _pearson(_tied_rank(x, "min"), _tied_rank(y, "min"))),
        misconception("ties given the highest rank", "Your tied values all got the HIGHEST of the positions they occupy (the "
           "'max' rule). Spearman's correlation gives each tie the MEAN of those positions (3.5 for places 3 "
           "and 4).",
           lambda x, y: _pearson(_tied_rank(x, "max"), _tied_rank(y, "max"))),
        misconception("dense ranks", "You numbered the distinct values 0, 1, 2, ... (dense ranks, e.g. from torch.unique's "
           "inverse), so a tie costs no places. Spearman's ranks are positions in the sorted order, and a tie "
           "shares the MEAN of the positions it occupies.",
           lambda x, y: _pearson(_tied_rank(x, "dense"), _tied_rank(y, "dense"))),
        misconception("ranks not centred", "You took the cosine of the ranks. A correlation subtracts each rank vector's "
           "mean first, otherwise two unrelated rankings still come out strongly positive.",
           lambda x, y: float((ref.average_ranks(x) * ref.average_ranks(y)).sum()
                              / (ref.average_ranks(x).norm() * ref.average_ranks(y).norm()))),
        misconception("shortcut formula with ties", "You used 1 - 6 sum d^2 / (n (n^2 - 1)). That shortcut is exact only "
           "without ties; with tied values use the Pearson correlation of the average ranks.",
           _shortcut),
    ),
)


def spearman(fn, cases: Cases = None) -> None:
    """Check ``fn(x, y) -> float`` (Spearman's rank correlation, ties averaged); the real-model
    case correlates the direct path of " self" with its bigram counts (4096 values, many tied)."""
    run_check(SPEARMAN, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- conceptual questions
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


axis_question = question(CHAPTER, "axis_question")
baseline_question = question(CHAPTER, "baseline_question")
shortformer_question = question(CHAPTER, "shortformer_question")
