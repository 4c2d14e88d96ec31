"""Checks for chapter 06 (interpreting SAE features, after Bricken et al. 2023).

Layout as in utils.sae and utils.features (and SAELens): W_enc [d_in, d_sae] (column i = what
feature i reads), W_dec [d_sae, d_in] (ROW i is feature i), b_enc [d_sae], b_dec [d_in]; the model's
W_out [d_mlp, d_model], W_U [d_model, d_vocab]. SAE weights are drawn as they were when the course
stored their transposes, then transposed, so every case holds the same numbers as before.
The reference answers are utils/features/exercises.py.

Most random cases keep every dimension different, so a transposed weight or a reduction over the
wrong axis fails on shape or value. Some mistakes only run at all when two dimensions are equal
(skipping W_out needs d_mlp = d_model; correlating over features needs as many features as tokens),
so those exercises START with square cases: there the mistake gives numbers, and the check can name
it, before a rectangular case fails it on shape.
One section per exercise (its inputs, its reference, its catalogue of mistakes), in the notebook's
order: longer than 400 lines because the catalogues are, and splitting them would separate an
exercise from its mistakes.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, question, run_check, square_case
from utils.checks.toolkit import describe_parts, randint, rng, run_described
from utils.features import exercises as ref

CHAPTER = "06"
EXERCISES = ["top_activating", "logit_weights", "pearson_correlation", "specificity_sensitivity",
             "ablate_feature", "steer_feature", "match_features", "rubric_agreement",
             "feature_logit_attribution", "neuron_question", "specificity_question", "universality_question"]






def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True)


# =========================================================================== 1. top-activating examples


def _acts_inputs(seed: int) -> dict:
    g = rng(seed)
    n_seq, seq_len = randint(g, 5, 8), randint(g, 11, 16)  # never equal
    acts = torch.relu(torch.randn(n_seq, seq_len, generator=g) - 0.3) * (1 + 3 * torch.rand(n_seq, seq_len, generator=g))
    # the two largest activations in one sequence, as on real text (a feature fires on a whole span)
    s, p1, p2 = randint(g, 0, n_seq - 1), randint(g, 0, seq_len // 2 - 1), randint(g, seq_len // 2, seq_len - 1)
    acts[s, p1], acts[s, p2] = acts.max() + 1.0, acts.max() + 0.5
    return {"acts": acts, "k": randint(g, 4, 7)}


def _unravel(flat, n_rows, n_cols):
    return flat // n_cols, flat % n_cols


TOP_ACTIVATING = Exercise(
    chapter=CHAPTER,
    name="top_activating",
    reference=ref.top_activating,
    make_inputs=_acts_inputs,
    misconceptions=(
        Misconception(
            "top k over the wrong axis",
            "You ranked the activations of the TRANSPOSED matrix ([seq_len, n_seq] flattened) but unravelled the "
            "indices as if they were [n_seq, seq_len] rows: the values are right, the (sequence, position) pairs "
            "are not. Flatten acts itself (acts.flatten() or acts.reshape(-1)) and unravel with divmod(index, "
            "seq_len).",
            lambda acts, k: (lambda v, i: (*_unravel(i, *acts.shape), v))(*acts.T.flatten().topk(k))),
        Misconception(
            "indices unravelled with n_seq",
            "A flat index into an [n_seq, seq_len] matrix is seq * seq_len + pos: divide by seq_len (the row "
            "length), not by n_seq.",
            lambda acts, k: (lambda v, i: (i // acts.shape[0], i % acts.shape[0], v))(*acts.flatten().topk(k))),
        Misconception(
            "sequence and position swapped",
            "Return (sequence indices, positions, values) in that order: you returned the positions first.",
            lambda acts, k: (lambda s, p, v: (p, s, v))(*ref.top_activating(acts, k))),
        Misconception(
            "smallest k",
            "The dashboard wants the k LARGEST activations (topk's default largest=True).",
            lambda acts, k: (lambda v, i: (i // acts.shape[1], i % acts.shape[1], v))(
                *acts.flatten().topk(k, largest=False))),
        Misconception(
            "largest last",
            "Order the examples from the largest activation down (topk returns them sorted that way; "
            "sort(descending=True) if you sorted yourself).",
            lambda acts, k: tuple(t.flip(0) for t in ref.top_activating(acts, k))),
        Misconception(
            "one example per sequence",
            "You took each sequence's maximum, then the k best sequences: when one sequence holds two of the "
            "top activations, the second is lost. Rank all (sequence, position) pairs together.",
            lambda acts, k: (lambda v, s: (s, acts.argmax(1)[s], v))(*acts.max(1).values.topk(k))),
    ),
)


def top_activating(fn, cases: Cases = None) -> None:
    """Check ``fn(acts[n_seq, seq_len], k) -> (seqs, positions, values)``, largest first."""
    run_described(TOP_ACTIVATING, fn, cases, describe_parts(("seqs", "positions", "values"),
                                                               TOP_ACTIVATING.rtol, TOP_ACTIVATING.atol))


# =========================================================================== 2. logit weights


def _logit_inputs(seed: int) -> dict:
    g = rng(seed)
    square = seed % 3 != 0  # most seeds square (see the module docstring); default_cases pick the order
    if square:
        d_mlp = d_model = d_vocab = d_sae = randint(g, 6, 9)
    else:
        d_model, d_mlp, d_sae, d_vocab = randint(g, 4, 5), randint(g, 7, 9), randint(g, 11, 13), randint(g, 15, 19)
    return {
        "W_dec": _unit_columns(torch.randn(d_mlp, d_sae, generator=g)).T.contiguous(),  # [d_sae, d_mlp]
        "W_out": torch.randn(d_mlp, d_model, generator=g) / d_mlp ** 0.5,
        "W_U": torch.randn(d_model, d_vocab, generator=g) / d_model ** 0.5,
        "feature": randint(g, 0, d_sae - 1),
    }


LOGIT_WEIGHTS = Exercise(
    chapter=CHAPTER,
    name="logit_weights",
    reference=ref.logit_weights,
    make_inputs=_logit_inputs,
    default_cases=(1, 2, 0),  # square, square, rectangular (the seeds are hashed: see seed_for)
    misconceptions=(
        Misconception(
            "W_out left out",
            "The feature's direction lives in the MLP's HIDDEN space (d_mlp); the MLP's output weights W_out carry "
            "it into the residual stream before W_U can read it: W_dec[f] @ W_out @ W_U.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_U),
        Misconception(
            "W_U transposed",
            "W_U is [d_model, d_vocab] (TransformerLens layout): multiply by W_U itself, not W_U.T.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_out @ W_U.T),
        Misconception(
            "W_out transposed",
            "W_out is [d_mlp, d_model]: a hidden vector times W_out gives a residual vector. W_out.T goes the "
            "other way.",
            lambda W_dec, W_out, W_U, feature: W_dec[feature] @ W_out.T @ W_U),
        Misconception(
            "decoder column instead of row",
            "Feature f's direction is ROW f of W_dec ([d_sae, d_in], as in SAELens): W_dec[f], not the column "
            "W_dec[:, f].",
            lambda W_dec, W_out, W_U, feature: W_dec[:, feature] @ W_out @ W_U),
    ),
)


def logit_weights(fn, cases: Cases = None) -> None:
    """Check ``fn(W_dec, W_out, W_U, feature) -> [d_vocab]``."""
    run_check(LOGIT_WEIGHTS, fn, cases)


# =========================================================================== 3. Pearson correlation


def _pearson_inputs(seed: int) -> dict:
    g = rng(seed)
    if seed % 3 != 0:  # square: as many columns as tokens, so correlating over features runs
        n = randint(g, 6, 8)
        n_tokens, m, k = n, n, n
    else:
        n_tokens, m, k = randint(g, 20, 30), randint(g, 4, 6), randint(g, 7, 9)
    a = torch.relu(torch.randn(n_tokens, m, generator=g)) * (0.5 + 3 * torch.rand(m, generator=g)) + \
        2 * torch.rand(m, generator=g)
    b = 0.6 * a[:, torch.randint(0, m, (k,), generator=g)] + torch.randn(n_tokens, k, generator=g) + 1.5
    if seed % 2 == 0:
        b[:, randint(g, 0, k - 1)] = 0.0  # a dead feature: constant, so its correlation is set to 0
    return {"a": a, "b": b}


def _corr_no_centering(a, b):
    return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :])


def _corr_nan(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :])


PEARSON = Exercise(
    chapter=CHAPTER,
    name="pearson_correlation",
    reference=ref.pearson_correlation,
    make_inputs=_pearson_inputs,
    default_cases=(1, 0, 3, 4),  # square with a dead column, square, rectangular, square with a dead column
    misconceptions=(
        Misconception(
            "correlation over features",
            "Each column is one feature (or neuron) observed over many TOKENS (rows): centre and normalise each "
            "column over dim 0. You computed it over the features of each token (dim 1), which compares tokens, "
            "not features.",
            lambda a, b: ref.pearson_correlation(a.T, b.T)),
        Misconception(
            "not centred (cosine similarity)",
            "Subtract each column's mean over tokens before the dot products: without it you get the cosine "
            "similarity of the raw activations, which is large for any two features that are both usually "
            "positive.",
            lambda a, b: _corr_no_centering(a, b).nan_to_num(0.0)),
        Misconception(
            "covariance, not correlation",
            "Divide the centred dot products by both columns' norms (equivalently covariance / (std_a std_b)): a "
            "correlation lies in [-1, 1].",
            lambda a, b: (a - a.mean(0)).T @ (b - b.mean(0)) / len(a)),
        Misconception(
            "n and n - 1 mixed",
            "Your covariance divides by n but torch.std divides by n - 1 (or the other way): use the same "
            "convention in both, or simply divide centred dot products by the columns' norms.",
            lambda a, b: ((a - a.mean(0)).T @ (b - b.mean(0)) / len(a) / (a.std(0)[:, None] * b.std(0)[None, :]))
            .nan_to_num(0.0)),
    ),
)


NAN_EXPLANATION = (
    "A column that never varies (a dead feature) has norm 0 after centring, so 0/0 = NaN. Report 0 for it "
    "(torch.nan_to_num, or mask where a norm is 0): a NaN would poison every max and mean downstream.")


def _describe_pearson(inputs: dict, got, expected):
    """NaN where the reference has a constant column's 0: name the mistake (allclose cannot match NaN)."""
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(got).any():
        return NAN_EXPLANATION
    return None


