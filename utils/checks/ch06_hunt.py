"""Checks for chapter 06, exercises 8 and 9, from the feature hunt: agreement of hand ratings with
an automatic score, and direct logit attribution to features.

Layout as in utils.sae and utils.features (W_dec's ROW i is feature i), and why some exercises
start with square cases, in ``utils.checks.ch06``'s docstring; the reference answers are
utils/features/exercises.py. The notebook reaches these checks through ``utils.checks.ch06``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check, square_case
from utils.checks.toolkit import describe_parts, randint, rng, run_described, unit_rows
from utils.features import exercises as ref

CHAPTER = "06"


# =========================================================================== 8. human ratings vs an automatic score


def rubric_inputs(seed: int) -> dict:
    g = rng(seed)
    n, m = randint(g, 6, 9), 0
    m = n + randint(g, 2, 4)  # the automatic table holds more features than were rated
    threshold = float(randint(g, 6, 9))
    auto_features = torch.randperm(60, generator=g)[:m]
    auto_scores, order = torch.rand(m, generator=g).sort(descending=True)  # a leaderboard: best first
    auto_features = auto_features[order]
    pick = torch.randperm(m, generator=g)[:n]
    rated = auto_features[pick]
    # ratings loosely follow the automatic score, on the 0..14 rubric, in whole points
    ratings = (auto_scores[pick] * 10 + 2 + 3 * torch.randn(n, generator=g)).round().clamp(0, 14)
    ratings[0] = threshold  # exactly at the threshold: not interpretable (strictly above counts)
    ratings[1] = ratings[2] = threshold + 2  # a tie, as whole-point ratings always have
    ratings[3] = threshold - 3  # never constant
    return {"ratings": ratings, "rated": rated, "auto_features": auto_features, "auto_scores": auto_scores,
            "threshold": threshold}


def _aligned(rated, auto_features, auto_scores):
    where = {int(f): i for i, f in enumerate(auto_features.tolist())}
    return auto_scores[[where[int(f)] for f in rated.tolist()]].double()


def _rubric_with(ranks, fraction=None):
    """rubric_agreement with another ranking (or no ranking: Pearson) and/or another 'fraction'."""
    def implementation(ratings, rated, auto_features, auto_scores, threshold):
        x, y = ratings.double(), _aligned(rated, auto_features, auto_scores)
        if ranks is not None:
            x, y = ranks(x), ranks(y)
        x, y = x - x.mean(), y - y.mean()
        share = (ratings > threshold).double().mean().item() if fraction is None else fraction(ratings, threshold)
        return share, float((x * y).sum() / (x.norm() * y.norm()))
    return implementation


def _ordinal_ranks(v):
    return v.argsort(stable=True).argsort(stable=True).double()


RUBRIC = Exercise(
    chapter=CHAPTER,
    name="rubric_agreement",
    reference=ref.rubric_agreement,
    make_inputs=rubric_inputs,
    rtol=1e-4, atol=1e-6,
    misconceptions=(
        Misconception(
            "threshold counted as interpretable",
            "The rubric calls a feature interpretable when its score is strictly ABOVE the threshold (> 8 on the "
            "0-14 scale): a feature rated exactly at the threshold does not count. Use ratings > threshold, not >=.",
            lambda ratings, rated, auto_features, auto_scores, threshold: (
                (ratings >= threshold).double().mean().item(),
                ref.rubric_agreement(ratings, rated, auto_features, auto_scores, threshold)[1])),
        Misconception(
            "ratings and scores misaligned",
            "You paired the k-th rating with the k-th entry of the automatic table, but the table lists its "
            "features in its own order (best score first) and holds more of them than you rated. Look up each "
            "rated feature's own score: the position of rated[k] in auto_features.",
            lambda ratings, rated, auto_features, auto_scores, threshold: _rubric_with(ref.average_ranks)(
                ratings, auto_features[:len(ratings)], auto_features, auto_scores, threshold)),
        Misconception(
            "Pearson instead of Spearman",
            "You correlated the ratings and scores themselves (Pearson). A rubric score and a specificity are on "
            "unrelated scales, and only their ORDER is comparable: correlate their ranks (Spearman), "
            "with tied ratings sharing the mean of their places.",
            _rubric_with(None)),
        Misconception(
            "tied ratings not averaged",
            "Whole-point ratings tie often. Tied values share one rank, the mean of the places they occupy (two "
            "ratings tied for places 3 and 4 both get 3.5); argsort().argsort() breaks ties arbitrarily.",
            _rubric_with(_ordinal_ranks)),
        Misconception(
            "count instead of fraction",
            "Return the FRACTION of rated features above the threshold (between 0 and 1), not how many there are.",
            _rubric_with(ref.average_ranks, lambda ratings, threshold: float((ratings > threshold).sum()))),
    ),
)


def rubric_agreement(fn, cases: Cases = None) -> None:
    """Check ``fn(ratings[n], rated[n], auto_features[m], auto_scores[m], threshold) -> (fraction, rho)``."""
    run_described(RUBRIC, fn, cases, describe_parts(("fraction", "rho"), RUBRIC.rtol, RUBRIC.atol))


# =========================================================================== 9. direct logit attribution to features


def attribution_inputs(seed: int) -> dict:
    g = rng(seed)
    if square_case("feature_logit_attribution", seed):  # d_sae = d_mlp: a decoder column still runs
        d_mlp = d_sae = randint(g, 8, 10)
    else:
        d_mlp, d_sae = randint(g, 6, 8), randint(g, 11, 14)
    d_model, d_vocab, seq = randint(g, 4, 5), randint(g, 15, 19), randint(g, 6, 9)
    f = torch.relu(torch.randn(seq, d_sae, generator=g) - 0.3) * 3
    position = randint(g, 1, seq - 2)
    f[position, :2] = torch.tensor([0.0, 2.5])  # some features off, some on, at the position itself
    W_dec = unit_rows(torch.randn(d_sae, d_mlp, generator=g))  # [d_sae, d_mlp], unit rows
    # offsets along the all-ones direction of d_model, which the final LayerNorm removes
    W_out = torch.randn(d_mlp, d_model, generator=g) / d_mlp ** 0.5 + torch.randn(d_mlp, 1, generator=g)
    W_U = torch.randn(d_model, d_vocab, generator=g) / d_model ** 0.5 + 0.5
    scale = 0.5 + 2 * torch.rand(seq, generator=g)
    tokens = torch.randint(0, d_vocab, (seq,), generator=g)
    tokens[position + 1] = (tokens[position] + 1 + randint(g, 0, d_vocab - 2)) % d_vocab  # never the same token
    return {"f": f, "W_dec": W_dec, "W_out": W_out, "W_U": W_U, "scale": scale, "tokens": tokens,
            "position": position}


def _dla(f, W_dec, W_out, W_U, scale, tokens, position, *, centre=True, divide=True, rows=True,
         multiply=True, target_offset=1, read_offset=0):
    """feature_logit_attribution with one step changed (the catalogued mistakes)."""
    p = position + read_offset
    writes = (W_dec if rows else W_dec.T) @ W_out
    if centre:
        writes = writes - writes.mean(-1, keepdim=True)
    out = writes @ W_U[:, tokens[position + target_offset]]
    if multiply:
        out = f[p] * out
    return out / scale[p] if divide else out


ATTRIBUTION = Exercise(
    chapter=CHAPTER,
    name="feature_logit_attribution",
    reference=ref.feature_logit_attribution,
    make_inputs=attribution_inputs,
    misconceptions=(
        Misconception(
            "LayerNorm scale ignored",
            "The final LayerNorm divides the residual stream by its scale before W_U reads it: divide each "
            "contribution by scale[position] (the cached ln_final.hook_scale of that position), or the parts "
            "will not add up to the logit.",
            lambda **kw: _dla(**kw, divide=False)),
        Misconception(
            "direction not centred",
            "The final LayerNorm first subtracts the mean over d_model: centre each feature's residual-stream "
            "write (subtract its mean over d_model) before dividing by the scale and reading it with W_U.",
            lambda **kw: _dla(**kw, centre=False)),
        Misconception(
            "decoder column instead of row",
            "In this course's SAE layout (SAELens's) W_dec is [d_sae, d_mlp]: feature i's direction is the ROW "
            "W_dec[i], so the features' writes are W_dec @ W_out (row i: feature i). W_dec.T @ W_out mixes "
            "features and only runs at all when d_sae = d_mlp.",
            lambda **kw: _dla(**kw, rows=False)),
        Misconception(
            "activations not multiplied in",
            "That is each feature's logit weight for the target (one unit of the feature): multiply by how "
            "strongly it fired, f[position, i]. An inactive feature then contributes exactly 0.",
            lambda **kw: _dla(**kw, multiply=False)),
        Misconception(
            "current token as target",
            "Position p predicts the NEXT token: attribute the logit of tokens[position + 1], not of "
            "tokens[position], the token the model is reading there.",
            lambda **kw: _dla(**kw, target_offset=0)),
        Misconception(
            "activations read one position early",
            "Read the features and the scale at `position` itself, where the prediction of tokens[position + 1] "
            "is made; you read them at position - 1, as if `position` were the predicted token's.",
            lambda **kw: _dla(**kw, target_offset=1, read_offset=-1)),
    ),
)


def feature_logit_attribution(fn, cases: Cases = None) -> None:
    """Check ``fn(f[seq, d_sae], W_dec, W_out, W_U, scale[seq], tokens[seq], position) -> [d_sae]``."""
    run_check(ATTRIBUTION, fn, cases)
