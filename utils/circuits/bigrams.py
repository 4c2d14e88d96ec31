"""The direct path W_E @ W_U against bigram counts from held-out text (chapter 02).

``bigram_counts`` (-> ``BigramCounts``, sparse) counts (token, next token) pairs;
``direct_path_vs_bigrams`` (-> ``DirectPathComparison``) rank-correlates each frequent source
token's direct-path logits with its observed next tokens, with two controls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int

from utils.circuits.exercises import spearman
from utils.tensors import require_equal, require_ndim


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
