"""QK and OV circuits of a one-layer attention-only model, and the skip-trigrams they encode.

Reference code for chapter 02. Layout as in ``utils.attention``: weights act on ROW vectors, so
each circuit is the transpose of the paper's (column-vector) formula:

    full OV circuit   paper W_U W_O^h W_V^h W_E      code W_E @ W_V[h] @ W_O[h] @ W_U    [src, out]
    full QK circuit   paper W_E^T W_Q^hT W_K^h W_E   code W_E @ W_Q[h] @ W_K[h].T @ W_E.T  [dest, src]

Row s of the OV circuit is how head h changes every logit when it attends (fully) to token s. Row
d of the QK circuit holds the (unscaled) attention scores of a query token d for every key token.
Both are d_vocab x d_vocab but have rank at most d_head, so they are kept as ``FactoredMatrix``
([d_vocab, d_head] times [d_head, d_vocab]) and only ever materialised in slices.

Contents, in the chapter's order:

1. the full circuits: ``full_ov_circuit``, ``full_qk_circuit``, ``source_centred``,
   ``circuit_slice``, ``ov_from_activations``, ``forced_attention_logit_difference``
2. positions: ``positional_qk_scores``, ``positional_qk_pattern``, ``positional_head_scores``,
   ``classify_heads``, ``plot_relative_attention``
3. skip-trigrams: ``top_for_source``, ``skip_trigrams`` (-> ``SkipTrigrams``: ``top``,
   ``top_per_head``, ``for_sources``, ``triples``), ``skip_trigram_table`` (-> ``TrigramTable``)
4. behavioural confirmation: ``confirmation_effect``, ``confirmation_prompts``, ``filler_contexts``,
   ``neutral_tokens``, ``confirm_skip_trigrams`` (-> ``Confirmation``), ``random_triples``
5. the direct path against bigram counts: ``bigram_counts`` (-> ``BigramCounts``),
   ``average_ranks``, ``spearman``, ``direct_path_vs_bigrams`` (-> ``DirectPathComparison``)
6. an ipywidgets explorer: ``explorer_html``, ``circuit_explorer``
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import FactoredMatrix

from utils.tensors import MASKED, causal_mask, is_factored, require_equal, require_ndim

# Neutral-token candidates tried in order; a trigram that contains one uses the next.
N_NEUTRAL_CANDIDATES = 4
# Confirmation threshold: inserting A must at least double p(C) (mean log-prob gain >= log 2).
CONFIRM_LOG_RATIO = math.log(2.0)




def _check_mask(allowed, d_vocab: int) -> Optional[torch.Tensor]:
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


@torch.no_grad()
def forced_attention_logit_difference(model, tokens: Int[torch.Tensor, "pos"], head: int, src_pos: int,
                                      ref_pos: int, layer: int = 0) -> Float[torch.Tensor, "d_vocab"]:
    """Run ``model`` twice with head ``head``'s last-position attention pinned to one key
    (``src_pos``, then ``ref_pos``) and return the difference of the last-position logits.

    For a 1-layer attention-only shortformer model this equals
    OV[tokens[src_pos]] - OV[tokens[ref_pos]]: the biases and every other path cancel.
    """
    tokens = torch.as_tensor(tokens)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    n = tokens.shape[1]
    if not (0 <= src_pos < n and 0 <= ref_pos < n):
        raise ValueError(f"positions must lie in [0, {n})")

    def pinned(position):
        def hook(pattern, hook):
            pattern = pattern.clone()
            pattern[:, head, -1] = 0.0
            pattern[:, head, -1, position] = 1.0
            return pattern
        return hook

    name = f"blocks.{layer}.attn.hook_pattern"
    at_src = model.run_with_hooks(tokens, fwd_hooks=[(name, pinned(src_pos))])[0, -1]
    at_ref = model.run_with_hooks(tokens, fwd_hooks=[(name, pinned(ref_pos))])[0, -1]
    return at_src - at_ref


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


def plot_relative_attention(patterns: dict, n: int = 48, limit: float = 3.0):
    """Heatmaps of log2(A[i, j] * (i + 1)) for the first ``n`` positions: attention relative to a
    uniform causal pattern (0 = uniform, +1 = twice uniform, -1 = half). One row of panels per
    entry of ``patterns`` (name -> [head, n_ctx, n_ctx]), one column per head."""
    import matplotlib.pyplot as plt

    names = list(patterns)
    n_heads = patterns[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n_heads, figsize=(2.6 * n_heads + 1, 2.5 * len(names)), squeeze=False)
    rows = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    for r, name in enumerate(names):
        A = patterns[name][:, :n, :n].detach().float().cpu()
        relative = torch.log2(A * rows).masked_fill(~causal_mask(n), float("nan")).clamp(-limit, limit)
        for h in range(n_heads):
            ax = axes[r, h]
            image = ax.imshow(relative[h], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"{name}: head {h}", fontsize=8)
            ax.tick_params(labelsize=6)
            if r == len(names) - 1:
                ax.set_xlabel("key position", fontsize=7)
            if h == 0:
                ax.set_ylabel("query position", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="log2(attention / uniform)")
    return fig


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
    allowed = _check_mask(allowed, d_vocab)
    if not 1 <= k <= (d_vocab if allowed is None else int(allowed.sum())):
        raise ValueError(f"k must be between 1 and the number of allowed tokens, got {k}")
    dest_scores = qk_A @ (qk_B[:, source] - qk_B.mean(dim=-1))  # [d_vocab]
    out_scores = ov_A[source] @ ov_B  # [d_vocab]
    if allowed is not None:
        dest_scores = dest_scores.masked_fill(~allowed, MASKED)
        out_scores = out_scores.masked_fill(~allowed, MASKED)
    return dest_scores.topk(k).indices, out_scores.topk(k).indices


@dataclass
class SkipTrigrams:
    """One row per (head, source token): its top destinations and outs, as tensors.

    ``dest_scores`` are centred QK scores / sqrt(d_head) (attention log-odds against an average
    source); ``out_scores`` are OV logit boosts relative to the row's mean logit change.
    ``score`` ranks rows: out_scores[:, 0] * sigmoid(dest_scores[:, 0] - log(context_len)), a rough
    prediction of the boost C gets when B attends to A among context_len average tokens.
    """

    heads: Int[torch.Tensor, "n"]
    sources: Int[torch.Tensor, "n"]
    destinations: Int[torch.Tensor, "n k"]
    outs: Int[torch.Tensor, "n k"]
    dest_scores: Float[torch.Tensor, "n k"]
    out_scores: Float[torch.Tensor, "n k"]
    score: Float[torch.Tensor, "n"]

    def __len__(self) -> int:
        return len(self.sources)

    def select(self, index) -> "SkipTrigrams":
        index = torch.as_tensor(index, dtype=torch.long)
        return SkipTrigrams(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def _best(self, n: int, among: torch.Tensor) -> torch.Tensor:
        score = self.score.masked_fill(~among, -math.inf)
        order = score.argsort(descending=True, stable=True)
        return order[: min(n, int(among.sum()))]

    def top(self, n: int, head: Optional[int] = None) -> "SkipTrigrams":
        """The n highest-scoring rows (of one head, if given), best first."""
        among = torch.ones_like(self.heads, dtype=torch.bool) if head is None else self.heads == head
        return self.select(self._best(n, among))

    def top_per_head(self, n: int) -> "SkipTrigrams":
        """The n highest-scoring rows of every head, head by head."""
        heads = sorted(set(self.heads.tolist()))
        return self.select(torch.cat([self._best(n, self.heads == h) for h in heads]))

    def for_sources(self, sources: Sequence[int]) -> "SkipTrigrams":
        """For each source token, its highest-scoring row over the heads (sources absent are skipped)."""
        rows = [self._best(1, self.sources == int(s)) for s in sources]
        return self.select(torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long))

    def find(self, head: int, source: int) -> "SkipTrigrams":
        return self.select(torch.nonzero((self.heads == head) & (self.sources == source))[:, 0])

    def triples(self) -> Int[torch.Tensor, "n 3"]:
        """(A, B, C) = (source, top destination, top out) per row."""
        return torch.stack([self.sources, self.destinations[:, 0], self.outs[:, 0]], dim=1)


@torch.no_grad()
def skip_trigrams(model, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None, k: int = 5,
                  layer: int = 0, heads: Optional[Sequence[int]] = None,
                  sources: Optional[Sequence[int]] = None, context_len: int = 16,
                  chunk: int = 1024) -> SkipTrigrams:
    """Top destinations (QK) and outs (OV) of every head for every source token.

    Sources, destinations and outs are restricted to ``allowed`` (all tokens by default). Works
    on blocks of ``chunk`` sources, so memory stays at d_vocab x chunk whatever the vocabulary.
    """
    W_E = model.W_E.detach()
    d_vocab, d_head = W_E.shape[0], model.cfg.d_head
    allowed = _check_mask(allowed, d_vocab)
    keep = torch.arange(d_vocab) if allowed is None else torch.nonzero(allowed.cpu())[:, 0]
    keep = keep.to(W_E.device)
    sources = keep if sources is None else torch.as_tensor(sources, dtype=torch.long, device=W_E.device)
    heads = range(model.cfg.n_heads) if heads is None else heads
    if not 1 <= k <= len(keep):
        raise ValueError(f"k must be between 1 and the number of allowed tokens ({len(keep)})")
    mean_embed = W_E.mean(0)  # the average source token's embedding (centres the QK columns)
    parts = []
    for h in heads:
        W_Q, W_K, W_V, W_O = (getattr(model, m)[layer, h].detach() for m in ("W_Q", "W_K", "W_V", "W_O"))
        queries = W_E[keep] @ W_Q  # [n_keep, d_head]: every allowed destination
        write = W_O @ model.W_U.detach()  # [d_head, d_vocab]
        mean_write = write.mean(-1)  # centres the OV rows: a uniform logit shift changes nothing
        for start in range(0, len(sources), chunk):
            src = sources[start: start + chunk]
            values = W_E[src] @ W_V  # [c, d_head]
            ov = values @ write[:, keep] - (values @ mean_write)[:, None]  # [c, n_keep]
            qk = queries @ ((W_E[src] - mean_embed) @ W_K).T / math.sqrt(d_head)  # [n_keep, c]
            out_val, out_idx = ov.topk(k, dim=1)
            dest_val, dest_idx = qk.topk(k, dim=0)
            parts.append((torch.full((len(src),), h, dtype=torch.long), src.cpu(), keep[dest_idx.T].cpu(),
                          keep[out_idx].cpu(), dest_val.T.cpu(), out_val.cpu()))
    heads_t, src_t, dest_t, out_t, dv_t, ov_t = (torch.cat(x) for x in zip(*parts))
    score = ov_t[:, 0] * torch.sigmoid(dv_t[:, 0] - math.log(context_len))
    return SkipTrigrams(heads_t, src_t, dest_t, out_t, dv_t, ov_t, score)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def show_token(token: str) -> str:
    """A token in quotes with newlines and tabs visible, as in the slides' table."""
    return '"' + _escape(token) + '"'


