"""Chapter 02's graded computations, in their plain form: the references its checks grade against.

Layout as in ``utils.attention``: weights act on ROW vectors, so each circuit is the transpose of
the paper's (column-vector) formula (see the package docstring). Everything here takes tensors
and returns tensors (or a FactoredMatrix); running the model is ``experiments``.

In the chapter's order:

1. the full circuits: ``full_ov_circuit``, ``full_qk_circuit``, ``source_centred``,
   ``circuit_slice``, ``ov_from_activations``
2. positions: ``positional_qk_scores``, ``positional_qk_pattern``, ``positional_head_scores``,
   ``classify_heads``
3. one head's skip-trigrams for one source token: ``top_for_source`` (and ``check_token_mask``);
   one head's best skip-trigrams over every source, from its weights: ``head_skip_trigrams``
4. behavioural confirmation, the measurement: ``confirmation_effect``
5. rank correlation with ties: ``average_ranks``, ``spearman``
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import FactoredMatrix

from utils.tensors import MASKED, causal_mask, is_factored, require_equal, require_ndim


def check_token_mask(allowed, d_vocab: int) -> Optional[torch.Tensor]:
    """``allowed`` itself if it is None or a 1-D bool mask over the vocabulary with at least one
    True entry; otherwise ValueError (every skip-trigram helper restricts tokens this way)."""
    if allowed is None:
        return None
    require_ndim(allowed, "allowed", 1)
    if allowed.dtype != torch.bool or len(allowed) != d_vocab:
        raise ValueError(f"allowed must be a bool mask of length d_vocab={d_vocab}, "
                         f"got {allowed.dtype} of length {len(allowed)}")
    if not allowed.any():
        raise ValueError("allowed excludes every token")
    return allowed


# --------------------------------------------------------------------------- 1. the full circuits


def full_ov_circuit(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_V: Float[torch.Tensor, "*head d_model d_head"],
    W_O: Float[torch.Tensor, "*head d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
) -> FactoredMatrix:
    """W_E @ W_V @ W_O @ W_U as a FactoredMatrix [*head, d_vocab (source), d_vocab (out)].

    Entry [h, s, c]: how much head h raises logit c when it attends fully to a token s. With
    shortformer positions the values read the token embedding alone, so no W_pos term appears.
    Factors: [*head, d_vocab, d_head] and [*head, d_head, d_vocab]; nothing vocab x vocab is built.
    """
    require_ndim(W_E, "W_E", 2)
    require_ndim(W_U, "W_U", 2)
    require_equal(W_E.shape[-1], W_V.shape[-2], "W_E's d_model must match W_V's")
    require_equal(W_V.shape[-1], W_O.shape[-2], "W_V's d_head must match W_O's")
    require_equal(W_O.shape[-1], W_U.shape[0], "W_O's d_model must match W_U's")
    return FactoredMatrix(W_E @ W_V, W_O @ W_U)


def full_qk_circuit(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_Q: Float[torch.Tensor, "*head d_model d_head"],
    W_K: Float[torch.Tensor, "*head d_model d_head"],
) -> FactoredMatrix:
    """W_E @ W_Q @ W_K^T @ W_E^T as a FactoredMatrix [*head, d_vocab (dest), d_vocab (src)].

    Entry [h, d, s]: the token-token part of the attention score of a query (destination) token d
    on a key (source) token s, before the 1/sqrt(d_head) scale. Rows are queries, columns keys.
    """
    require_ndim(W_E, "W_E", 2)
    require_equal(W_E.shape[-1], W_Q.shape[-2], "W_E's d_model must match W_Q's")
    require_equal(W_Q.shape, W_K.shape, "W_Q and W_K must have the same shape")
    return FactoredMatrix(W_E @ W_Q, (W_E @ W_K).transpose(-1, -2))


def source_centred(qk: FactoredMatrix) -> FactoredMatrix:
    """Subtract from every row its mean over the columns: for the QK circuit, the score of source s
    relative to an average source token. The softmax over sources ignores a per-destination
    constant, so this removes only what attention cannot see. Stays factored: centring the key
    factor B centres every row of A @ B."""
    if not is_factored(qk):
        raise TypeError(f"expected a FactoredMatrix, got {type(qk).__name__}")
    return FactoredMatrix(qk.A, qk.B - qk.B.mean(dim=-1, keepdim=True))


def circuit_slice(fm: FactoredMatrix, rows: Sequence[int] | torch.Tensor,
                  cols: Sequence[int] | torch.Tensor) -> Float[torch.Tensor, "*head n_rows n_cols"]:
    """The dense block fm[..., rows, cols], computed from the factors (len(rows) x len(cols) only)."""
    if not is_factored(fm):
        raise TypeError(f"expected a FactoredMatrix, got {type(fm).__name__}")
    rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    for name, idx, size in (("rows", rows, fm.A.shape[-2]), ("cols", cols, fm.B.shape[-1])):
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= size)):
            raise ValueError(f"{name} must be a 1-D list of indices in [0, {size})")
    return fm.A[..., rows, :] @ fm.B[..., :, cols]


def ov_from_activations(
    embed: Float[torch.Tensor, "batch pos d_model"],
    pos_embed: Float[torch.Tensor, "batch pos d_model"],
    W_V: Float[torch.Tensor, "head d_model d_head"],
    W_O: Float[torch.Tensor, "head d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    out_tokens: Int[torch.Tensor, "n_out"],
) -> Float[torch.Tensor, "batch pos head n_out"]:
    """For every position j of a cached run: the change in logits ``out_tokens`` that each head
    would make by attending fully to position j, computed from the model's own pieces
    (``hook_embed``, ``hook_pos_embed`` and the weights).

    Shortformer: the value input is the token embedding alone, so ``pos_embed`` is deliberately
    NOT used (in a standard-position model it would be ``embed + pos_embed``). The result equals
    ``full_ov_circuit(...)[h, tokens[b, j], out_tokens]``.
    """
    require_ndim(embed, "embed", 3)
    require_ndim(pos_embed, "pos_embed", 3)
    require_equal(tuple(embed.shape), tuple(pos_embed.shape), "embed and pos_embed must have the same shape")
    require_ndim(out_tokens, "out_tokens", 1)
    values = torch.einsum("bpd,hdk->bphk", embed, W_V)
    return torch.einsum("bphk,hkd->bphd", values, W_O) @ W_U[:, out_tokens]


# --------------------------------------------------------------------------- 2. positions


def positional_qk_scores(
    W_pos: Float[torch.Tensor, "n_ctx d_model"],
    W_Q: Float[torch.Tensor, "head d_model d_head"],
    W_K: Float[torch.Tensor, "head d_model d_head"],
    b_Q: Optional[Float[torch.Tensor, "head d_head"]] = None,
) -> Float[torch.Tensor, "head n_ctx n_ctx"]:
    """W_pos @ W_Q @ W_K^T @ W_pos^T per head: score of query position i on key position j,
    unscaled and unmasked. With ``b_Q`` the query is p_i W_Q + b_Q: the query bias times the key's
    position is a purely positional term too (b_K only shifts each row, which softmax ignores)."""
    require_ndim(W_pos, "W_pos", 2)
    require_ndim(W_Q, "W_Q", 3)
    require_equal(W_Q.shape, W_K.shape, "W_Q and W_K must have the same shape")
    require_equal(W_pos.shape[-1], W_Q.shape[-2], "W_pos's d_model must match W_Q's")
    q = W_pos @ W_Q  # [head, n_ctx, d_head]
    if b_Q is not None:
        q = q + b_Q[:, None, :]
    return q @ (W_pos @ W_K).transpose(-1, -2)


def positional_qk_pattern(
    W_pos: Float[torch.Tensor, "n_ctx d_model"],
    W_Q: Float[torch.Tensor, "head d_model d_head"],
    W_K: Float[torch.Tensor, "head d_model d_head"],
    b_Q: Optional[Float[torch.Tensor, "head d_head"]] = None,
) -> Float[torch.Tensor, "head n_ctx n_ctx"]:
    """The attention pattern positions alone would produce: causal softmax over keys of the
    positional scores / sqrt(d_head). Equal to the model's pattern when every token embedding is
    zero (then only W_pos and the biases reach the queries and keys)."""
    scores = positional_qk_scores(W_pos, W_Q, W_K, b_Q) / math.sqrt(W_Q.shape[-1])
    n = scores.shape[-1]
    return scores.masked_fill(~causal_mask(n, scores.device), MASKED).softmax(dim=-1)


POSITIONAL_SCORE_NAMES = ("previous-token", "first-token", "distance ratio")


def positional_head_scores(pattern: Float[torch.Tensor, "*head n n"]) -> Float[torch.Tensor, "*head 3"]:
    """Three numbers per head, averaged over query positions i >= 1 (query 0 has no choice):

    * previous-token: mean A[i, i-1];
    * first-token: mean A[i, 0];
    * distance ratio: mean over i of (sum_j A[i, j] (i - j)) / (i / 2), the attention-weighted
      distance to the key relative to a uniform pattern's (whose mean distance is i / 2):
      about 1 for no positional preference, below 1 for recent keys, up to 2 for the first one.
    """
    require_ndim(pattern, "pattern", (2, 3))
    n = pattern.shape[-1]
    require_equal(pattern.shape[-2], n, "pattern must be square over positions")
    if n < 2:
        raise ValueError("need at least two positions")
    i = torch.arange(n, device=pattern.device)
    queries = i[1:]
    previous = pattern[..., queries, queries - 1].mean(-1)
    first = pattern[..., 1:, 0].mean(-1)
    distance = (i[:, None] - i[None, :]).clamp(min=0).to(pattern.dtype)  # [query, key]
    mean_distance = (pattern * distance).sum(-1)[..., 1:]  # [*head, n - 1]
    ratio = (mean_distance / (queries.to(pattern.dtype) / 2)).mean(-1)
    return torch.stack([previous, first, ratio], dim=-1)


def classify_heads(scores: Float[torch.Tensor, "head 3"], sharp: float = 0.5,
                   recent: float = 0.5) -> list[str]:
    """A label per head from ``positional_head_scores``:

    "previous-token" if it puts >= ``sharp`` of its attention on the previous token on average,
    else "first-token" if it puts >= ``sharp`` on the first token, else "recent-tokens" if its
    distance ratio is <= ``recent`` (keys at most half as far back as a uniform pattern's), else
    "content": positions alone hardly shape its attention, so the tokens must.
    """
    require_ndim(scores, "scores", 2)
    if scores.shape[-1] != 3:
        raise ValueError("scores must be [head, 3] from positional_head_scores")
    labels = []
    for previous, first, ratio in scores.tolist():
        if previous >= sharp:
            labels.append("previous-token")
        elif first >= sharp:
            labels.append("first-token")
        elif ratio <= recent:
            labels.append("recent-tokens")
        else:
            labels.append("content")
    return labels


# --------------------------------------------------------------------------- 3. skip-trigrams


def top_for_source(qk_A: Float[torch.Tensor, "d_vocab r"], qk_B: Float[torch.Tensor, "r d_vocab"],
                   ov_A: Float[torch.Tensor, "d_vocab r"], ov_B: Float[torch.Tensor, "r d_vocab"],
                   source: int, k: int, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None,
                   ) -> tuple[Int[torch.Tensor, "k"], Int[torch.Tensor, "k"]]:
    """(destinations, outs) of one head for one source token, best first. The head's circuits come
    as their factors: QK = qk_A @ qk_B ([dest, src]) and OV = ov_A @ ov_B ([src, out]), i.e. the
    ``.A`` and ``.B`` of ``full_qk_circuit(...)[h]`` and ``full_ov_circuit(...)[h]``.

    * destinations: the k tokens d with the largest QK[d, source] - mean_s QK[d, s] (a COLUMN of
      the QK circuit, centred per destination: how much more d attends to ``source`` than to an
      average token);
    * outs: the k tokens c with the largest OV[source, c] (a ROW of the OV circuit).

    Tokens where ``allowed`` is False are never returned. Only one d_vocab-long column and one row
    are computed from the factors.
    """
    for name, t in (("qk_A", qk_A), ("qk_B", qk_B), ("ov_A", ov_A), ("ov_B", ov_B)):
        require_ndim(t, name, 2)
    require_equal(qk_A.shape[1], qk_B.shape[0], "qk_A and qk_B must share their inner dimension")
    require_equal(ov_A.shape[1], ov_B.shape[0], "ov_A and ov_B must share their inner dimension")
    d_vocab = qk_A.shape[0]
    for name, n in (("qk_B", qk_B.shape[1]), ("ov_A", ov_A.shape[0]), ("ov_B", ov_B.shape[1])):
        require_equal(n, d_vocab, f"{name} must cover the same vocabulary as qk_A")
    if not 0 <= int(source) < d_vocab:
        raise ValueError(f"source must be a token id in [0, {d_vocab})")
    allowed = check_token_mask(allowed, d_vocab)
    if not 1 <= k <= (d_vocab if allowed is None else int(allowed.sum())):
        raise ValueError(f"k must be between 1 and the number of allowed tokens, got {k}")
    dest_scores = qk_A @ (qk_B[:, source] - qk_B.mean(dim=-1))  # [d_vocab]
    out_scores = ov_A[source] @ ov_B  # [d_vocab]
    if allowed is not None:
        dest_scores = dest_scores.masked_fill(~allowed, MASKED)
        out_scores = out_scores.masked_fill(~allowed, MASKED)
    return dest_scores.topk(k).indices, out_scores.topk(k).indices


def head_skip_trigrams(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_Q: Float[torch.Tensor, "d_model d_head"],
    W_K: Float[torch.Tensor, "d_model d_head"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    allowed: Bool[torch.Tensor, "d_vocab"],
    n: int,
    context_len: int = 16,
) -> tuple[Int[torch.Tensor, "n 3"], Float[torch.Tensor, "n"]]:
    """One head's n best skip-trigrams (s, d, c) over every allowed source s, from its weights alone
    (the direct token path: no positions, biases or LayerNorm), best first, with their scores.

    For each allowed source s:

    * d = the allowed destination with the largest centred, scaled QK score
      q(d, s) = (QK[d, s] - mean_{s'} QK[d, s']) / sqrt(d_head), the mean over the WHOLE vocabulary;
    * c = the allowed out token with the largest centred OV entry o(s, c) = OV[s, c] - mean_{c'} OV[s, c'];
    * score(s) = o(s, c) * sigmoid(q(d, s) - log(context_len)): the out token's logit boost times the
      attention d would give s against context_len - 1 average tokens (roughly).

    The same numbers as ``utils.circuits.experiments.skip_trigrams`` for one head (its ``.top(n)``).
    """
    for name, t in (("W_E", W_E), ("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O), ("W_U", W_U)):
        require_ndim(t, name, 2)
    d_vocab = W_E.shape[0]
    allowed = check_token_mask(allowed, d_vocab)
    keep = torch.nonzero(allowed)[:, 0] if allowed is not None else torch.arange(d_vocab)
    if not 1 <= n <= len(keep):
        raise ValueError(f"n must be between 1 and the number of allowed tokens ({len(keep)}), got {n}")
    queries = W_E[keep] @ W_Q  # every allowed destination's query
    keys = (W_E[keep] - W_E.mean(0)) @ W_K  # every allowed source's key, minus the average token's
    qk = queries @ keys.T / math.sqrt(W_Q.shape[-1])  # [dest, src]
    ov = W_E[keep] @ W_V @ W_O @ W_U  # [src, every out token]
    ov = ov - ov.mean(-1, keepdim=True)
    dest_score, dest = qk.max(dim=0)  # the best destination of each source (a column maximum)
    out_score, out = ov[:, keep].max(dim=1)  # the best out token of each source (a row maximum)
    score = out_score * torch.sigmoid(dest_score - math.log(context_len))
    best = score.argsort(descending=True, stable=True)[:n]
    triples = torch.stack([keep[best], keep[dest[best]], keep[out[best]]], dim=1)
    return triples, score[best]


# --------------------------------------------------------------------------- 4. behavioural confirmation


def confirmation_effect(
    logits_with: Float[torch.Tensor, "batch pos d_vocab"],
    logits_without: Float[torch.Tensor, "batch pos d_vocab"],
    out_tokens: Int[torch.Tensor, "batch"],
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """(logit gain, log-probability gain) of out token C at the LAST position (the prediction
    made at B) when A is present, relative to the baseline run with A replaced by a neutral token.

    The baseline carries everything else that moves C's logit (B's own direct path, the rest of
    the context, the biases); only the difference isolates what A adds. The log-probability gain
    also removes any shift shared by all logits.
    """
    require_ndim(logits_with, "logits_with", 3)
    require_equal(tuple(logits_with.shape), tuple(logits_without.shape), "the two runs must have the same shape")
    require_ndim(out_tokens, "out_tokens", 1)
    require_equal(len(out_tokens), logits_with.shape[0], "one out token per prompt")
    index = out_tokens[:, None].to(logits_with.device)
    last_with, last_without = logits_with[:, -1], logits_without[:, -1]
    logit_gain = (last_with.gather(-1, index) - last_without.gather(-1, index))[:, 0]
    logprob_gain = (last_with.log_softmax(-1).gather(-1, index) - last_without.log_softmax(-1).gather(-1, index))[:, 0]
    return logit_gain, logprob_gain


# --------------------------------------------------------------------------- 5. rank correlation


def average_ranks(x: Float[torch.Tensor, "n"]) -> Float[torch.Tensor, "n"]:
    """Ranks 0..n-1 of a 1-D tensor (float64); tied values share the mean of their ranks."""
    require_ndim(x, "x", 1)
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError("cannot rank NaN")
    n = len(x)
    sorted_x, order = x.sort(stable=True)
    starts = torch.ones(n, dtype=torch.bool, device=x.device)
    starts[1:] = sorted_x[1:] != sorted_x[:-1]
    group = starts.cumsum(0) - 1  # tie group of each sorted element
    position = torch.arange(n, dtype=torch.float64, device=x.device)
    n_groups = int(group[-1]) + 1 if n else 0
    group_sum = torch.zeros(n_groups, dtype=torch.float64, device=x.device).index_add_(0, group, position)
    group_size = torch.bincount(group, minlength=n_groups).double()
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (group_sum / group_size)[group]
    return ranks


def spearman(x: Float[torch.Tensor, "n"], y: Float[torch.Tensor, "n"]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks."""
    require_ndim(x, "x", 1)
    require_ndim(y, "y", 1)
    require_equal(len(x), len(y), "x and y must have the same length")
    if len(x) < 2:
        raise ValueError("need at least two values")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    if denominator == 0:
        raise ValueError("one input is constant: its ranks carry no order, so the correlation is undefined")
    return float((rx * ry).sum()) / denominator
