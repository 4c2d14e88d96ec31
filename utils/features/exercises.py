"""Chapter 06's exercises as pure tensor functions: the reference answers its checks grade against.

Layout as in ``utils.sae`` (and SAELens): ``W_enc [d_in, d_sae]`` (column i is what feature i
reads), ``W_dec [d_sae, d_in]`` (ROW i is feature i's direction in the MLP's hidden space),
activations as rows ``x [batch, d_in]``. The model's weights follow TransformerLens:
``W_out [d_mlp, d_model]``, ``W_U [d_model, d_vocab]``. ``tests/test_ch06_features.py`` checks each
function against an independent computation (loops, numpy/scipy-free closed forms, the SAE module
itself).
"""
from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from utils.circuits import average_ranks, spearman  # noqa: F401 (checks grade ref.average_ranks); chapter 02's references (ties averaged), reused


def top_activating(acts: Float[Tensor, "n_seq seq_len"], k: int
                   ) -> tuple[Int[Tensor, "k"], Int[Tensor, "k"], Float[Tensor, "k"]]:
    """The k largest activations of one feature over every (sequence, position): their sequence
    indices, positions and values, largest first."""
    values, flat = acts.flatten().topk(k)
    return flat // acts.shape[1], flat % acts.shape[1], values


def logit_weights(W_dec: Float[Tensor, "d_sae d_mlp"], W_out: Float[Tensor, "d_mlp d_model"],
                  W_U: Float[Tensor, "d_model d_vocab"], feature: int) -> Float[Tensor, "d_vocab"]:
    """How much writing feature ``feature`` (one unit of it) adds to each token's logit, along the
    direct path: decoder row -> MLP output weights -> unembedding (the final LayerNorm ignored)."""
    return W_dec[feature] @ W_out @ W_U


def pearson_correlation(a: Float[Tensor, "n_tokens m"], b: Float[Tensor, "n_tokens n"]) -> Float[Tensor, "m n"]:
    """Pearson correlation OVER TOKENS of every column of ``a`` with every column of ``b``.

    A column that never varies (a dead feature, a neuron that is always off) has no defined
    correlation; it is reported as 0, the value that can never be mistaken for a match."""
    # Constancy is read off the raw values: after centering, a constant column that is not 0 is
    # rounding noise, not 0 (two such columns would otherwise "correlate" +-1).
    constant_a, constant_b = (a == a[:1]).all(0), (b == b[:1]).all(0)
    a = a - a.mean(0)
    b = b - b.mean(0)
    norm_a, norm_b = a.norm(dim=0), b.norm(dim=0)
    corr = (a.T @ b) / (norm_a[:, None] * norm_b[None, :])
    constant = (constant_a | (norm_a == 0))[:, None] | (constant_b | (norm_b == 0))[None, :]
    return corr.masked_fill(constant, 0.0)


def specificity_sensitivity(acts: Float[Tensor, "n_tokens"], hypothesis: Bool[Tensor, "n_tokens"],
                            threshold: float = 0.0) -> tuple[float, float]:
    """(specificity, sensitivity) of "the feature fires" (act > threshold) for a hypothesis.

    Specificity: of the tokens where the feature fires, the fraction the hypothesis covers (precision).
    Sensitivity: of the tokens the hypothesis covers, the fraction where the feature fires (recall).
    Either is NaN when its denominator is empty (the feature never fires / no token fits)."""
    fires = acts > threshold
    both = (fires & hypothesis).sum().item()
    n_fires, n_hyp = fires.sum().item(), hypothesis.sum().item()
    return (both / n_fires if n_fires else float("nan"), both / n_hyp if n_hyp else float("nan"))


def feature_activation(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"],
                       b_enc: Float[Tensor, "d_sae"], b_dec: Float[Tensor, "d_in"],
                       feature: int) -> Float[Tensor, "batch"]:
    """f_i(x) = ReLU((x - b_dec) . W_enc[:, i] + b_enc[i]) for one feature i."""
    return torch.relu((x - b_dec) @ W_enc[:, feature] + b_enc[feature])


