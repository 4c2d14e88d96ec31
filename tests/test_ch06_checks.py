"""Chapter 06's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter: the cases that
rectangular shapes, thresholds, ties and switched-off features need, tuple answers, NaN named."""
import numpy as np
import pytest
import torch

from utils.checks import CheckFailure
from utils.checks import ch06 as check
from utils.checks.ch06_effects import edit_inputs
from utils.checks.ch06_hunt import attribution_inputs, rubric_inputs
from utils.checks.core import seed_for
from utils.features import exercises as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- correct alternatives


def top_sort(acts, k):
    values, order = acts.reshape(-1).sort(descending=True)
    seqs, positions = np.unravel_index(order[:k].numpy(), tuple(acts.shape))
    return torch.as_tensor(seqs), torch.as_tensor(positions), values[:k]


def top_loops(acts, k):
    pairs = sorted(((acts[s, p].item(), s, p) for s in range(acts.shape[0]) for p in range(acts.shape[1])),
                   reverse=True)[:k]
    return (torch.tensor([s for _, s, _ in pairs]), torch.tensor([p for _, _, p in pairs]),
            torch.tensor([v for v, _, _ in pairs]))


def logits_einsum(W_dec, W_out, W_U, feature):
    return torch.einsum("m,md,dv->v", W_dec[feature], W_out, W_U)


def logits_virtual_weights(W_dec, W_out, W_U, feature):
    return (W_out @ W_U).T @ W_dec[feature]  # the MLP->logit "virtual weight" first


def pearson_numpy(a, b):
    m = a.shape[1]
    full = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:m, m:]
    return torch.from_numpy(np.nan_to_num(full, nan=0.0))


def pearson_standardise(a, b):
    za = (a - a.mean(0)) / a.std(0, correction=0)
    zb = (b - b.mean(0)) / b.std(0, correction=0)
    return (za.T @ zb / len(a)).nan_to_num(0.0)


def spec_loops(acts, hypothesis, threshold):
    fires = [a > threshold for a in acts.tolist()]
    hyp = hypothesis.tolist()
    both = sum(f and h for f, h in zip(fires, hyp))
    return both / sum(fires), both / sum(hyp)


def spec_tensors(acts, hypothesis, threshold):
    fires = acts > threshold
    return (hypothesis[fires].float().mean(), fires[hypothesis].float().mean())  # 0-d tensors are fine


def ablate_via_reconstruction(x, W_enc, b_enc, W_dec, b_dec, feature):
    """Anthropic's form: reconstruction with the feature zeroed, plus the SAE's error term."""
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    error = x - (f @ W_dec + b_dec)
    f[:, feature] = 0
    return f @ W_dec + b_dec + error


def ablate_einsum(x, W_enc, b_enc, W_dec, b_dec, feature):
    f = torch.relu(torch.einsum("bd,d->b", x - b_dec, W_enc[:, feature]) + b_enc[feature])
    return x - torch.einsum("b,d->bd", f, W_dec[feature])


def steer_via_reconstruction(x, W_enc, b_enc, W_dec, b_dec, feature, value):
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    error = x - (f @ W_dec + b_dec)
    f[:, feature] = value
    return f @ W_dec + b_dec + error


def steer_ablate_then_add(x, W_enc, b_enc, W_dec, b_dec, feature, value):
    return ref.ablate_feature(x, W_enc, b_enc, W_dec, b_dec, feature) + value * W_dec[feature]


def match_loops(corr):
    best = [max(range(corr.shape[1]), key=lambda j: corr[i, j].item()) for i in range(corr.shape[0])]
    return torch.tensor([corr[i, j].item() for i, j in enumerate(best)]), torch.tensor(best)


def match_argmax(corr):
    idx = corr.argmax(dim=1)
    return corr.gather(1, idx[:, None])[:, 0], idx


def rubric_scipy(ratings, rated, auto_features, auto_scores, threshold):
    from scipy.stats import spearmanr

    table = dict(zip(auto_features.tolist(), auto_scores.tolist()))
    scores = [table[f] for f in rated.tolist()]
    return sum(r > threshold for r in ratings.tolist()) / len(ratings), spearmanr(ratings.tolist(), scores)[0]


