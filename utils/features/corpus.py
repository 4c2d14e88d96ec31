"""The text a dictionary is studied on: held-out token rows and the MLP activations they produce.

Chapter 06 looks at features on a fixed slice of the validation split (never seen in training by
the model or the SAEs). The MLP activations are computed once and kept; a feature's activations
are then one matrix-vector product away, and statistics over every feature are computed in chunks
so that the [tokens, d_sae] matrix is never held whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.data.dataset import analysis_tokens
from utils.features import exercises as ex


@dataclass
class FeatureCorpus:
    """Rows of held-out tokens (BOS at position 0) and the hooked MLP activations on them."""

    tokens: Int[Tensor, "n_seq seq_len"]
    mlp: Float[Tensor, "n_seq seq_len d_mlp"]
    vocab: list  # vocab[i]: the text of token id i

    @property
    def n_tokens(self) -> int:
        """Tokens that count in statistics: every position but the BOS at 0."""
        return self.tokens.shape[0] * (self.tokens.shape[1] - 1)

    def flat_mlp(self) -> Float[Tensor, "n_tokens d_mlp"]:
        """MLP activations of the counted positions (BOS dropped), rows in (seq, pos) order."""
        return self.mlp[:, 1:].reshape(-1, self.mlp.shape[-1])

    def flat_tokens(self) -> Int[Tensor, "n_tokens"]:
        return self.tokens[:, 1:].reshape(-1)

    def str_tokens(self, seq: int) -> list[str]:
        return [self.vocab[t] for t in self.tokens[seq].tolist()]

    def token_mask(self, texts) -> torch.Tensor:
        """[n_seq, seq_len] bool: where the token's text is one of ``texts`` (BOS never)."""
        texts = _token_texts(texts)
        wanted = {i for i, s in enumerate(self.vocab) if s in set(texts)}
        if not wanted:
            raise ValueError(f"none of {sorted(texts)!r} is a token of this vocabulary")
        mask = torch.isin(self.tokens, torch.tensor(sorted(wanted)))
        mask[:, 0] = False
        return mask

    @cached_property
    def unigram_counts(self) -> Int[Tensor, "d_vocab"]:
        return torch.bincount(self.flat_tokens(), minlength=len(self.vocab))


def _token_texts(texts) -> set:
    """A hypothesis as a set of token texts; a bare string would silently become its characters."""
    if isinstance(texts, str):
        raise TypeError(f"pass a list of token texts, e.g. [{texts!r}], not a bare string")
    return set(texts)


def vocab_strings(model) -> list[str]:
    """The text of every token id (byte-level pieces decoded; never fails)."""
    tok = model.tokenizer
    return [tok.decode([i]) for i in range(model.cfg.d_vocab)]


@torch.no_grad()
def collect(model, n_seqs: int = 512, seq_len: int = 128, hook_name: str = "blocks.0.mlp.hook_post",
            split: str = "val", batch: int = 64) -> FeatureCorpus:
    """The first ``n_seqs`` analysis rows of ``split`` and the activations at ``hook_name`` on them."""
    tokens = analysis_tokens(seq_len, n_seqs, split)
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(tokens), batch):
        _, cache = model.run_with_cache(tokens[start:start + batch].to(device), names_filter=hook_name,
                                        return_type=None)
        chunks.append(cache[hook_name].float().cpu())
    return FeatureCorpus(tokens=tokens, mlp=torch.cat(chunks), vocab=vocab_strings(model))


@torch.no_grad()
def feature_acts(sae, corpus: FeatureCorpus, feature: int) -> Float[Tensor, "n_seq seq_len"]:
    """One feature's activation at every position; 0 at the BOS position, which the SAE never saw."""
    x = corpus.mlp.reshape(-1, corpus.mlp.shape[-1])
    if sae.cfg.architecture == "l1":  # one column of the encoder is enough (the corpus lives on the CPU)
        acts = ex.feature_activation(x, sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu(),
                                     sae.b_dec.detach().float().cpu(), feature)
    else:  # TopK and JumpReLU gate a feature by the others / a threshold: run the whole encoder
        acts = run_in_chunks(lambda rows: sae.encode(rows.to(sae.W_enc.device, sae.W_enc.dtype))[:, feature]
                             .float().cpu(), x)
    acts = acts.view(corpus.tokens.shape).clone()
    acts[:, 0] = 0.0
    return acts


@torch.no_grad()
def all_feature_chunks(sae, corpus: FeatureCorpus, chunk: int = 8192) -> Iterator[tuple[slice, Tensor]]:
    """(rows, f[rows]) over the counted tokens in chunks: every feature's activations, BOS dropped."""
    x = corpus.flat_mlp()
    for start in range(0, len(x), chunk):
        rows = slice(start, min(start + chunk, len(x)))
        yield rows, sae.encode(x[rows].to(sae.W_enc.device, sae.W_enc.dtype)).float().cpu()