def pearson_correlation(fn, cases: Cases = None) -> None:
    """Check ``fn(a[n_tokens, m], b[n_tokens, n]) -> [m, n]``."""
    run_described(PEARSON, fn, cases, _describe_pearson)


# =========================================================================== 4. specificity and sensitivity


def _spec_inputs(seed: int) -> dict:
    g = rng(seed)
    n = randint(g, 30, 50)
    hypothesis = torch.rand(n, generator=g) < 0.3
    hypothesis[:2] = torch.tensor([True, False])  # never empty, never everything
    fires = torch.where(hypothesis, torch.rand(n, generator=g) < 0.7, torch.rand(n, generator=g) < 0.2)
    fires[:2] = True  # fires somewhere, inside and outside the hypothesis
    acts = torch.where(fires, 0.05 + 2 * torch.rand(n, generator=g), torch.zeros(n))
    threshold = 0.0 if seed % 2 else float(0.5 * torch.rand((), generator=g))
    if threshold > 0:
        acts[0] = 1.5 + threshold  # keep the first two firing above the threshold
        acts[1] = 1.5 + threshold
    return {"acts": acts, "hypothesis": hypothesis, "threshold": threshold}


def _counts(acts, hypothesis, threshold, strict=True):
    fires = acts > threshold if strict else acts >= threshold
    both = (fires & hypothesis).sum().item()
    return both, fires.sum().item(), hypothesis.sum().item(), len(acts)


