"""Checks for chapter 02, sections 3 and 4: a source token's top destinations and outs (the
skip-trigrams one head encodes) and their behavioural confirmation on the model.

The reference answers are utils/circuits/exercises.py; how the cases are chosen is in
``utils.checks.ch02``'s docstring. The notebook reaches these checks through ``utils.checks.ch02``.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.checks.ch02_full_circuits import real_weights
from utils.checks.core import Cases, CheckFailure, Exercise, run_check
from utils.checks.toolkit import (
    attn_only_1l,
    describe_parts,
    misconception,
    nan_as_inf,
    randint,
    rng,
    run_described,
)
from utils.circuits import exercises as ref
from utils.circuits.experiments import confirmation_prompts, filler_contexts

CHAPTER = "02"


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

    model, w = attn_only_1l(), real_weights()
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
        misconception("OV column instead of row", "Wrong axis for the outs: you ranked COLUMN `source` of the OV "
           "circuit, the source tokens that would raise the logit of `source`. The logits raised by attending to "
           "`source` are ROW `source`: ov_A[source] @ ov_B (rows are sources, columns outputs).",
           _as_ids(_top_variant(out_axis="col"))),
        misconception("both axes swapped", "Both axes are swapped: destinations come from COLUMN `source` of the QK "
           "circuit ([dest, src]) and outs from ROW `source` of the OV circuit ([src, out]).",
           _as_ids(_top_variant(dest_axis="row", out_axis="col"))),
        misconception("destinations not centred", "Your destinations use the raw scores QK[d, source]. A destination "
           "whose query is large scores high on EVERY source, and the softmax ignores that shared part: subtract each "
           "destination's mean score over all sources, QK[d, source] - mean_s QK[d, s] (qk_B.mean(-1) is the "
           "mean key).",
           _as_ids(_top_variant(centre=False))),
        misconception("allowed ignored", "You returned tokens where `allowed` is False: set their scores to -inf (for "
           "both rankings) before taking the top k.",
           _as_ids(_top_variant(mask=False))),
    ),
)


def top_for_source(fn, cases: Cases = None) -> None:
    """Check ``fn(qk_A, qk_B, ov_A, ov_B, source, k, allowed) -> (destinations[k], outs[k])``, best
    first; the real-model case is head 2 of attn-only-1l with source "try"."""
    run_check(TOP_FOR_SOURCE, _as_ids(fn), cases)


# --------------------------------------------------------------------------- 3b. a head's best skip-trigrams (hard)


def head_trigram_inputs(seed: int) -> dict:
    """One random head: embeddings sharing a common direction (so centring the keys matters),
    queries of very different sizes (so centring per destination matters), a mask that drops a
    few tokens, and scores of order one (so the attention factor is neither 0 nor 1)."""
    g = rng(seed)
    vocab, d, k = randint(g, 24, 40), randint(g, 6, 10), randint(g, 3, 5)
    W_E = torch.randn(vocab, d, generator=g) + torch.randn(1, d, generator=g) * 1.5
    W_E = W_E * (torch.rand(vocab, 1, generator=g) * 1.5 + 0.5)
    allowed = torch.rand(vocab, generator=g) < 0.8
    allowed[torch.randperm(vocab, generator=g)[:3]] = False
    W_U = torch.randn(d, vocab, generator=g) / d ** 0.5
    W_E[~allowed] *= 2.5  # like rare tokens, the excluded ones have large, noisy weights: they would top
    W_U[:, ~allowed] *= 2.5  # an unmasked ranking
    return dict(W_E=W_E, W_Q=torch.randn(d, k, generator=g) / d ** 0.5,
                W_K=torch.randn(d, k, generator=g) / d ** 0.5, W_V=torch.randn(d, k, generator=g) / d ** 0.5,
                W_O=torch.randn(k, d, generator=g) / k ** 0.5, W_U=W_U,
                allowed=allowed, n=randint(g, 3, 6), context_len=(4, 8, 16)[randint(g, 0, 2)])


@lru_cache(maxsize=1)
def real_head_trigram_inputs() -> dict:
    w, allowed = real_weights(), _real_top_inputs()["allowed"]
    head = 2
    return dict(W_E=w["W_E"], W_Q=w["W_Q"][head], W_K=w["W_K"][head], W_V=w["W_V"][head], W_O=w["W_O"][head],
                W_U=w["W_U"], allowed=allowed, n=10, context_len=16)


def _trigram_variant(*, centre_qk="vocab", centre_ov="vocab", scale=True, qk_axis="col", score="attention",
                     mask=True):
    def head_skip_trigrams(W_E, W_Q, W_K, W_V, W_O, W_U, allowed, n, context_len):
        d_vocab = W_E.shape[0]
        keep = torch.nonzero(allowed)[:, 0] if mask else torch.arange(d_vocab)
        mean_from = {"vocab": W_E, "allowed": W_E[keep], None: None}
        q, k = W_E @ W_Q, W_E @ W_K
        if centre_qk is not None:
            k = k - mean_from[centre_qk].mean(0) @ W_K
        qk = (q @ k.T) / (W_Q.shape[-1] ** 0.5 if scale else 1.0)  # [query, key] over the whole vocabulary
        if qk_axis == "row":
            qk = qk.T
        qk = qk[keep][:, keep]
        ov = W_E[keep] @ W_V @ W_O @ W_U
        if centre_ov == "vocab":
            ov = ov - ov.mean(-1, keepdim=True)
        elif centre_ov == "allowed":
            ov = ov - ov[:, keep].mean(-1, keepdim=True)
        dest_score, dest = qk.max(dim=0)
        out_score, out = ov[:, keep].max(dim=1)
        if score == "attention":
            total = out_score * torch.sigmoid(dest_score - torch.log(torch.tensor(float(context_len))))
        elif score == "no context":
            total = out_score * torch.sigmoid(dest_score)
        else:
            total = out_score
        best = total.argsort(descending=True, stable=True)[:n]
        return torch.stack([keep[best], keep[dest[best]], keep[out[best]]], dim=1), total[best]

    return head_skip_trigrams


def _as_trigrams(fn):
    """Compare (triples as a LongTensor [n, 3], scores as a float tensor [n])."""
    if not callable(fn) or getattr(fn, "as_trigrams", False):
        return fn

    def wrapped(**inputs):
        out = fn(**inputs)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailure("head_skip_trigrams must return a pair (triples, scores).")
        try:
            triples, scores = torch.as_tensor(out[0]).long(), torch.as_tensor(out[1]).float()
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailure("head_skip_trigrams must return two tensors: triples [n, 3] of token ids and "
                               "scores [n].") from None
        return triples, scores

    wrapped.as_trigrams = True
    return wrapped


HEAD_TRIGRAMS = Exercise(
    chapter=CHAPTER,
    name="head_skip_trigrams",
    reference=ref.head_skip_trigrams,
    make_inputs=head_trigram_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(real_head_trigram_inputs()),),
    misconceptions=(
        misconception("QK row instead of column", "Your destination for s is the key that s attends to when s is "
           "the QUERY (a row of the QK circuit). The destinations that attend to s are column s: QK[d, s] with d "
           "the query; take the maximum over d of each column. (Hint 2 has the formula.)",
           _trigram_variant(qk_axis="row")),
        misconception("destinations not centred", "Your destination scores are the raw QK[d, s]. A destination with a "
           "large query scores high on every source, and the softmax only sees how s compares with the other keys: "
           "subtract the average source's score, i.e. use keys (W_E[s] - W_E.mean(0)) @ W_K. (Hint 2.)",
           _trigram_variant(centre_qk=None)),
        misconception("centred over allowed tokens only", "You centred with the mean over the ALLOWED tokens only. "
           "The average source (and the average out token) is the mean over the whole vocabulary, as in "
           "top_for_source: restrict the candidates to `allowed`, not the means. (Hint 2.)",
           _trigram_variant(centre_qk="allowed", centre_ov="allowed")),
        misconception("no 1/sqrt(d_head)", "Your destination scores are not divided by sqrt(d_head); the attention "
           "scores the softmax sees are q.k / sqrt(d_head), so the attention factor needs them too. (Hint 2.)",
           _trigram_variant(scale=False)),
        misconception("outs not centred", "Your out scores are the raw OV[s, c]. A uniform shift of every logit "
           "changes no prediction: subtract the row's mean over the whole vocabulary, OV[s, c] - mean_c' OV[s, c']. "
           "(Hint 2.)",
           _trigram_variant(centre_ov=None)),
        misconception("attention factor without log(context_len)", "Your attention factor is sigmoid(q) without "
           "the context: among context_len tokens, s wins attention with odds about exp(q) / context_len, i.e. "
           "sigmoid(q - log(context_len)). (Hint 2.)",
           _trigram_variant(score="no context")),
        misconception("ranked by the OV score alone", "You ranked the sources by the out token's boost alone. A "
           "skip-trigram needs both halves: the boost counts only as much as d attends to s, so multiply it by "
           "sigmoid(q - log(context_len)). (Hint 2.)",
           _trigram_variant(score="ov")),
        misconception("allowed ignored", "Your triples contain tokens whose `allowed` entry is False: sources, "
           "destinations and outs all come from the allowed tokens. (Hint 3 shows where the mask goes.)",
           _trigram_variant(mask=False)),
    ),
)


def head_skip_trigrams(fn, cases: Cases = None) -> None:
    """Check ``fn(W_E, W_Q, W_K, W_V, W_O, W_U, allowed, n, context_len) -> (triples[n, 3], scores[n])``
    for one head, best first; the real-model case is head 2 of attn-only-1l over its frequent tokens."""
    run_described(HEAD_TRIGRAMS, _as_trigrams(fn), cases,
                  describe_parts(("triples", "scores"), HEAD_TRIGRAMS.rtol, HEAD_TRIGRAMS.atol))


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
        misconception("no baseline subtracted", "You compared the logits without subtracting the baseline: you "
           "returned c's logit (and log-probability) with the source s present. c's logit at d depends on much more "
           "than s (d's own direct path, the rest of the context, the biases); subtract the same quantity from the run "
           "where s is replaced by the neutral token.",
           _effect_variant(baseline=False)),
        misconception("baseline subtracted the wrong way", "Your differences have the wrong sign: the gain is (with s) "
           "minus (without s), so that a positive number means s raised c.",
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