@dataclass
class TrigramTable:
    """Rows of strings; shows as an HTML table in a notebook and as plain text elsewhere."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left;font-family:monospace'>{html.escape(x)}</td>"
                                         for x in row) + "</tr>" for row in self.rows)
        caption = f"<caption style='text-align:left'>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        line = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths)).rstrip()
        out = ([self.title] if self.title else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(out + [line(r) for r in self.rows])

    __repr__ = __str__


def skip_trigram_table(trigrams: SkipTrigrams, to_str: Callable[[int], str], n_dest: int = 4,
                       n_out: int = 4, n_examples: int = 2, title: str = "") -> TrigramTable:
    """The slides' table: head, source token, destination tokens, out tokens, and example
    skip-trigrams "A ... B C" pairing the i-th destination with the i-th out."""
    rows = []
    for r in range(len(trigrams)):
        a = to_str(int(trigrams.sources[r]))
        dests = [to_str(int(t)) for t in trigrams.destinations[r, :n_dest]]
        outs = [to_str(int(t)) for t in trigrams.outs[r, :n_out]]
        examples = [trigram_string(a, b, c) for b, c in zip(dests[:n_examples], outs[:n_examples])]
        rows.append([str(int(trigrams.heads[r])), show_token(a), ", ".join(map(show_token, dests)),
                     ", ".join(map(show_token, outs)), ", ".join(examples)])
    return TrigramTable(["head", "source token", "destination tokens", "out tokens", "example skip-trigrams"],
                        rows, title)


def trigram_string(a: str, b: str, c: str) -> str:
    """ "A ... BC" with escapes, e.g. '"try ... :except"' (C follows B directly)."""
    return f'"{_escape(a)} ... {_escape(b)}{_escape(c)}"'


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


def confirmation_prompts(a: int, b: int, contexts: Int[torch.Tensor, "n_ctx length"], neutral: int,
                         prefix_len: int = 10, gap: int = 4
                         ) -> tuple[Int[torch.Tensor, "n_ctx pos"], Int[torch.Tensor, "n_ctx pos"]]:
    """Prompts "... A ... B" and their baselines "... N ... B", one pair per filler context.

    Each row is BOS, ``prefix_len`` filler tokens, A (or the neutral token N), ``gap`` more filler
    tokens, then B: the model's prediction at B (the last position) is where C should rise. The
    filler comes from ``contexts[:, 1:]`` (rows of held-out text that start with BOS).
    """
    require_ndim(contexts, "contexts", 2)
    if contexts.shape[1] < 1 + prefix_len + gap:
        raise ValueError(f"contexts need at least 1 + prefix_len + gap = {1 + prefix_len + gap} tokens")
    if prefix_len < 0 or gap < 0:
        raise ValueError("prefix_len and gap must be >= 0")
    n = contexts.shape[0]
    filler = contexts[:, 1:]
    column = lambda t: torch.full((n, 1), int(t), dtype=contexts.dtype, device=contexts.device)
    with_a = torch.cat([contexts[:, :1], filler[:, :prefix_len], column(a),
                        filler[:, prefix_len: prefix_len + gap], column(b)], dim=1)
    without = with_a.clone()
    without[:, 1 + prefix_len] = int(neutral)
    return with_a, without


def filler_contexts(n: int = 8, length: int = 15, seed: int = 0) -> Int[torch.Tensor, "n length"]:
    """``n`` rows of held-out text (the analysis split), each starting with BOS, chosen at random
    (seeded) among the split's consecutive windows."""
    from utils.data import analysis_tokens

    rows = analysis_tokens(seq_len=length)
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(len(rows), generator=g)[:n]]