def rubric_tensors(ratings, rated, auto_features, auto_scores, threshold):
    """Alignment by a boolean match matrix, average ranks by counting (0-d tensors returned)."""
    scores = ((rated[:, None] == auto_features[None, :]).double() * auto_scores.double()).sum(1)

    def ranks(v):
        return (v[None, :] < v[:, None]).sum(1).double() + ((v[None, :] == v[:, None]).sum(1).double() - 1) / 2

    x, y = ranks(ratings.double()), ranks(scores)
    x, y = x - x.mean(), y - y.mean()
    return (ratings > threshold).float().mean(), (x @ y) / (x.norm() * y.norm())


def attribution_loops(f, W_dec, W_out, W_U, scale, tokens, position):
    """Only the active features, one at a time: the inactive ones stay 0."""
    out = torch.zeros(W_dec.shape[0])
    target = int(tokens[position + 1])
    for i in (f[position] > 0).nonzero()[:, 0].tolist():
        write = f[position, i] * W_dec[i] @ W_out
        out[i] = ((write - write.mean()) / scale[position]) @ W_U[:, target]
    return out


def attribution_centred_unembed(f, W_dec, W_out, W_U, scale, tokens, position):
    """centre(v) . u = v . centre(u): centre the unembedding column instead of every write."""
    u = W_U[:, tokens[position + 1]]
    return f[position] / scale[position] * (W_dec @ (W_out @ (u - u.mean())))


def attribution_einsum(f, W_dec, W_out, W_U, scale, tokens, position):
    writes = torch.einsum("sm,md->sd", W_dec, W_out)
    writes = writes - writes.mean(1, keepdim=True)
    return torch.einsum("s,sd,d->s", f[position], writes, W_U[:, tokens[position + 1]]) / scale[position]


def split_normal_equations(parent, children):
    """Centre everything, solve (C^T C) w = C^T y, recover the intercept from the means; R^2 from
    variances (numpy, float64)."""
    C, y = children.double().numpy(), parent.double().numpy()
    Cc, yc = C - C.mean(0), y - y.mean()
    w = np.linalg.solve(Cc.T @ Cc, Cc.T @ yc)
    b = y.mean() - C.mean(0) @ w
    r2 = 1 - np.var(y - C @ w - b) / np.var(y)
    return torch.tensor(w, dtype=torch.float32), float(b), float(r2)


def split_pinv(parent, children):
    """The pseudo-inverse of [children, 1] in float32; R^2 as the squared correlation of y with the fit."""
    X = torch.cat([children, torch.ones(len(children), 1)], dim=1)
    w = torch.linalg.pinv(X.double()) @ parent.double()
    r = torch.corrcoef(torch.stack([parent.double(), X.double() @ w]))[0, 1]
    return w[:-1], w[-1], r ** 2


CORRECT = {
    "top_activating": [ref.top_activating, top_sort, top_loops],
    "logit_weights": [ref.logit_weights, logits_einsum, logits_virtual_weights],
    "pearson_correlation": [ref.pearson_correlation, pearson_numpy, pearson_standardise],
    "specificity_sensitivity": [ref.specificity_sensitivity, spec_loops, spec_tensors],
    "ablate_feature": [ref.ablate_feature, ablate_via_reconstruction, ablate_einsum],
    "steer_feature": [ref.steer_feature, steer_via_reconstruction, steer_ablate_then_add],
    "match_features": [ref.match_features, match_loops, match_argmax],
    "split_regression": [ref.split_regression, split_normal_equations, split_pinv],
    "rubric_agreement": [ref.rubric_agreement, rubric_scipy, rubric_tensors],
    "feature_logit_attribution": [ref.feature_logit_attribution, attribution_loops, attribution_centred_unembed,
                                  attribution_einsum],
}
HIDDEN_CASES = (7, 8, 9)
# specificity_sensitivity: on cases 1 and 4, firing at the threshold (>= for >) gives the reference's
# answer. The first case tells every variant apart.
TOLD_APART_ON_THE_FIRST_CASE_ONLY = {"specificity_sensitivity"}


def test_rectangular_cases_catch_what_square_ones_cannot():
    """A transposition that happens to run on square inputs, and is right there by symmetry of the
    random draw, still fails: every exercise with square cases also has a rectangular one."""
    for ex in (check.LOGIT_WEIGHTS, check.PEARSON, check.MATCH):
        shapes = [tuple(v.shape) for c in ex.default_cases
                  for v in ex.make_inputs(seed_for(ex.name, c)).values() if isinstance(v, torch.Tensor)]
        assert any(len(set(s)) > 1 for s in shapes if len(s) == 2)
    with pytest.raises(CheckFailure):
        check.logit_weights(lambda W_dec, W_out, W_U, feature: (W_U.T @ (W_out.T @ W_dec[feature]))
                            if W_U.shape[0] == W_U.shape[1] else W_dec[feature] @ W_out @ W_U.T)