SPECIFICITY = Exercise(
    chapter=CHAPTER,
    name="specificity_sensitivity",
    reference=ref.specificity_sensitivity,
    make_inputs=_spec_inputs,
    default_cases=(0, 1, 2, 4),  # thresholds 0, > 0, 0, > 0
    misconceptions=(
        Misconception(
            "specificity and sensitivity swapped",
            "Specificity asks: when the feature fires, is the hypothesis true? (divide by the tokens where it "
            "fires). Sensitivity asks: when the hypothesis is true, does the feature fire? (divide by the "
            "hypothesis's tokens). You returned them the other way round.",
            lambda acts, hypothesis, threshold: ref.specificity_sensitivity(acts, hypothesis, threshold)[::-1]),
        Misconception(
            "counts instead of fractions",
            "Return fractions in [0, 1]: divide the tokens where both hold by the right total.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (float(b), float(b)))(
                *_counts(acts, hypothesis, threshold))),
        Misconception(
            "fraction of all tokens",
            "Divide by the tokens where the feature FIRES (specificity) and by the tokens the hypothesis covers "
            "(sensitivity), not by all tokens: rare hypotheses would always score near 0.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (b / n, b / n))(
                *_counts(acts, hypothesis, threshold))),
        Misconception(
            "fires at the threshold",
            "A feature fires where its activation is strictly ABOVE the threshold; with threshold 0, "
            "'acts >= 0' counts every token, since activations are never negative.",
            lambda acts, hypothesis, threshold: (lambda b, f, h, n: (b / f, b / h))(
                *_counts(acts, hypothesis, threshold, strict=False))),
    ),
)


