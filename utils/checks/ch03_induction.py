"""Checks for chapter 03, section 2: induction heads (per-token loss, induction and previous-token
scores, the loss drop, head ablation). References: ``utils.induction`` (``copying``; the two head
scores are written in ``utils.models.evaluation``). The notebook reaches them through ``utils.checks.ch03``.

Every check runs the student's function on seeded random inputs and on the bundled attn-only-2l
(``attn_only_2l()``, shared by every chapter-03 check module) on ``REAL_SEQ_LEN`` repeated random
tokens: its logits, its first and last layer's attention patterns and its last layer's ``hook_z``.
A mismatch is explained by the first catalogued mistake whose output the student's output
reproduces.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils import induction as ref
from utils.checks.ch00 import PER_TOKEN_LOSS as _CH00_PER_TOKEN_LOSS
from utils.checks.core import Cases, CheckFailure, Exercise, default_case, run_check
from utils.checks.toolkit import misconception, nan_as_inf, randint, rng
from utils.tensors import causal_mask

CHAPTER = "03"
EXERCISES = ["per_token_loss", "induction_scores", "previous_token_scores", "induction_loss_drop", "ablate_heads"]
REAL_SEQ_LEN = 20  # repeated random tokens of the real-model cases: BOS + 2 x 20


@lru_cache(maxsize=1)
def attn_only_2l():
    """The bundled attn-only-2l (tests/test_data.py gates it), loaded once for chapter 03's checks."""
    from utils.models import load_model

    return load_model("attn-only-2l", device="cpu")


@lru_cache(maxsize=1)
def repeated_run() -> dict:
    model = attn_only_2l()
    tokens = ref.repeated_random_tokens(model, REAL_SEQ_LEN, batch=2, seed=0)
    keep = lambda n: n.endswith("hook_pattern") or n.endswith("hook_z")  # noqa: E731
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=keep)
    last = model.cfg.n_layers - 1
    return dict(tokens=tokens, logits=logits, first_pattern=cache["blocks.0.attn.hook_pattern"],
                last_pattern=cache[f"blocks.{last}.attn.hook_pattern"], z=cache[f"blocks.{last}.attn.hook_z"])


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
    extra_inputs=(lambda: dict(logits=repeated_run()["logits"], tokens=repeated_run()["tokens"]),),
    misconceptions=(
        misconception("softmax twice", "You normalised twice: the probabilities (softmax) went into a function that "
           "normalises again (F.cross_entropy or log_softmax expect raw LOGITS). The result is squashed towards "
           "log(d_vocab). Apply log_softmax once, to the logits.",
           lambda logits, tokens: _ce(logits.softmax(-1).log_softmax(-1), tokens)),
        misconception("log of log-probabilities", "You took the log of log-probabilities "
           "(torch.log(log_softmax(...))): log-probabilities are already logs, and negative, so their log is NaN. The "
           "loss is -log_softmax(logits) at the next token.",
           lambda logits, tokens: _ce(logits.log_softmax(-1).log(), tokens)),
        misconception("sliced alike ([:, 1:])", "You dropped the first position of BOTH logits and tokens, so position "
           "i's logits are still scored against token i itself. The logits at i predict token i + 1: "
           "logits[:, :-1] against tokens[:, 1:].",
           lambda logits, tokens: -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]),
        misconception("sliced alike ([:, :-1])", "You dropped the last position of BOTH logits and tokens, so position "
           "i's logits are still scored against token i itself. The logits at i predict token i + 1: "
           "logits[:, :-1] against tokens[:, 1:].",
           lambda logits, tokens: -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]),
        *_CH00_PER_TOKEN_LOSS.misconceptions,
        misconception("averaged over the batch", "You averaged over the batch. Return one loss per (sequence, "
           "position), shape [batch, pos - 1]: the halves of a repeated sequence are compared position by position "
           "later.",
           lambda logits, tokens: ref.per_token_loss(logits, tokens).mean(0)),
    ),
)