@torch.no_grad()
def neutral_tokens(model, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None,
                   n: int = N_NEUTRAL_CANDIDATES, layer: int = 0) -> list[int]:
    """Allowed tokens whose attention changes the logits least: the smallest summed norm, over
    heads, of their (mean-centred) OV rows. Attending to such a token moves almost nothing."""
    W_E = model.W_E.detach()
    allowed = _check_mask(allowed, W_E.shape[0])
    total = torch.zeros(W_E.shape[0], device=W_E.device)
    for h in range(model.cfg.n_heads):
        ov = full_ov_circuit(W_E, model.W_V[layer, h].detach(), model.W_O[layer, h].detach(), model.W_U.detach())
        B = ov.B - ov.B.mean(-1, keepdim=True)  # centre each row over the outputs
        # ||A[s] @ B||^2 = A[s] (B B^T) A[s]^T: d_head x d_head, never d_vocab x d_vocab
        total += torch.einsum("sk,kl,sl->s", ov.A, B @ B.T, ov.A).clamp(min=0).sqrt()
    if allowed is not None:
        total = total.masked_fill(~allowed.to(total.device), math.inf)
    return total.argsort()[:n].tolist()


@dataclass
class Confirmation:
    """Per trigram (A, B, C), averaged over the filler contexts."""

    triples: Int[torch.Tensor, "n 3"]
    logit_gain: Float[torch.Tensor, "n"]  # mean logit(C | A) - logit(C | neutral)
    logprob_gain: Float[torch.Tensor, "n"]  # mean log p(C | A) - log p(C | neutral)
    prob_with: Float[torch.Tensor, "n"]  # mean p(C | A)
    prob_without: Float[torch.Tensor, "n"]  # mean p(C | neutral)
    neutral: Int[torch.Tensor, "n"]
    threshold: float

    @property
    def confirmed(self) -> Bool[torch.Tensor, "n"]:
        """Inserting A multiplies p(C) by at least exp(threshold) (2x by default), on average
        over contexts in log space."""
        return self.logprob_gain >= self.threshold

    @property
    def fraction(self) -> float:
        return float(self.confirmed.float().mean()) if len(self.triples) else float("nan")


