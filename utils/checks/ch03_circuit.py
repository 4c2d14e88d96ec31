"""Checks for chapter 03's circuit exercises (the induction circuit read from the weights).

Reference: ``utils.induction.circuit``. Four exercises, each checked on seeded random inputs and,
by default, on one case built from the bundled attn-only-2l:

``in_context_learning_score``     random per-token losses [batch, pos - 1] that fall with the
                                  position, with random inclusive token ranges (the first case's
                                  late range ends at the last token, as the real one does); the
                                  real case is attn-only-2l's per-token loss on 8 held-out
                                  sequences of 128 tokens, scored with the function's OWN defaults
                                  (early=(5, 15), late=(100, 127)). A float or a 0-d tensor passes.
``positional_attention_pattern``  random W_pos [n_ctx, d_model], W_Q, W_K [head, d_model, d_head]
                                  with d_model != d_head (and != d_head^2), so every wrong scale
                                  is told apart; the first case has n_ctx == d_head, so a missing
                                  transpose of the keys still runs and can be named. The real case
                                  is attn-only-2l's W_pos with layer 0's W_Q, W_K (head 5 is its
                                  previous-token head).
``k_composition_circuit``         random weights of one layer-1 head (W_Q, W_K) and one layer-0
                                  head (W_V, W_O); the first case is square (d_vocab == d_model ==
                                  d_head), so every transposition and wrong product order still
                                  runs and can be named, the other two rectangular. The real case is
                                  attn-only-2l's layer-1 head 5 reading layer-0 head 5. A
                                  FactoredMatrix, a 2-tuple of factors or a dense tensor passes;
                                  values are compared (for the 4096-token vocabulary on a fixed
                                  block of 48 rows x the same 48 columns, so the diagonal is in it),
                                  and a result of the wrong shape is told so in words.
``top_1_diagonal_accuracy``       random 20..40 square matrices, most rows leaning to their
                                  diagonal, with strong column offsets (so the row and column
                                  argmaxes disagree), dense in the first and third cases, a
                                  FactoredMatrix (inner size < n) in the second; the real case is
                                  the K-composition circuit above as a FactoredMatrix (about 0.075).

A mismatch is explained by the first catalogued mistake whose output the student's output
reproduces; each mistake differs from the truth on the first default case.

Why one module of ~490 lines: it is mostly the catalogue of over 30 named mistakes for four
exercises on the same weights of attn-only-2l (``_real_weights``), written out one per mistake.

This module imports nothing from ``utils.checks.ch03``, so ch03 can import these checks (the
bundled model, ``attn_only_2l``, comes from ``ch03_induction``).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from transformer_lens import FactoredMatrix

from utils import induction as ref
from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import Cases, CheckFailure, Exercise, default_case, run_check, square_case
from utils.checks.toolkit import misconception, nan_as_inf, randint, rng
from utils.tensors import is_factored

CHAPTER = "03"
EXERCISES = ["in_context_learning_score", "positional_attention_pattern", "k_composition_circuit",
             "top_1_diagonal_accuracy"]
PROBE = 48  # rows (and the same columns) of a large circuit compared: a fixed random subset
REAL_PREV_HEAD, REAL_INDUCTION_HEAD = 5, 5  # attn-only-2l: layer-0 head 5 -> layer-1 head 5
ICL_REAL_SEQS = 8


# --------------------------------------------------------------------------- shared helpers


def _dense(M) -> torch.Tensor:
    return M.AB if is_factored(M) else M


@lru_cache(maxsize=1)
def _real_weights() -> dict:
    model = attn_only_2l()
    return {name: getattr(model, name).detach() for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O")}


@lru_cache(maxsize=1)
def _real_losses() -> torch.Tensor:
    from utils.data.dataset import analysis_tokens

    tokens = analysis_tokens(seq_len=128, n_seqs=ICL_REAL_SEQS)
    with torch.no_grad():
        return ref.per_token_loss(attn_only_2l()(tokens), tokens).detach()


# --------------------------------------------------------------------------- 1. the in-context-learning score


def _icl_inputs(seed: int) -> dict:
    """Losses that fall with the position (plus noise), and inclusive token ranges inside them."""
    g = rng(seed)
    batch, n = randint(g, 2, 4), randint(g, 14, 30)  # n = pos - 1 columns
    e0 = randint(g, 1, 3)
    e1 = e0 + randint(g, 2, 4)
    l0 = e1 + randint(g, 2, 5)
    l1 = n if default_case("in_context_learning_score", seed) == 0 else randint(g, l0 + 2, n)
    trend = 5.0 - 3.0 * torch.arange(n) / n
    losses = trend + torch.rand(batch, n, generator=g) * 2.0
    return dict(losses=losses, early=(e0, e1), late=(l0, l1))


def _real_icl_inputs() -> dict:
    return dict(losses=_real_losses())  # the function's own defaults: early=(5, 15), late=(100, 127)


def _icl_variant(*, sign=1, shift=1, end=1, reduce="mean", per_sequence=False, ratio=False):
    """Columns token - shift; ``end`` 1 includes the last token, 0 leaves it out."""
    def in_context_learning_score(losses, early=ref.ICL_EARLY, late=ref.ICL_LATE):
        (e0, e1), (l0, l1) = early, late
        first, last = losses[:, e0 - shift:e1 - shift + end], losses[:, l0 - shift:l1 - shift + end]
        if per_sequence:
            return last.mean(-1) - first.mean(-1)
        a, b = (last.sum(), first.sum()) if reduce == "sum" else (last.mean(), first.mean())
        return float(a / b) if ratio else float(sign * (a - b))

    return in_context_learning_score


IN_CONTEXT_LEARNING_SCORE = Exercise(
    chapter=CHAPTER,
    name="in_context_learning_score",
    reference=ref.in_context_learning_score,
    make_inputs=_icl_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_icl_inputs,),
    misconceptions=(
        misconception("sign reversed (early minus late)", "Your sign is reversed: the score is the mean LATE loss "
           "minus the mean EARLY loss, negative when the model predicts a token better the more context precedes it. "
           "You computed early minus late.",
           _icl_variant(sign=-1)),
        misconception("token positions used as loss columns", "You used the token positions as columns of the losses "
           "directly. Column t - 1 of per_token_loss is the loss of the token at position t (the BOS at position "
           "0 is never predicted), so tokens early[0] .. early[1] are losses[:, early[0] - 1 : early[1]], and "
           "likewise for late.",
           _icl_variant(shift=0)),
        misconception("exclusive end of range", "Your ranges leave out their last token: both ranges are INCLUSIVE, so "
           "early[1] and late[1] count too. With the -1 shift, tokens early[0] .. early[1] are "
           "losses[:, early[0] - 1 : early[1]] (the slice stops just before column early[1], i.e. after the "
           "column of token early[1]).",
           _icl_variant(end=0)),
        misconception("ranges used as Python slices", "You used the ranges as Python slices, losses[:, "
           "early[0]:early[1]]. That misses the -1 shift (column t - 1 is the loss of token t) and the inclusive end "
           "at once, so it covers tokens early[0] + 1 .. early[1]. Take losses[:, early[0] - 1 : early[1]], and "
           "likewise for late.",
           _icl_variant(shift=0, end=0)),
        misconception("sums instead of means", "You subtracted SUMS of losses. Use the MEAN loss of each range (over "
           "the batch and the range's tokens): the two ranges have different lengths, and the score is in nats per "
           "token.",
           _icl_variant(reduce="sum")),
        misconception("one number per sequence", "You returned one score per sequence; return a single number (a "
           "float): the mean over the batch and the late tokens minus the mean over the batch and the early tokens.",
           _icl_variant(per_sequence=True)),
        misconception("ratio instead of difference", "You divided the late loss by the early loss. The "
           "in-context-learning score is a DIFFERENCE in nats: mean late loss MINUS mean early loss (negative when "
           "later tokens are predicted better).",
           _icl_variant(ratio=True)),
    ),
)


def in_context_learning_score(fn, cases: Cases = None) -> None:
    """Check ``fn(losses[batch, pos - 1], early=(5, 15), late=(100, 127)) -> float`` (a 0-d tensor is
    fine): late-minus-early mean loss over inclusive TOKEN-position ranges (column t - 1 is token t).
    The real-model case is attn-only-2l's per-token loss on held-out text, with the defaults."""
    run_check(IN_CONTEXT_LEARNING_SCORE, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2. attention from positions alone


def _positional_inputs(seed: int) -> dict:
    """n_ctx == d_head in the first case (a missing key transpose still runs); d_model is never
    d_head or d_head^2, so scaling by d_model, sqrt(d_model), d_head or 1 are all told apart."""
    g = rng(seed)
    h = randint(g, 2, 3)
    if square_case("positional_attention_pattern", seed):
        n = k = randint(g, 4, 6)
    else:
        n, k = randint(g, 5, 8), randint(g, 2, 4)
    d = randint(g, 5, 10)
    while d in (k, k * k):
        d += 1
    return dict(W_pos=torch.randn(n, d, generator=g) * 1.5, W_Q=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_K=torch.randn(h, d, k, generator=g) / math.sqrt(d))


def _real_positional_inputs() -> dict:
    w = _real_weights()
    return dict(W_pos=w["W_pos"], W_Q=w["W_Q"][0], W_K=w["W_K"][0])


def _positional_variant(*, scale="sqrt d_head", mask="-inf", dim=-1, swap=False, k_untransposed=False,
                        diagonal_masked=False, mask_after=False):
    def positional_attention_pattern(W_pos, W_Q, W_K):
        q, k = W_pos @ W_Q, W_pos @ W_K  # [head, pos, d_head]
        if swap:
            q, k = k, q
        scores = q @ k if k_untransposed else q @ k.transpose(-1, -2)
        d_model, d_head = W_Q.shape[-2:]
        scores = scores / {"sqrt d_head": math.sqrt(d_head), "none": 1.0, "d_head": d_head,
                           "sqrt d_model": math.sqrt(d_model), "d_model": d_model}[scale]
        n = W_pos.shape[0]
        future = torch.ones(n, n, dtype=torch.bool).triu(0 if diagonal_masked else 1)
        if mask is None:
            return scores.softmax(dim)
        if mask_after:
            return scores.softmax(-1).masked_fill(future, 0.0)
        return scores.masked_fill(future, float("-inf") if mask == "-inf" else 0.0).softmax(dim)

    return positional_attention_pattern


POSITIONAL_ATTENTION_PATTERN = Exercise(
    chapter=CHAPTER,
    name="positional_attention_pattern",
    reference=ref.positional_attention_pattern,
    make_inputs=_positional_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_positional_inputs,),
    misconceptions=(
        misconception("no causal mask", "You left out the causal mask: a query can only attend to keys at or before "
           "its own position. Set the scores of the future keys (key > query) to -inf before the softmax, e.g. "
           "scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float('-inf')).",
           _positional_variant(mask=None)),
        misconception("no 1/sqrt(d_head)", "You did not divide the scores by sqrt(d_head) before the softmax. The "
           "model does (attention scores are q . k / sqrt(d_head)), and without it the pattern is too sharp.",
           _positional_variant(scale="none")),
        misconception("scaled by 1/d_head", "You divided the scores by d_head; the attention scale is 1/sqrt(d_head) "
           "(math.sqrt(W_Q.shape[-1])).",
           _positional_variant(scale="d_head")),
        misconception("scaled by 1/sqrt(d_model)", "You scaled by 1/sqrt(d_model). The scores are dot products of "
           "d_head-dimensional queries and keys: divide by sqrt(d_head), the size of a query (W_Q.shape[-1]).",
           _positional_variant(scale="sqrt d_model")),
        misconception("scaled by 1/d_model", "You divided the scores by d_model. Divide by sqrt(d_head), the square "
           "root of the size of a query (W_Q.shape[-1]).",
           _positional_variant(scale="d_model")),
        misconception("softmax over queries", "Your softmax runs over the QUERY axis (dim -2). Each query's attention "
           "over the keys must sum to 1: take the softmax over the last axis, the keys (dim -1).",
           _positional_variant(dim=-2)),
        misconception("W_Q and W_K swapped", "Queries and keys are swapped: entry [h, q, k] is the score of query "
           "position q on key position k, (W_pos W_Q)(W_pos W_K)^T. You built (W_pos W_K)(W_pos W_Q)^T, the transpose "
           "of the scores, and masked that.",
           _positional_variant(swap=True)),
        misconception("keys not transposed", "The keys need a transpose: a score is the dot product over d_head, "
           "q @ k.transpose(-1, -2), not q @ k (which only runs because n_ctx == d_head here).",
           _positional_variant(k_untransposed=True)),
        misconception("masked with 0 instead of -inf", "You masked the future keys with 0 instead of -inf. A score of "
           "0 still gets weight exp(0) in the softmax; only -inf gives a future key exactly zero attention. Use "
           "masked_fill(future, float('-inf')) before the softmax.",
           _positional_variant(mask="0")),
        misconception("masked after the softmax", "You zeroed the future keys AFTER the softmax, so the rows no longer "
           "sum to 1 (the future keys took their share of the softmax before being dropped). Mask the scores with "
           "-inf BEFORE the softmax.",
           _positional_variant(mask_after=True)),
        misconception("diagonal masked too", "Your mask also hides the diagonal (key == query), but a position may "
           "attend to itself. Mask only the keys AFTER the query: torch.triu(..., diagonal=1). (With the diagonal "
           "masked, query 0 has no key left and its row is NaN.)",
           _positional_variant(diagonal_masked=True)),
    ),
)