def per_token_loss(fn, cases: Cases = None) -> None:
    """Check ``fn(logits[batch, pos, d_vocab], tokens[batch, pos]) -> loss[batch, pos - 1]``; the
    real-model case is attn-only-2l on repeated random tokens."""
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
    reference=ref.induction_scores,
    make_inputs=_induction_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=repeated_run()["last_pattern"], seq_len=REAL_SEQ_LEN),),
    misconceptions=(
        misconception("offset seq_len (duplicate-token stripe)", "You measured attention from each second-half token "
           "to the PREVIOUS OCCURRENCE OF ITSELF, key q - seq_len: that is a duplicate-token head. An induction head "
           "attends to the token AFTER the previous occurrence, key q - seq_len + 1 (diagonal offset "
           "-(seq_len - 1)), because that is the token it predicts comes next.",
           lambda pattern, seq_len: _stripe(pattern, -seq_len, seq_len).mean((0, -1))),
        misconception("stripe above the diagonal", "Your diagonal offset has the wrong sign: keys AFTER the query are "
           "masked (their attention is always 0). The induction stripe lies below the main diagonal: "
           "pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).",
           lambda pattern, seq_len: _stripe(pattern, seq_len - 1, seq_len).mean((0, -1))),
        misconception("first-half queries included", "You averaged the whole stripe, including queries in the FIRST "
           "half, where nothing has repeated yet. Only the seq_len second-half queries (the last seq_len entries of "
           "the stripe) can do induction.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1)).mean((0, -1))),
        misconception("BOS forgotten (queries one too early)", "Your queries are one position too early: with the BOS "
           "at position 0 the second half is positions seq_len + 1 .. 2 seq_len (the LAST seq_len entries of the "
           "stripe); you used seq_len .. 2 seq_len - 1.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len, drop_last=1).mean((0, -1))),
        misconception("averaged over heads", "You averaged over the HEAD axis. pattern is [batch, head, query, key]: "
           "average over the batch and the queries, one score per head.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len).mean((1, -1))),
        misconception("not averaged over the batch", "You returned one score per sequence and head; average over the "
           "batch too: one score per head.",
           lambda pattern, seq_len: _stripe(pattern, -(seq_len - 1), seq_len).mean(-1)),
    ),
)


def induction_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern[batch, head, 2 n + 1, 2 n + 1], seq_len=n) -> score[head]``; the real-model
    case is attn-only-2l's last-layer pattern on repeated random tokens."""
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
    reference=ref.previous_token_scores,
    make_inputs=_previous_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=repeated_run()["first_pattern"]),),
    misconceptions=(
        misconception("main diagonal", "You read the MAIN diagonal A[q, q], attention to the current token. The "
           "previous token is key q - 1: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).",
           lambda pattern: _stripe(pattern, 0).mean((0, -1))),
        misconception("above the diagonal", "You read A[q, q + 1], the NEXT token, which the causal mask always sets "
           "to 0. The previous token is key q - 1: offset=-1.",
           lambda pattern: _stripe(pattern, 1).mean((0, -1))),
        misconception("query 0 included", "You included query 0, which has no previous token: pattern[..., i, i - 1] "
           "with i = 0 reads key -1, i.e. the LAST key (always 0 under the causal mask), which drags the mean down. "
           "Average over queries 1 .. n - 1 only (the diagonal at offset -1 has exactly those).",
           _previous_with_query_0),
        misconception("averaged over heads", "You averaged over the HEAD axis. pattern is [batch, head, query, key]: "
           "average over the batch and the queries, one score per head.",
           lambda pattern: _stripe(pattern, -1).mean((1, -1))),
        misconception("not averaged over the batch", "You returned one score per sequence and head; average over the "
           "batch too: one score per head.",
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
    run = repeated_run()
    return dict(losses=ref.per_token_loss(run["logits"], run["tokens"]), seq_len=REAL_SEQ_LEN)


INDUCTION_LOSS_DROP = Exercise(
    chapter=CHAPTER,
    name="induction_loss_drop",
    reference=ref.induction_loss_drop,
    make_inputs=_drop_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_drop_inputs,),
    misconceptions=(
        misconception("second half minus first", "Your sign is reversed: the drop is FIRST-half loss minus SECOND-half "
           "loss, positive when the model predicts the repeat better.",
           lambda losses, seq_len: float(losses[:, seq_len + 1:].mean() - losses[:, 1:seq_len].mean())),
        misconception("unpredictable entries included", "You split the losses at seq_len and kept everything. Entry 0 "
           "(r_1 predicted from BOS) and entry seq_len (r_1 of the repeat, predicted from r_n, which has no "
           "earlier occurrence) cannot be predicted in either half; both halves must predict r_2 .. r_n: entries "
           "1 .. seq_len - 1 and seq_len + 1 .. 2 seq_len - 1.",
           lambda losses, seq_len: float(losses[:, :seq_len].mean() - losses[:, seq_len:].mean())),
        misconception("losses indexed as if unshifted", "You indexed the losses as if entry i were the loss of token "
           "i. Entry i is the loss of PREDICTING token i + 1 (made at position i): r_2 .. r_n of the first copy are "
           "entries 1 .. seq_len - 1, and of the second copy entries seq_len + 1 .. 2 seq_len - 1.",
           lambda losses, seq_len: float(losses[:, 2:seq_len + 1].mean() - losses[:, seq_len + 2:].mean())),
        misconception("sums instead of means", "You subtracted SUMS of losses. Use the mean loss of each half (in nats "
           "per token), so the drop does not grow with the batch or the sequence length.",
           lambda losses, seq_len: float(losses[:, 1:seq_len].sum() - losses[:, seq_len + 1:].sum())),
        misconception("one number per sequence", "You returned one drop per sequence; return a single number, the mean "
           "over the batch (a float).",
           lambda losses, seq_len: losses[:, 1:seq_len].mean(-1) - losses[:, seq_len + 1:].mean(-1)),
    ),
)


def induction_loss_drop(fn, cases: Cases = None) -> None:
    """Check ``fn(losses[batch, 2 n], seq_len=n) -> float``; the real-model case is attn-only-2l's
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
    return dict(z=repeated_run()["z"], heads=[1, 2], mean=True)


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
        misconception("positions ablated instead of heads", "You indexed the wrong axis: z[:, heads] is POSITIONS. "
           "hook_z is [batch, pos, head, d_head], so a head is z[:, :, h].",
           _ablate_variant(axis=1)),
        misconception("every other head ablated", "You ablated every head EXCEPT the listed ones; ablate exactly the "
           "heads in `heads` and leave the others alone.",
           _ablate_variant(complement=True)),
        misconception("mean flag ignored", "With mean=True the heads are not zeroed but replaced by their mean z (over "
           "batch and positions), so they keep adding their average output and only the information they move is "
           "removed. You zeroed them anyway.",
           _ablate_variant(ignore_mean=True)),
        misconception("mean over the batch only", "Your mean is over the batch only (one mean per position). "
           "Mean-ablation here replaces each ablated head's z by its mean over the batch AND the positions: "
           "z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(0,))),
        misconception("mean over the positions only", "Your mean is over the positions only (one mean per sequence). "
           "Mean-ablation here replaces each ablated head's z by its mean over the batch AND the positions: "
           "z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(1,))),
        misconception("mean over the heads too", "Your mean also runs over the heads, mixing them. Each ablated head "
           "gets ITS OWN mean z over the batch and positions: z[:, :, h].mean(dim=(0, 1)).",
           _ablate_variant(mean_dims=(0, 1, 2))),
        misconception("mean of everything", "You replaced the heads by one number, the mean of the whole z. Each "
           "ablated head gets its own mean VECTOR (d_head numbers) over the batch and positions.",
           _ablate_variant(mean_dims=None)),
    ),
)


def ablate_heads(fn, cases: Cases = None) -> None:
    """Check ``fn(z[batch, pos, head, d_head], heads: list[int], mean: bool) -> z``; the real-model
    case is attn-only-2l's last-layer ``hook_z`` on repeated random tokens, mean-ablated."""
    run_check(ABLATE_HEADS, _returns_z(nan_as_inf(fn)), cases)