@torch.no_grad()
def confirm_skip_trigrams(model, triples: Int[torch.Tensor, "n 3"], contexts: Int[torch.Tensor, "n_ctx length"],
                          neutral: Sequence[int], prefix_len: int = 10, gap: int = 4,
                          threshold: float = CONFIRM_LOG_RATIO, batch_size: int = 512) -> Confirmation:
    """Run the model on "... A ... B" and on "... N ... B" for every triple and context and
    measure what A does to C at B (``confirmation_effect``), averaged over contexts.

    ``neutral``: candidate neutral tokens; each triple uses the first one that is not A, B or C.
    """
    triples = torch.as_tensor(triples, dtype=torch.long)
    require_ndim(triples, "triples", 2)
    if triples.shape[1] != 3:
        raise ValueError("triples must be [n, 3]: (source A, destination B, out C)")
    neutral = [int(t) for t in neutral]
    if not neutral:
        raise ValueError("need at least one neutral token")
    device = model.W_E.device
    contexts = contexts.to(device)
    n_ctx = contexts.shape[0]
    chosen, withs, withouts = [], [], []
    for a, b, c in triples.tolist():
        free = [t for t in neutral if t not in (a, b, c)]
        if not free:
            raise ValueError(f"every neutral candidate occurs in the triple {(a, b, c)}; pass more")
        chosen.append(free[0])
        w, wo = confirmation_prompts(a, b, contexts, free[0], prefix_len, gap)
        withs.append(w)
        withouts.append(wo)
    if not withs:
        empty = torch.zeros(0)
        return Confirmation(triples, empty, empty, empty, empty, torch.zeros(0, dtype=torch.long), threshold)
    with_all, without_all = torch.cat(withs), torch.cat(withouts)
    outs = triples[:, 2].repeat_interleave(n_ctx).to(device)
    gains, lp_gains, p_with, p_without = [], [], [], []
    for start in range(0, len(with_all), batch_size):
        sl = slice(start, start + batch_size)
        lw, lo = model(with_all[sl]), model(without_all[sl])
        g, lg = confirmation_effect(lw, lo, outs[sl])
        idx = outs[sl, None]
        gains.append(g)
        lp_gains.append(lg)
        p_with.append(lw[:, -1].softmax(-1).gather(-1, idx)[:, 0])
        p_without.append(lo[:, -1].softmax(-1).gather(-1, idx)[:, 0])
    per = lambda parts: torch.cat(parts).view(len(triples), n_ctx).mean(1).cpu()
    return Confirmation(triples, per(gains), per(lp_gains), per(p_with), per(p_without),
                        torch.tensor(chosen), threshold)