def positional_attention_pattern(fn, cases: Cases = None) -> None:
    """Check ``fn(W_pos[n_ctx, d_model], W_Q[head, d_model, d_head], W_K[head, d_model, d_head]) ->
    pattern[head, query, key]``: softmax over keys of (W_pos W_Q)(W_pos W_K)^T / sqrt(d_head), causally
    masked. The real-model case is attn-only-2l's W_pos and layer-0 W_Q, W_K."""
    run_check(POSITIONAL_ATTENTION_PATTERN, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 3. the K-composition circuit


def _kcomp_inputs(seed: int) -> dict:
    """One layer-1 head (W_Q, W_K) and one layer-0 head (W_V, W_O): all sizes equal in the square
    cases, d_head < d_model < d_vocab otherwise; scaled so the products stay O(1)."""
    g = rng(seed)
    if square_case("k_composition_circuit", seed):
        vocab = d = k = randint(g, 4, 7)
    else:
        d = randint(g, 6, 10)
        k, vocab = randint(g, 2, d - 2), d + randint(g, 3, 9)
    return dict(W_E=torch.randn(vocab, d, generator=g), W_Q=torch.randn(d, k, generator=g) / math.sqrt(d),
                W_K=torch.randn(d, k, generator=g) / math.sqrt(d),
                W_V=torch.randn(d, k, generator=g) / math.sqrt(d), W_O=torch.randn(k, d, generator=g) / math.sqrt(k))


def _real_kcomp_inputs() -> dict:
    w = _real_weights()
    return dict(W_E=w["W_E"], W_Q=w["W_Q"][1, REAL_INDUCTION_HEAD], W_K=w["W_K"][1, REAL_INDUCTION_HEAD],
                W_V=w["W_V"][0, REAL_PREV_HEAD], W_O=w["W_O"][0, REAL_PREV_HEAD])


def _probe(n: int) -> torch.Tensor:
    if n <= 2 * PROBE:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(n))[:PROBE].sort().values