def specificity_sensitivity(fn, cases: Cases = None) -> None:
    """Check ``fn(acts[n], hypothesis[n] bool, threshold) -> (specificity, sensitivity)``."""
    run_described(SPECIFICITY, fn, cases, describe_parts(("specificity", "sensitivity"),
                                                           SPECIFICITY.rtol, SPECIFICITY.atol))


# =========================================================================== 5-6. ablation and steering


def _edit_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = randint(g, 9, 12), randint(g, 4, 7), randint(g, 14, 18)
    b_dec = torch.randn(d_in, generator=g)
    W_dec = _unit_columns(torch.randn(d_in, d_sae, generator=g)).T.contiguous()  # [d_sae, d_in], unit rows
    W_enc = (W_dec + 0.5 * torch.randn(d_sae, d_in, generator=g)).T.contiguous()  # [d_in, d_sae], not W_dec.T
    feature = randint(g, 0, d_sae - 1)
    x = b_dec + 1.5 * torch.randn(batch, d_in, generator=g)
    b_enc = 0.3 * torch.randn(d_sae, generator=g)
    # the feature fires on most rows but not all, so the ReLU matters
    pre = (x - b_dec) @ W_enc[:, feature]
    b_enc[feature] = -float(pre.quantile(0.3))
    return {"x": x, "W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "feature": feature}


def _f(x, W_enc, b_enc, b_dec, feature):
    return ref.feature_activation(x, W_enc, b_enc, b_dec, feature)[:, None]


def _reconstruction(x, W_enc, b_enc, W_dec, b_dec):
    return torch.relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec


ABLATE = Exercise(
    chapter=CHAPTER,
    name="ablate_feature",
    reference=ref.ablate_feature,
    make_inputs=_edit_inputs,
    misconceptions=(
        Misconception(
            "whole reconstruction subtracted",
            "Remove ONE feature's term, f_i(x) W_dec[i]; you subtracted the SAE's whole reconstruction, which "
            "deletes every feature at once (and leaves only the reconstruction error).",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _reconstruction(x, W_enc, b_enc, W_dec, b_dec)),
        Misconception(
            "returned the reconstruction without the feature",
            "Edit x itself, not the SAE's reconstruction of it: x - f_i W_dec[i] keeps the part of x the SAE "
            "fails to reconstruct, so the only change the model sees is the feature's.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: _reconstruction(x, W_enc, b_enc, W_dec, b_dec)
            - _f(x, W_enc, b_enc, b_dec, feature) * W_dec[feature]),
        Misconception(
            "encoder column instead of decoder row",
            "A feature WRITES along its decoder row W_dec[i]; the encoder column W_enc[:, i] is the direction it "
            "READS from, and in general points elsewhere.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _f(x, W_enc, b_enc, b_dec, feature)
            * W_enc[:, feature]),
        Misconception(
            "not scaled by the activation",
            "Subtract f_i(x) W_dec[i], the feature's contribution on EACH input: where it is off, nothing "
            "should change, and where it is strong, more is removed.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - W_dec[feature]),
        Misconception(
            "pre-activation instead of activation",
            "The feature's contribution uses its activation f_i = ReLU(...), not the pre-activation: where the "
            "pre-activation is negative, the feature is off and contributes nothing.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - (((x - b_dec) @ W_enc[:, feature]
                                                               + b_enc[feature])[:, None] * W_dec[feature])),
        Misconception(
            "b_dec not subtracted",
            "Encode x - b_dec, as the SAE does: f_i = ReLU((x - b_dec) @ W_enc[:, i] + b_enc[i]).",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _f(x, W_enc, b_enc, torch.zeros_like(b_dec), feature)
            * W_dec[feature]),
    ),
)


def ablate_feature(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, feature) -> x without feature's term``."""
    run_check(ABLATE, fn, cases)


def _steer_inputs(seed: int) -> dict:
    inputs = _edit_inputs(seed)
    inputs["value"] = 2.0 + 6.0 * float(torch.rand((), generator=rng(seed + 1)))
    return inputs