def random_triples(allowed: Bool[torch.Tensor, "d_vocab"], n: int, seed: int = 0) -> Int[torch.Tensor, "n 3"]:
    """``n`` (A, B, C) triples of allowed tokens drawn uniformly (seeded): the control that says
    how often an unrelated triple would pass the confirmation test by chance."""
    ids = torch.nonzero(_check_mask(allowed, len(allowed)).cpu())[:, 0]
    g = torch.Generator().manual_seed(seed)
    return ids[torch.randint(len(ids), (n, 3), generator=g)]


# --------------------------------------------------------------------------- 5. direct path vs bigrams


@dataclass
class BigramCounts:
    """Sparse bigram counts: ``keys`` = prev * d_vocab + next (sorted, unique), ``counts``."""

    d_vocab: int
    keys: Int[torch.Tensor, "n"]
    counts: Int[torch.Tensor, "n"]

    def row(self, prev: int) -> Float[torch.Tensor, "d_vocab"]:
        """How often each token followed ``prev`` (dense, one row)."""
        lo = torch.searchsorted(self.keys, torch.tensor(prev * self.d_vocab))
        hi = torch.searchsorted(self.keys, torch.tensor((prev + 1) * self.d_vocab))
        out = torch.zeros(self.d_vocab, dtype=torch.float64)
        out[self.keys[lo:hi] % self.d_vocab] = self.counts[lo:hi].double()
        return out

    def prev_counts(self) -> Int[torch.Tensor, "d_vocab"]:
        """How often each token occurs as the first token of a pair."""
        return torch.zeros(self.d_vocab, dtype=torch.long).index_add_(0, self.keys // self.d_vocab, self.counts)

    def dense(self) -> Float[torch.Tensor, "d_vocab d_vocab"]:
        """The full table (only for small vocabularies and tests)."""
        out = torch.zeros(self.d_vocab * self.d_vocab, dtype=torch.float64)
        out[self.keys] = self.counts.double()
        return out.view(self.d_vocab, self.d_vocab)


def bigram_counts(tokens: Int[torch.Tensor, "batch pos"], d_vocab: int) -> BigramCounts:
    """Count (token, next token) pairs inside each row of ``tokens`` (never across rows)."""
    require_ndim(tokens, "tokens", (1, 2))
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= d_vocab):
        raise ValueError(f"token ids must lie in [0, {d_vocab})")
    pairs = (tokens[:, :-1].long() * d_vocab + tokens[:, 1:].long()).reshape(-1).cpu()
    keys, counts = torch.unique(pairs, return_counts=True)  # sorted
    return BigramCounts(d_vocab, keys, counts)


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