def _shape_message(shape: tuple, inputs: dict) -> str:
    vocab, d_model = inputs["W_E"].shape
    d_head = inputs["W_Q"].shape[-1]
    names = {vocab: "d_vocab", d_model: "d_model", d_head: "d_head"}
    spelled = ", ".join(names.get(n, str(n)) for n in shape)
    hint = ""
    if shape in ((vocab, d_head), (d_head, vocab)):
        hint = (" That is one side of the circuit on its own (e.g. the query side W_E W_Q): the circuit is the "
                "product of the query side [d_vocab, d_head] and the TRANSPOSED key side, "
                "FactoredMatrix(W_E @ W_Q, (W_E @ W_V @ W_O @ W_K).T).")
    elif shape == (d_head, d_head):
        hint = (" You multiplied the two sides the wrong way round (key side^T @ query side, [d_head, d_head]): "
                "the query side comes first, (W_E @ W_Q) @ (W_E @ W_V @ W_O @ W_K).T.")
    elif len(shape) != 2:
        hint = " Return ONE matrix (no head axis): the weights are those of one layer-1 head and one layer-0 head."
    return (f"k_composition_circuit: your circuit has shape {shape} ([{spelled}]), but it must be [d_vocab, "
            f"d_vocab] = {(vocab, vocab)}: rows the query token, columns the previous token of the key.{hint}")


