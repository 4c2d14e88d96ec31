"""Chapter 03's induction on natural text: where text, unlike repeated random tokens, has no fixed
offset between a token and its earlier copy.

``text_induction_scores`` (graded, hard) generalises the induction score of repeated random tokens
(a stripe at offset -(n-1)) to any tokens: for each query whose token occurred earlier in its row,
the attention it pays to the tokens right AFTER those earlier occurrences.
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int

from utils.tensors import require_ndim


def after_earlier_copies(tokens: Int[torch.Tensor, "batch pos"]) -> torch.Tensor:
    """[batch, query, key] bool: key j follows an earlier occurrence of the query's token
    (tokens[j - 1] == tokens[q] with j - 1 < q). Every such j is at most q, so causal."""
    require_ndim(tokens, "tokens", 2)
    n = tokens.shape[1]
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    after = torch.zeros_like(earlier)
    after[:, :, 1:] = earlier[:, :, :-1]  # key j is marked when key j - 1 is an earlier copy
    return after


def text_induction_scores(
    pattern: Float[torch.Tensor, "batch head pos pos"],
    tokens: Int[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, "head"]:
    """Per head: the attention a query pays to the keys right after EVERY earlier occurrence of its
    own token (summed over those keys), averaged over all queries of the batch whose token did occur
    earlier in its row (pooled: each such query counts once, whatever its row)."""
    require_ndim(pattern, "pattern", 4)
    if pattern.shape[0] != tokens.shape[0] or pattern.shape[2:] != (tokens.shape[1], tokens.shape[1]):
        raise ValueError(f"pattern [batch, head, pos, pos] and tokens [batch, pos] disagree: "
                         f"{tuple(pattern.shape)}, {tuple(tokens.shape)}")
    after = after_earlier_copies(tokens)  # [batch, q, k]
    valid = after.any(-1)  # [batch, q]: the query's token occurred earlier
    if not valid.any():
        raise ValueError("no query's token occurs earlier in its row: there is nothing to score")
    mass = (pattern * after[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, q]
    return (mass * valid[:, None].to(pattern.dtype)).sum(dim=(0, 2)) / valid.sum()