STEER = Exercise(
    chapter=CHAPTER,
    name="steer_feature",
    reference=ref.steer_feature,
    make_inputs=_steer_inputs,
    misconceptions=(
        Misconception(
            "encoder column instead of decoder row",
            "Steer along the direction the feature WRITES: its decoder row W_dec[i]. The encoder column "
            "W_enc[:, i] is what the feature reads, not what downstream layers see when it fires.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: x + (value - _f(x, W_enc, b_enc, b_dec, feature))
            * W_enc[:, feature]),
        Misconception(
            "added instead of clamped",
            "Clamping sets the feature TO the value: remove its current term and add value * W_dec[i], i.e. "
            "x + (value - f_i(x)) W_dec[i]. Adding value * W_dec[i] on top of what is there overshoots "
            "wherever the feature was already on.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: x + value * W_dec[feature]),
        Misconception(
            "replaced x by the feature",
            "Keep the rest of x: only the feature's own term changes. Returning value * W_dec[i] (+ b_dec) "
            "throws away every other feature.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: (value * W_dec[feature] + b_dec).expand_as(x)),
    ),
)


def steer_feature(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, feature, value) -> x with the feature clamped to value``."""
    run_check(STEER, fn, cases)


# =========================================================================== 7. matching features


def _match_inputs(seed: int) -> dict:
    g = rng(seed)
    if seed % 3 != 0:
        n_a = n_b = randint(g, 6, 9)
    else:
        n_a, n_b = randint(g, 5, 7), randint(g, 9, 12)
    corr = 2 * torch.rand(n_a, n_b, generator=g) - 1
    corr[0, 0] = -0.99  # a strongly ANTI-correlated pair: not a match
    return {"corr": corr}


MATCH = Exercise(
    chapter=CHAPTER,
    name="match_features",
    reference=ref.match_features,
    make_inputs=_match_inputs,
    default_cases=(1, 3, 0),  # square, square, rectangular
    misconceptions=(
        Misconception(
            "maximum over the wrong axis",
            "Row i of corr is feature i of dictionary A against every feature of B: take the max over dim=1 "
            "(along the row). dim=0 finds, for each feature of B, its best match in A.",
            lambda corr: tuple(corr.max(dim=0))),
        Misconception(
            "absolute correlation",
            "A match fires on the same tokens: its correlation is close to +1. A correlation near -1 means the "
            "two features are on at opposite times; do not take abs().",
            lambda corr: (lambda v, i: (corr.gather(1, i[:, None])[:, 0].abs(), i))(*corr.abs().max(dim=1))),
        Misconception(
            "minimum",
            "The best match is the LARGEST correlation (max), not the smallest.",
            lambda corr: tuple(corr.min(dim=1))),
    ),
)


def match_features(fn, cases: Cases = None) -> None:
    """Check ``fn(corr[n_a, n_b]) -> (best_corr[n_a], best_index[n_a])``."""
    run_described(MATCH, fn, cases, describe_parts(("best_corr", "best_index"), MATCH.rtol, MATCH.atol))


# =========================================================================== 8. human ratings vs an automatic score


def _rubric_inputs(seed: int) -> dict:
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
    make_inputs=_rubric_inputs,
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


def _attribution_inputs(seed: int) -> dict:
    g = rng(seed)
    if square_case("feature_logit_attribution", seed):  # d_sae = d_mlp: a decoder column still runs
        d_mlp = d_sae = randint(g, 8, 10)
    else:
        d_mlp, d_sae = randint(g, 6, 8), randint(g, 11, 14)
    d_model, d_vocab, seq = randint(g, 4, 5), randint(g, 15, 19), randint(g, 6, 9)
    f = torch.relu(torch.randn(seq, d_sae, generator=g) - 0.3) * 3
    position = randint(g, 1, seq - 2)
    f[position, :2] = torch.tensor([0.0, 2.5])  # some features off, some on, at the position itself
    W_dec = _unit_columns(torch.randn(d_mlp, d_sae, generator=g)).T.contiguous()  # [d_sae, d_mlp], unit rows
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
    make_inputs=_attribution_inputs,
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


# =========================================================================== multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


neuron_question = question(CHAPTER, "neuron_question")
specificity_question = question(CHAPTER, "specificity_question")
universality_question = question(CHAPTER, "universality_question")