def ablate_feature(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, "d_sae"],
                   W_dec: Float[Tensor, "d_sae d_in"], b_dec: Float[Tensor, "d_in"],
                   feature: int) -> Float[Tensor, "batch d_in"]:
    """x with one feature's contribution f_i(x) W_dec[i] removed; everything else (the other
    features AND the SAE's reconstruction error) is left as it was."""
    f = feature_activation(x, W_enc, b_enc, b_dec, feature)
    return x - f[:, None] * W_dec[feature]


def steer_feature(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, "d_sae"],
                  W_dec: Float[Tensor, "d_sae d_in"], b_dec: Float[Tensor, "d_in"], feature: int,
                  value: float) -> Float[Tensor, "batch d_in"]:
    """x with feature i CLAMPED to ``value``: its own contribution replaced by value * W_dec[i]."""
    f = feature_activation(x, W_enc, b_enc, b_dec, feature)
    return x + (value - f)[:, None] * W_dec[feature]


def match_features(corr: Float[Tensor, "n_a n_b"]) -> tuple[Float[Tensor, "n_a"], Int[Tensor, "n_a"]]:
    """For each feature of dictionary A (a row), its best match in dictionary B: (correlation, index)."""
    values, indices = corr.max(dim=1)
    return values, indices


def rubric_agreement(ratings: Float[Tensor, "n"], rated: Int[Tensor, "n"], auto_features: Int[Tensor, "m"],
                     auto_scores: Float[Tensor, "m"], threshold: float = 8.0) -> tuple[float, float]:
    """Human ratings against an automatic score.

    ``ratings[k]`` is a person's rubric score (0 to 14) for feature ``rated[k]``; the automatic table
    lists features ``auto_features`` with scores ``auto_scores`` in its own order (every rated
    feature appears in it). Returns (the fraction of rated features called interpretable, i.e.
    rated strictly ABOVE ``threshold``; Spearman's rank correlation, ties averaged, between each
    rating and the same feature's automatic score)."""
    where = {int(f): i for i, f in enumerate(auto_features.tolist())}
    scores = auto_scores[[where[int(f)] for f in rated.tolist()]]
    return (ratings > threshold).double().mean().item(), spearman(ratings.double(), scores.double())


def feature_logit_attribution(f: Float[Tensor, "seq d_sae"], W_dec: Float[Tensor, "d_sae d_mlp"],
                              W_out: Float[Tensor, "d_mlp d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                              scale: Float[Tensor, "seq"], tokens: Int[Tensor, "seq"], position: int
                              ) -> Float[Tensor, "d_sae"]:
    """Direct logit attribution to SAE features: how much each feature, as it fired at ``position``,
    adds to the logit of the token that actually comes next, ``tokens[position + 1]``.

    Feature i writes f_i W_dec[i] @ W_out to the residual stream. The final LayerNorm is linear
    once its scale is known (the run's ``ln_final.hook_scale`` at that position): it centres over
    d_model and divides by the scale. ``W_U`` has the LayerNorm's weight folded in
    (``utils.induction.folded_unembed``); its bias and b_U are the same for every feature and are
    left out. Inactive features (f_i = 0) contribute exactly 0."""
    target = tokens[position + 1]
    writes = W_dec @ W_out  # [d_sae, d_model]: row i is one unit of feature i in the residual stream
    writes = writes - writes.mean(-1, keepdim=True)
    return f[position] * (writes @ W_U[:, target]) / scale[position]


def split_regression(parent: Float[Tensor, "n_tokens"], children: Float[Tensor, "n_tokens k"]
                     ) -> tuple[Float[Tensor, "k"], float, float]:
    """Feature splitting measured over tokens: regress a small dictionary's feature (the parent) on
    its children in a larger dictionary, ``parent ~ children @ weights + intercept`` by least
    squares, all children at once. Returns (weights, intercept, r2), with r2 = 1 - SS_res / SS_tot
    the fraction of the parent's variance over tokens (centred) that the children explain together."""
    X = torch.cat([children.double(), torch.ones(len(children), 1, dtype=torch.float64)], dim=1)
    y = parent.double()
    solution = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    residual = y - X @ solution
    r2 = 1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return solution[:-1].to(parent.dtype), float(solution[-1]), float(r2)