def test_rubric_cases_hold_a_rating_at_the_threshold_and_a_tie():
    """Every case can tell > from >= and averaged from arbitrary tie ranks, and needs a look-up:
    the table is in its own order and longer than the ratings."""
    for case in (*check.RUBRIC.default_cases, 101, 102):
        inputs = rubric_inputs(seed_for("rubric_agreement", case))
        ratings = inputs["ratings"]
        assert (ratings == inputs["threshold"]).any() and len(ratings.unique()) < len(ratings)
        assert len(inputs["auto_features"]) > len(ratings)
        assert not torch.equal(inputs["rated"], inputs["auto_features"][:len(ratings)])


def test_attribution_cases_catch_the_transposed_decoder_by_shape_too():
    """The first case is square (d_sae = d_mlp) so a decoder column runs and is named; the others are
    rectangular, where it fails on shape."""
    shapes = [tuple(attribution_inputs(seed_for("feature_logit_attribution", c))["W_dec"].shape)
              for c in check.ATTRIBUTION.default_cases]
    assert shapes[0][0] == shapes[0][1] and all(a != b for a, b in shapes[1:])


def test_edit_inputs_switch_the_feature_on_and_off():
    """Ablation cases must have rows where the feature is off and rows where it is on."""
    for case in check.ABLATE.default_cases:
        inputs = edit_inputs(seed_for("ablate_feature", case))
        f = ref.feature_activation(inputs["x"], inputs["W_enc"], inputs["b_enc"], inputs["b_dec"], inputs["feature"])
        assert (f == 0).any() and (f > 0).any()


# --------------------------------------------------------------------------- other failures


def test_stub_and_crash_fail_clearly(capsys):
    with pytest.raises(CheckFailure, match="raised RuntimeError"):
        check.logit_weights(lambda W_dec, W_out, W_U, feature: W_dec[feature] @ torch.ones(3, 2))  # shapes clash
    with pytest.raises(CheckFailure, match="pass your function"):
        check.match_features("max")
    assert capsys.readouterr().err == ""


def test_tuple_answers_say_which_part_is_wrong():
    with pytest.raises(CheckFailure, match=r"positions is wrong"):
        check.top_activating(lambda acts, k: (lambda s, p, v: (s, p + 1, v))(*ref.top_activating(acts, k)))
    with pytest.raises(CheckFailure, match=r"return a tuple of 2 values \(best_corr, best_index\)"):
        check.match_features(lambda corr: corr.max(dim=1).values)
    with pytest.raises(CheckFailure, match=r"sensitivity is wrong: Got"):
        check.specificity_sensitivity(lambda acts, hypothesis, threshold:
                                      (ref.specificity_sensitivity(acts, hypothesis, threshold)[0], 0.5))


def test_nan_for_a_dead_column_is_named():
    def no_guard(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :])

    with pytest.raises(CheckFailure) as info:
        check.pearson_correlation(no_guard)
    assert check.NAN_EXPLANATION in str(info.value)
    with pytest.raises(CheckFailure) as info:
        check.pearson_correlation(lambda a, b: torch.corrcoef(torch.cat([a, b], 1).T)[:a.shape[1], a.shape[1]:])
    assert check.NAN_EXPLANATION in str(info.value)


def test_unknown_wrong_answer_reports_location():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.ablate_feature(lambda **kw: ref.ablate_feature(**kw) + 0.01)


def test_split_regression_recovers_a_planted_family():
    """A parent built exactly from its children (no noise) is explained fully, with the planted
    weights and intercept; pure noise is explained by almost nothing."""
    g = torch.Generator().manual_seed(0)
    children = torch.relu(torch.randn(500, 3, generator=g))
    weights, intercept, r2 = ref.split_regression(children @ torch.tensor([2.0, 0.5, 1.0]) + 0.3, children)
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.5, 1.0]), rtol=1e-4, atol=1e-4)
    assert abs(intercept - 0.3) < 1e-4 and abs(r2 - 1) < 1e-6
    _, _, r2_noise = ref.split_regression(torch.randn(500, generator=g), children)
    assert 0 <= r2_noise < 0.02