def _circuit_block(value, inputs: dict) -> torch.Tensor:
    """A circuit (FactoredMatrix, 2-tuple of factors or dense tensor) as a dense comparable tensor:
    the whole matrix for a small vocabulary, a fixed block of rows x the same columns for a big one."""
    if is_factored(value) or (isinstance(value, (tuple, list)) and len(value) == 2
                               and all(isinstance(t, torch.Tensor) for t in value)):
        A, B = (value.A, value.B) if is_factored(value) else value
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise CheckFailure(f"k_composition_circuit: the two factors do not multiply: {tuple(A.shape)} and "
                               f"{tuple(B.shape)}.")
        shape = tuple(A.shape[:-1]) + tuple(B.shape[-1:])
    elif isinstance(value, torch.Tensor):
        A, B, shape = None, None, tuple(value.shape)
    else:
        raise CheckFailure(f"k_composition_circuit: return a FactoredMatrix (or a torch.Tensor) of shape "
                           f"[d_vocab, d_vocab], not a {type(value).__name__}.")
    vocab = inputs["W_E"].shape[0]
    if shape != (vocab, vocab):
        raise CheckFailure(_shape_message(shape, inputs))
    rows = _probe(vocab)
    if A is None:
        return value[rows][:, rows]
    return A[rows] @ B[:, rows]


