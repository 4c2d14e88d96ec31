"""Chapter 02's experiments: running the model to find and to confirm what its circuits predict.

1. ``forced_attention_logit_difference``: pin one head's attention and read the logits (the OV
   circuit, measured).
2. the skip-trigram search over every head and source token: ``skip_trigrams`` (->
   ``SkipTrigrams``: ``top``, ``top_per_head``, ``for_sources``, ``find``, ``triples``).
3. behavioural confirmation: ``confirmation_prompts``, ``filler_contexts``, ``neutral_tokens``,
   ``confirm_skip_trigrams`` (-> ``Confirmation``), and the chance control ``random_triples``.

The direct path against bigram counts is in ``bigrams``; tables of the results in ``tables``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int

from utils.circuits.exercises import check_token_mask, confirmation_effect, full_ov_circuit
from utils.tensors import require_ndim

# Neutral-token candidates tried in order; a trigram that contains one uses the next.
N_NEUTRAL_CANDIDATES = 4
# Confirmation threshold: inserting A must at least double p(C) (mean log-prob gain >= log 2).
CONFIRM_LOG_RATIO = math.log(2.0)


# --------------------------------------------------------------------------- 1. forcing attention


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


# --------------------------------------------------------------------------- 2. skip-trigram search


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
    allowed = check_token_mask(allowed, d_vocab)
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


# --------------------------------------------------------------------------- 3. behavioural confirmation


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
    allowed = check_token_mask(allowed, W_E.shape[0])
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
    ids = torch.nonzero(check_token_mask(allowed, len(allowed)).cpu())[:, 0]
    g = torch.Generator().manual_seed(seed)
    return ids[torch.randint(len(ids), (n, 3), generator=g)]
