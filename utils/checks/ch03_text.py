"""Check for chapter 03's hard exercise on natural text: ``text_induction_scores`` (reference in
``utils.induction.text``), the induction score of any tokens.

The student's function runs on seeded random causal patterns over random tokens from a small
vocabulary (so tokens repeat, some several times, in rows with different numbers of repeats) and
on attn-only-2l's layer-1 pattern on 4 rows of held-out text. A mismatch is explained by the first
catalogued mistake whose output the student's output reproduces.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import Cases, Exercise, run_check
from utils.checks.toolkit import misconception, nan_as_inf, randint, random_pattern, rng
from utils.induction import text as ref

CHAPTER = "03"
EXERCISES = ["text_induction_scores"]


def _inputs(seed: int) -> dict:
    """BOS (0) then tokens from 1 .. vocab - 1 with a small vocab; rows differ in how often tokens
    repeat (the last row draws from a larger vocabulary)."""
    g = rng(seed)
    batch, heads, pos = randint(g, 2, 3), randint(g, 2, 4), randint(g, 10, 16)
    rows = []
    for b in range(batch):
        vocab = randint(g, 4, 6) if b < batch - 1 else randint(g, 9, 14)
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), torch.randint(1, vocab, (pos - 1,), generator=g)]))
    return dict(pattern=random_pattern(g, batch, heads, pos), tokens=torch.stack(rows))


@lru_cache(maxsize=1)
def _real_inputs() -> dict:
    from utils.data.dataset import analysis_tokens

    tokens = analysis_tokens(seq_len=128, n_seqs=4)
    with torch.no_grad():
        _, cache = attn_only_2l().run_with_cache(tokens, names_filter=lambda n: n == "blocks.1.attn.hook_pattern")
    return dict(pattern=cache["blocks.1.attn.hook_pattern"], tokens=tokens)


def _variant(*, shift=1, per_query="sum", pool="queries", every_query=False):
    """text_induction_scores with one thing changed. shift: the key scored is the earlier copy + shift
    (1 is right); per_query: "sum" over the earlier copies (right) or their "mean"; pool: "queries"
    (right) or "rows" (a mean per row, then over rows); every_query: divide by every query."""
    def text_induction_scores(pattern, tokens):
        n = tokens.shape[1]
        earlier = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)
        keys = torch.zeros_like(earlier)
        if shift >= 0:
            keys[:, :, shift:] = earlier[:, :, :n - shift]
        else:
            keys[:, :, :shift] = earlier[:, :, -shift:]
        valid = earlier.any(-1)
        mass = (pattern * keys[:, None].float()).sum(-1)  # [batch, head, q]
        if per_query == "mean":
            mass = mass / earlier.sum(-1).clamp(min=1)[:, None]
        mass = mass * valid[:, None]
        if every_query:
            return mass.mean(dim=(0, 2))
        if pool == "rows":
            return (mass.sum(-1) / valid.sum(-1).clamp(min=1)[:, None]).mean(0)
        return mass.sum(dim=(0, 2)) / valid.sum()

    return text_induction_scores


TEXT_INDUCTION_SCORES = Exercise(
    chapter=CHAPTER,
    name="text_induction_scores",
    reference=ref.text_induction_scores,
    make_inputs=_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_inputs,),
    misconceptions=(
        misconception("duplicate-token keys", "You scored the attention to the earlier OCCURRENCES of the query's "
                      "token (key k with tokens[k] == tokens[q]): that is a duplicate-token head. An induction head "
                      "attends to the token AFTER each earlier occurrence, key k + 1: shift your mask one key to the "
                      "right.", _variant(shift=0)),
        misconception("keys before the copies", "Your shift goes the wrong way: you scored key k - 1, the token "
                      "BEFORE each earlier occurrence. The induction key is k + 1 (mask[:, :, 1:] = "
                      "earlier[:, :, :-1]).",
                      _variant(shift=-1)),
        misconception("every query averaged", "You averaged over every query, including those whose token never "
                      "occurred earlier in the row (they can only score 0). Average over the queries that have an "
                      "earlier copy of their token.", _variant(every_query=True)),
        misconception("mean over the earlier copies", "You divided each query's attention by the number of earlier "
                      "copies of its token. A query whose token occurred three times before may split its attention "
                      "over the three tokens that followed them, and all of it is induction: sum over the copies.",
                      _variant(per_query="mean")),
        misconception("mean of the rows' means", "You averaged within each row first, then over the rows, so a row "
                      "with few repeated tokens weighs as much as one with many. Pool the queries: sum the attention "
                      "over every qualifying query of the batch, divide by how many there are.",
                      _variant(pool="rows")),
    ),
)


def text_induction_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern[batch, head, pos, pos], tokens[batch, pos]) -> [head]``; the real-model
    case is attn-only-2l's layer-1 pattern on 4 rows of held-out text."""
    run_check(TEXT_INDUCTION_SCORES, nan_as_inf(fn), cases)