def _circuit(fn):
    """Wrap a circuit function (student's, reference or variant) to return a comparable tensor."""
    if not callable(fn) or getattr(fn, "circuit_block", False):
        return fn

    def wrapped(**inputs):
        return _circuit_block(fn(**inputs), inputs)

    wrapped.circuit_block = True
    wrapped.__name__ = getattr(fn, "__name__", "k_composition_circuit")
    return wrapped


def _fm(query_side, key_side_t) -> FactoredMatrix:
    return FactoredMatrix(query_side, key_side_t)


K_COMPOSITION_CIRCUIT = Exercise(
    chapter=CHAPTER,
    name="k_composition_circuit",
    reference=_circuit(ref.k_composition_circuit),
    make_inputs=_kcomp_inputs,
    rtol=1e-4, atol=1e-4,  # the real circuit's entries reach ~30: float32 in another order differs by ~1e-5
    extra_inputs=(_real_kcomp_inputs,),
    misconceptions=(
        misconception("one side of the circuit only", "You returned one side of the circuit on its own (the query side "
           "W_E W_Q, [d_vocab, d_head]). The circuit is the product of the query side and the TRANSPOSED key "
           "side, [d_vocab, d_vocab]: FactoredMatrix(W_E @ W_Q, (W_E @ W_V @ W_O @ W_K).T).",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: W_E @ W_Q)),
        misconception("Q-composition instead", "You built Q-composition: layer 0's OV on the QUERY side, "
           "(W_E W_V W_O W_Q)(W_E W_K)^T. An induction head reads the previous-token head through its KEYS: the "
           "query side is the query token itself, W_E W_Q, and the key side is what layer 0 moved into the key's "
           "position, W_E W_V W_O W_K. Return FactoredMatrix(W_E @ W_Q, (W_E @ W_V @ W_O @ W_K).T).",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_V @ W_O @ W_Q, (W_E @ W_K).T))),
        misconception("previous-token head left out", "You left out the previous-token head: (W_E W_Q)(W_E W_K)^T is "
           "layer 1's direct QK circuit, how a query token scores a key token by itself. K-composition puts layer 0's "
           "OV on the key side, (W_E W_Q)(W_E W_V W_O W_K)^T, so that column b is a key whose PREVIOUS token is b.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_Q, (W_E @ W_K).T))),
        misconception("circuit transposed", "Your circuit is transposed: rows must be the QUERY token a and columns "
           "the previous token b of the key, (W_E W_Q)(W_E W_V W_O W_K)^T. You returned the key side as the rows.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_V @ W_O @ W_K, (W_E @ W_Q).T))),
        misconception("OV on both sides", "You put layer 0's OV on both sides. The query token reaches layer 1's W_Q "
           "directly (the embedding: W_E W_Q); only the KEY side reads what the previous-token head moved there, "
           "W_E W_V W_O W_K.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_V @ W_O @ W_Q, (W_E @ W_V @ W_O @ W_K).T))),
        misconception("W_O before W_V", "Your OV product is in the wrong order: W_O came before W_V. An embedding is "
           "first read by W_V (into d_head) and then written back to the residual stream by W_O, so the key side is "
           "W_E @ W_V @ W_O @ W_K (the paper's 'W_O W_V' is the same map written right to left).",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_Q, (W_E @ W_O @ W_V @ W_K).T))),
        misconception("key side not transposed", "The key side needs a transpose: an attention score is q . k, so the "
           "circuit is (W_E W_Q) @ (W_E W_V W_O W_K)^T, i.e. FactoredMatrix(query_side, key_side.T), not "
           "FactoredMatrix(query_side, key_side).",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_Q, W_E @ W_V @ W_O @ W_K))),
        misconception("W_E transposed", "You used W_E transposed. W_E is [d_vocab, d_model] and a token's embedding is "
           "its ROW, so both sides start from W_E: W_E @ W_Q and W_E @ W_V @ W_O @ W_K.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E.T @ W_Q, (W_E.T @ W_V @ W_O @ W_K).T))),
        misconception("paper formula typed literally", "You typed the paper's W_E^T W_Q^T W_K W_OV W_E with the code's "
           "matrices. The paper multiplies column vectors from right to left and its matrices are the transposes "
           "of ours; with row vectors the same circuit is (W_E @ W_Q) @ (W_E @ W_V @ W_O @ W_K).T.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: W_E.T @ W_Q.T @ W_K @ (W_V @ W_O) @ W_E)),
        misconception("scaled by 1/sqrt(d_head)", "The K-composition circuit is the bilinear form itself, without "
           "1/sqrt(d_head): that scale belongs to the attention scores and changes no ranking.",
           _circuit(lambda W_E, W_Q, W_K, W_V, W_O: _fm(W_E @ W_Q / math.sqrt(W_Q.shape[-1]),
                                                        (W_E @ W_V @ W_O @ W_K).T))),
    ),
)