@dataclass
class DirectPathComparison:
    """The direct path W_E[a] @ W_U against bigram counts, per source token a."""

    sources: Int[torch.Tensor, "n"]
    rho_observed: Float[torch.Tensor, "n"]  # over the next tokens seen after a (>= min_next of them)
    rho_all: Float[torch.Tensor, "n"]  # over the whole vocabulary (unseen pairs tie at 0)
    top1_observed: Bool[torch.Tensor, "n"]  # the direct path's top prediction was seen after a
    unigram_rho_observed: Float[torch.Tensor, "n"]  # control: plain token frequency instead
    shuffled_rho_observed: Float[torch.Tensor, "n"]  # control: another source's direct-path row

    def summary(self) -> dict:
        mean = lambda t: round(float(t.float().mean()), 3)
        return {"sources": len(self.sources), "rho_observed": mean(self.rho_observed),
                "rho_all": mean(self.rho_all), "top1_observed": mean(self.top1_observed),
                "unigram_rho_observed": mean(self.unigram_rho_observed),
                "shuffled_rho_observed": mean(self.shuffled_rho_observed)}


@torch.no_grad()
def direct_path_vs_bigrams(W_E: Float[torch.Tensor, "d_vocab d_model"], W_U: Float[torch.Tensor, "d_model d_vocab"],
                           counts: BigramCounts, min_count: int = 100, min_next: int = 5,
                           exclude: Sequence[int] = (0,), seed: int = 0) -> DirectPathComparison:
    """Rank-correlate each frequent source token's direct-path logits with how often each next
    token followed it. Sources: tokens seen >= ``min_count`` times as the first of a pair (minus
    ``exclude``, by default BOS) with >= ``min_next`` distinct observed next tokens."""
    require_equal(W_E.shape[0], counts.d_vocab, "W_E's vocabulary must match the counts'")
    prev = counts.prev_counts()
    candidates = [a for a in torch.nonzero(prev >= min_count)[:, 0].tolist() if a not in set(exclude)]
    unigram = torch.zeros(counts.d_vocab, dtype=torch.float64).index_add_(
        0, counts.keys % counts.d_vocab, counts.counts.double())
    rows, sources = [], []
    for a in candidates:
        row = counts.row(a)
        if int((row > 0).sum()) >= min_next:
            rows.append(row)
            sources.append(a)
    if not sources:
        raise ValueError("no source token passes min_count and min_next")
    src = torch.tensor(sources)
    direct = (W_E[src.to(W_E.device)] @ W_U).double().cpu()  # [n, d_vocab], one row per source only
    g = torch.Generator().manual_seed(seed)
    other = torch.randperm(len(src), generator=g)
    rho_obs, rho_all, top1, uni, shuf = [], [], [], [], []
    for i, row in enumerate(rows):
        seen = row > 0
        rho_obs.append(spearman(direct[i][seen], row[seen]))
        rho_all.append(spearman(direct[i], row))
        top1.append(bool(seen[direct[i].argmax()]))
        uni.append(spearman(unigram[seen], row[seen]))
        shuf.append(spearman(direct[int(other[i])][seen], row[seen]) if int(other[i]) != i else 0.0)
    t = lambda v, dtype=torch.float64: torch.tensor(v, dtype=dtype)
    return DirectPathComparison(src, t(rho_obs), t(rho_all), t(top1, torch.bool), t(uni), t(shuf))