@torch.no_grad()
def firing_counts(sae, corpus: FeatureCorpus, threshold: float = 0.0) -> Tensor:
    """[d_sae]: on how many counted tokens each feature fires (activation > threshold)."""
    counts = torch.zeros(sae.d_sae)
    for _, f in all_feature_chunks(sae, corpus):
        counts += (f > threshold).sum(0)
    return counts


@torch.no_grad()
def hypothesis_scores(sae, corpus: FeatureCorpus, hypothesis: Tensor, threshold: float = 0.0) -> dict:
    """Specificity, sensitivity and their F1 for EVERY feature against one token hypothesis.

    ``hypothesis`` is a [n_seq, seq_len] bool mask (``corpus.token_mask``). Features that never
    fire get specificity 0 here (not NaN) so that a ranking can skip them."""
    hyp = hypothesis[:, 1:].reshape(-1)
    fires = torch.zeros(sae.d_sae)
    both = torch.zeros(sae.d_sae)
    for rows, f in all_feature_chunks(sae, corpus):
        on = (f > threshold).float()
        fires += on.sum(0)
        both += on[hyp[rows]].sum(0)
    specificity = both / fires.clamp_min(1)
    sensitivity = both / max(int(hyp.sum()), 1)
    f1 = 2 * specificity * sensitivity / (specificity + sensitivity).clamp_min(1e-12)
    return {"specificity": specificity, "sensitivity": sensitivity, "f1": f1, "fires": fires}


@torch.no_grad()
def cross_correlation(sae_a, sae_b, corpus: FeatureCorpus, n_tokens: int | None = None) -> Float[Tensor, "d_a d_b"]:
    """Pearson correlation over tokens between every feature of ``sae_a`` and every feature of
    ``sae_b`` (pass the same SAE twice for its own features), from running sums in float64, so the
    [tokens, d_sae] matrices are never held whole. Constant features correlate 0 with everything."""
    sums = None
    count = 0
    chunks_b = all_feature_chunks(sae_b, corpus)
    for (rows, fa), (_, fb) in zip(all_feature_chunks(sae_a, corpus), chunks_b):
        if n_tokens is not None and count >= n_tokens:
            break
        fa, fb = fa.double(), fb.double()
        part = (fa.sum(0), fb.sum(0), fa.pow(2).sum(0), fb.pow(2).sum(0), fa.T @ fb)
        sums = part if sums is None else tuple(s + p for s, p in zip(sums, part))
        count += len(fa)
    sa, sb, saa, sbb, sab = sums
    cov = sab - torch.outer(sa, sb) / count
    var_a, var_b = saa - sa.pow(2) / count, sbb - sb.pow(2) / count
    denom = torch.outer(var_a.clamp_min(0).sqrt(), var_b.clamp_min(0).sqrt())
    # a feature whose variance is at rounding level is constant: report 0, not noise / noise
    constant = torch.outer(var_a <= 1e-9 * count, torch.ones_like(var_b, dtype=torch.bool)) | \
        torch.outer(torch.ones_like(var_a, dtype=torch.bool), var_b <= 1e-9 * count)
    return (cov / denom.clamp_min(1e-300)).masked_fill(constant, 0.0).float()


def proxy_log_likelihood_ratio(corpus: FeatureCorpus, hypothesis_texts,
                               epsilon: float = 0.01) -> Float[Tensor, "d_vocab"]:
    """log P(token | hypothesis) - log P(token) for every token id: a per-token proxy for "this
    token fits the hypothesis", as in Towards Monosemanticity's coloured histograms.

    P(token) is the add-one unigram frequency on the corpus. Under the hypothesis, a token is drawn
    from the hypothesis's own tokens (in proportion to their counts) with probability 1 - epsilon,
    and from the unigram distribution otherwise: tokens outside the set get log(epsilon) instead of
    -inf, tokens inside about log(1 / P(hypothesis))."""
    hypothesis_texts = _token_texts(hypothesis_texts)
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    counts = corpus.unigram_counts.double() + 1.0
    inside = torch.tensor([s in set(hypothesis_texts) for s in corpus.vocab])
    if not inside.any():
        raise ValueError(f"none of {sorted(hypothesis_texts)!r} is a token of this vocabulary")
    p_token = counts / counts.sum()
    p_set = torch.where(inside, counts, torch.zeros_like(counts))
    p_given = (1 - epsilon) * p_set / p_set.sum() + epsilon * p_token
    return (p_given.log() - p_token.log()).float()


def decoder_cosine(sae_a, sae_b) -> Float[Tensor, "d_a d_b"]:
    """Cosine similarity of every decoder direction of ``sae_a`` with every one of ``sae_b``."""
    a = torch.nn.functional.normalize(sae_a.W_dec.detach().float(), dim=1)  # rows: feature directions
    b = torch.nn.functional.normalize(sae_b.W_dec.detach().float(), dim=1)
    return a @ b.T


def run_in_chunks(fn: Callable, x: Tensor, chunk: int = 8192) -> Tensor:
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)])