def k_composition_circuit(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_Q, W_K, W_V, W_O) -> [d_vocab, d_vocab]`` = (W_E W_Q)(W_E W_V W_O W_K)^T, for
    one layer-1 head's W_Q, W_K [d_model, d_head] and one layer-0 head's W_V [d_model, d_head], W_O
    [d_head, d_model]. A FactoredMatrix or a dense tensor passes; the real-model case is attn-only-2l's
    layer-1 head 5 reading layer-0 head 5 (compared on a fixed block of rows and columns)."""
    run_check(K_COMPOSITION_CIRCUIT, nan_as_inf(_circuit(fn)), cases)


# --------------------------------------------------------------------------- 4. top-1 accuracy on the diagonal


def _top1_inputs(seed: int) -> dict:
    """Square matrices whose rows lean towards their diagonal for about 60% of the rows, plus strong
    column offsets: a column offset moves the row argmax (away from the diagonal) but not the column
    one, so the two axes disagree by a wide margin. Dense in default cases 0 and 2; in case 1 a
    FactoredMatrix of inner size n - 2 .. n - 5 (its A A^T part is near the identity)."""
    g = rng(seed)
    n = randint(g, 20, 40)
    case = default_case("top_1_diagonal_accuracy", seed)
    factored = case == 1 if case is not None else seed % 2 == 1
    boost = (torch.rand(n, generator=g) < 0.6) * (1.5 + torch.rand(n, generator=g) * 2)
    row_off = torch.randn(n, 1, generator=g) * 0.3
    col_off = torch.randn(1, n, generator=g) * (2.0 if factored else 1.5)
    if factored:
        r = n - randint(g, 2, 5)
        A = torch.randn(n, r, generator=g)
        B = 2.0 * A.T * boost / r + torch.randn(r, n, generator=g) * 0.3
        A = torch.cat([A, row_off, torch.ones(n, 1)], dim=1)  # A B = A0 B0 + row_off[i] + col_off[j]
        B = torch.cat([B, torch.ones(1, n), col_off], dim=0)
        return dict(M=FactoredMatrix(A, B))
    return dict(M=torch.randn(n, n, generator=g) + torch.diag(boost) + row_off + col_off)


def _real_top1_inputs() -> dict:
    return dict(M=ref.k_composition_circuit(**_real_kcomp_inputs()))  # a fresh FactoredMatrix each time


def _top1_variant(*, dim=-1, fraction=True, argmin=False, mean=False, per_row=False):
    def top_1_diagonal_accuracy(M):
        dense = _dense(M)
        n = dense.shape[0]
        if mean:
            hits = torch.diagonal(dense) > dense.mean(-1)
        else:
            best = dense.argmin(dim) if argmin else dense.argmax(dim)
            hits = best == torch.arange(n)
        if per_row:
            return hits.float()
        count = int(hits.sum())
        return count / n if fraction else count

    return top_1_diagonal_accuracy


TOP_1_DIAGONAL_ACCURACY = Exercise(
    chapter=CHAPTER,
    name="top_1_diagonal_accuracy",
    reference=ref.top_1_diagonal_accuracy,
    make_inputs=_top1_inputs,
    rtol=0, atol=1e-3,  # 1e-3: near-ties may flip a few of the real circuit's 4096 rows
    extra_inputs=(_real_top1_inputs,),
    misconceptions=(
        misconception("argmax over the wrong axis", "You took the argmax over the wrong axis (dim 0: the largest entry "
           "of each COLUMN). Row i is what token i prefers: count the rows with M[i].argmax() == i, i.e. "
           "argmax(dim=-1).",
           _top1_variant(dim=0)),
        misconception("count instead of fraction", "You returned the NUMBER of rows whose largest entry is on the "
           "diagonal; return the fraction (divide by the number of rows), so matrices of different sizes compare.",
           _top1_variant(fraction=False)),
        misconception("argmin instead of argmax", "You used argmin: the question is whether the diagonal entry is the "
           "row's LARGEST entry, M[i].argmax() == i.",
           _top1_variant(argmin=True)),
        misconception("diagonal above the row mean", "You counted the rows whose diagonal entry is above the row's "
           "MEAN. Top-1 means the diagonal entry is the row's MAXIMUM: M[i].argmax() == i.",
           _top1_variant(mean=True)),
        misconception("one hit per row", "You returned one hit per row; return a single number, the fraction of rows "
           "that hit (the mean of those hits, as a float).",
           _top1_variant(per_row=True)),
    ),
)


def top_1_diagonal_accuracy(fn, cases: Cases = None) -> None:
    """Check ``fn(M) -> float`` (a 0-d tensor is fine): the fraction of rows whose argmax is the diagonal
    entry, for M a square tensor or a FactoredMatrix. The real-model case is attn-only-2l's
    K-composition circuit (layer-1 head 5 through layer-0 head 5), a 4096 x 4096 FactoredMatrix."""
    run_check(TOP_1_DIAGONAL_ACCURACY, nan_as_inf(fn), cases)