# --------------------------------------------------------------------------- 6. the explorer widget


@lru_cache(maxsize=8)
def _head_circuits(model, layer: int, head: int) -> tuple[FactoredMatrix, FactoredMatrix]:
    W_E, W_U = model.W_E.detach(), model.W_U.detach()
    qk = full_qk_circuit(W_E, model.W_Q[layer, head].detach(), model.W_K[layer, head].detach())
    ov = full_ov_circuit(W_E, model.W_V[layer, head].detach(), model.W_O[layer, head].detach(), W_U)
    return qk, ov


def _source_token(model, source) -> int:
    if isinstance(source, int):
        if not 0 <= source < model.cfg.d_vocab:
            raise ValueError(f"token id {source} is not in [0, {model.cfg.d_vocab})")
        return source
    return model.to_single_token(source)


@torch.no_grad()
def explorer_html(model, head: int, source, k: int = 8, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None,
                  layer: int = 0) -> str:
    """HTML for one (head, source token): top destinations with their centred attention scores
    and top out tokens with their logit boosts. ``source`` is a string of one token or an id; a
    string that is not exactly one token yields a message, not an exception."""
    if not 0 <= head < model.cfg.n_heads:
        return f"<p>head must be in [0, {model.cfg.n_heads})</p>"
    try:
        s = _source_token(model, source)
    except ValueError as e:
        return f"<p style='color:#a00'>{html.escape(str(e))}: type a single token, e.g. ' def'.</p>"
    qk, ov = _head_circuits(model, layer, head)
    allowed = _check_mask(allowed, model.cfg.d_vocab)
    k = min(k, model.cfg.d_vocab if allowed is None else int(allowed.sum()))
    dests, outs = top_for_source(qk.A, qk.B, ov.A, ov.B, s, k, allowed)
    dest_scores = (qk.A[dests] @ (qk.B[:, s] - qk.B.mean(-1))) / math.sqrt(model.cfg.d_head)
    out_row = ov.A[s] @ ov.B
    out_scores = out_row[outs] - out_row.mean()
    name = lambda t: html.escape(show_token(model.to_string(torch.tensor([int(t)]))))
    table = lambda title, ids, vals, unit: (
        f"<table><thead><tr><th style='text-align:left'>{title}</th><th>{unit}</th></tr></thead><tbody>"
        + "".join(f"<tr><td style='font-family:monospace'>{name(t)}</td><td>{v:+.2f}</td></tr>"
                  for t, v in zip(ids.tolist(), vals.tolist())) + "</tbody></table>")
    a = name(s)
    examples = ", ".join(html.escape(trigram_string(model.to_string(torch.tensor([s])),
                                                    model.to_string(torch.tensor([int(b)])),
                                                    model.to_string(torch.tensor([int(c)]))))
                         for b, c in zip(dests[:3].tolist(), outs[:3].tolist()))
    return (f"<p><b>head {head}</b>, source {a}: skip-trigrams {examples}</p>"
            "<div style='display:flex;gap:2em'>"
            + table("destinations (QK column)", dests, dest_scores, "attention log-odds vs average")
            + table("outs (OV row)", outs, out_scores, "logit boost vs average")
            + "</div>")


def circuit_explorer(model, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None, source: str = " def",
                     k: int = 8, layer: int = 0):
    """An ipywidgets panel: pick a head and type a source token; shows its top destinations (QK)
    and top outputs (OV). Returns the widget (display it, or just leave it last in a cell)."""
    import ipywidgets as widgets

    head = widgets.Dropdown(options=[(f"head {h}", h) for h in range(model.cfg.n_heads)], value=0,
                            description="head")
    text = widgets.Text(value=source, description="source", continuous_update=False)
    top = widgets.IntSlider(value=k, min=1, max=20, description="top k")
    view = widgets.HTML()

    def update(*_):
        view.value = explorer_html(model, head.value, text.value, top.value, allowed, layer)

    for w in (head, text, top):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([head, text, top]), view])
