"""Chapter 05's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways, and the catalogued resampling mistakes in the calling convention
a student writes), and the tests particular to this chapter: Adam-state mistakes as a student
writes them, tuple answers, the real recovery case, the geometric median's convergence."""
import pytest
import torch
import torch.nn.functional as F

from utils.checks import CheckFailure
from utils.checks import ch05 as check
from utils.checks.ch05_recovery import real_recovery_inputs
from utils.sae import exercises as ref
from utils.sae import fraction_variance_explained, geometric_median, l0, topk_relu

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- correct alternatives


def recovery_einsum(true_directions, W_enc, W_dec):
    t = true_directions / torch.linalg.vector_norm(true_directions, dim=0)
    d = W_dec / torch.linalg.vector_norm(W_dec, dim=1, keepdim=True)
    return torch.einsum("di,jd->ij", t, d).amax(dim=-1)


def recovery_cosine_similarity(true_directions, W_enc, W_dec):
    """F.cosine_similarity on every (true, SAE) pair by broadcasting, in float64."""
    cos = F.cosine_similarity(true_directions.double().T[:, None, :], W_dec.double()[None, :, :], dim=-1)
    return cos.max(dim=1).values


def recovery_loops(true_directions, W_enc, W_dec):
    best = []
    for i in range(true_directions.shape[1]):
        t = true_directions[:, i] / true_directions[:, i].norm()
        best.append(max(float(t @ W_dec[j] / W_dec[j].norm()) for j in range(W_dec.shape[0])))
    return torch.tensor(best)


def forward_einsum(x, W_enc, b_enc, W_dec, b_dec):
    f = torch.relu(torch.einsum("ds,bd->bs", W_enc, x - b_dec) + b_enc)
    return f, torch.einsum("sd,bs->bd", W_dec, f) + b_dec


def forward_folded_bias(x, W_enc, b_enc, W_dec, b_dec):
    f = F.linear(x, W_enc.T, b_enc - b_dec @ W_enc).relu()  # the trainer's form
    return f, F.linear(f, W_dec.T, b_dec)


def forward_float64_list(x, W_enc, b_enc, W_dec, b_dec):
    f, x_hat = ref.sae_forward(x.double(), W_enc.double(), b_enc.double(), W_dec.double(), b_dec.double())
    return [f, x_hat]  # a list is as good as a tuple


def loss_norms(x, x_hat, f, W_dec, l1_coeff):
    return (x - x_hat).norm(dim=-1).pow(2).mean() + l1_coeff * f.norm(p=1, dim=-1).mean()


def loss_mse_sum(x, x_hat, f, W_dec, l1_coeff):
    return F.mse_loss(x_hat, x, reduction="sum") / len(x) + l1_coeff * f.abs().sum() / len(x)


def loss_decoder_weighted(x, x_hat, f, W_dec, l1_coeff):
    """Anthropic's later form, λ Σ f_i ||d_i||: the same number for unit-norm rows."""
    return (x - x_hat).pow(2).sum(-1).mean() + l1_coeff * (f * W_dec.norm(dim=1)).sum(-1).mean()


def normalize_functional(W_dec):
    return F.normalize(W_dec, dim=1)


def normalize_linalg(W_dec):
    return W_dec / torch.linalg.vector_norm(W_dec, dim=1, keepdim=True)


def project_unit(W_dec, grad):
    d = W_dec / W_dec.norm(dim=1, keepdim=True)
    return grad - (grad * d).sum(1, keepdim=True) * d


def project_einsum(W_dec, grad):
    coeff = torch.einsum("sd,sd->s", grad, W_dec) / torch.einsum("sd,sd->s", W_dec, W_dec)
    return grad - torch.einsum("s,sd->sd", coeff, W_dec)


def median_float32_tol(points):
    y = points.mean(0)
    for _ in range(500):
        w = 1 / (points - y).norm(dim=1).clamp_min(1e-8)
        y_next = (w[:, None] * points).sum(0) / w.sum()
        if (y_next - y).norm() < 1e-7:
            return y_next
        y = y_next
    return y


def median_from_coordinate_median(points):
    y = points.median(0).values.double()
    x = points.double()
    for _ in range(100):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-10)
        y = w @ x / w.sum()
    return y.float()


def l0_count_nonzero(f):
    return torch.count_nonzero(f, dim=-1).float().mean()


def l0_item(f):
    return (f > 0).sum().item() / f.shape[0]


def fve_var(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum(-1).mean() / x.var(0, unbiased=False).sum()


def fve_mse(x, x_hat):
    return 1 - F.mse_loss(x_hat, x) / (x - x.mean(0)).pow(2).mean()


def ce_one_minus(ce_clean, ce_sae, ce_zero_ablation):
    return 1 - (ce_sae - ce_clean) / (ce_zero_ablation - ce_clean)


def ce_tensor(ce_clean, ce_sae, ce_zero_ablation):
    t = torch.tensor([ce_clean, ce_sae, ce_zero_ablation], dtype=torch.float64)
    return (t[2] - t[1]) / (t[2] - t[0])


def dead_dense_tensors(density, dense_threshold):
    return (density == 0).float().mean(), (density > dense_threshold).float().mean()


def dead_dense_counts_over_n(density, dense_threshold):
    n = density.numel()
    return [int((density == 0).sum()) / n, int((density > dense_threshold).sum()) / n]


def resample_in_place(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
    """Edits the arguments in place, loops over the dead features, and returns them."""
    live_norm = W_enc[:, ~dead].norm(dim=0).mean()
    for j, i in enumerate(dead.nonzero().flatten().tolist()):
        direction = replacement_inputs[j] - b_dec
        direction = direction / direction.norm()
        W_dec[i] = direction
        W_enc[:, i] = 0.2 * live_norm * direction
        b_enc[i] = 0
        for state in (exp_avg, exp_avg_sq):
            state["W_enc"][:, i] = 0
            state["b_enc"][i] = 0
            state["W_dec"][i] = 0
    return W_enc, b_enc, W_dec, exp_avg, exp_avg_sq


def resample_masks(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
    keep = (~dead).float()
    directions = F.normalize(replacement_inputs - b_dec, dim=-1)
    new_W_enc = W_enc * keep
    new_W_enc[:, dead] = directions.T * 0.2 * W_enc[:, ~dead].norm(dim=0).mean()
    new_W_dec = W_dec * keep[:, None]
    new_W_dec[dead] = directions
    masks = {"W_enc": keep[None, :], "b_enc": keep, "W_dec": keep[:, None]}
    return (new_W_enc, b_enc * keep, new_W_dec, {k: v * masks[k] for k, v in exp_avg.items()},
            {k: v * masks[k] for k, v in exp_avg_sq.items()})


def probabilities_loops(x, W_enc, b_enc, W_dec, b_dec, l1_coeff):
    """One input at a time, in float64, with the all-zero case handled by torch.where."""
    losses = []
    for row in x.double():
        f = torch.relu((row - b_dec.double()) @ W_enc.double() + b_enc.double())
        x_hat = f @ W_dec.double() + b_dec.double()
        losses.append(((row - x_hat) ** 2).sum() + l1_coeff * f.abs().sum())
    w = torch.stack(losses) ** 2
    return torch.where(w.sum() > 0, w / w.sum().clamp_min(1e-300), torch.ones_like(w) / len(w))


def probabilities_log_space(x, W_enc, b_enc, W_dec, b_dec, l1_coeff):
    """Normalised in log space (softmax of 2 log loss): the same distribution."""
    f, x_hat = ref.sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    loss = F.mse_loss(x_hat, x, reduction="none").sum(-1) + l1_coeff * f.norm(p=1, dim=-1)
    if not (loss > 0).any():
        return torch.full_like(loss, 1.0 / len(loss))
    return torch.softmax(2 * loss.log(), dim=0)


def topk_relu_first(z, k):
    values, indices = torch.relu(z).topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, indices, values)


def topk_threshold(z, k):
    kth = z.topk(k, dim=-1).values[..., -1:]
    return torch.relu(z * (z >= kth))


def topk_loops(z, k):
    out = torch.zeros_like(z)
    for row in range(z.shape[0]):
        for i in sorted(range(z.shape[1]), key=lambda i: -z[row, i].item())[:k]:
            out[row, i] = max(z[row, i].item(), 0.0)
    return out


CORRECT = {
    "feature_recovery": [ref.feature_recovery, recovery_einsum, recovery_cosine_similarity, recovery_loops],
    "sae_forward": [ref.sae_forward, forward_einsum, forward_folded_bias, forward_float64_list],
    "sae_loss": [ref.sae_loss, loss_norms, loss_mse_sum, loss_decoder_weighted],
    "normalize_decoder": [ref.normalize_decoder, normalize_functional, normalize_linalg],
    "remove_parallel_grad": [ref.remove_parallel_grad, project_unit, project_einsum],
    "geometric_median": [lambda points: geometric_median(points), median_float32_tol, median_from_coordinate_median],
    "l0": [l0, l0_count_nonzero, l0_item],
    "fraction_variance_explained": [fraction_variance_explained, fve_var, fve_mse],
    "ce_loss_recovered": [ref.ce_loss_recovered, ce_one_minus, ce_tensor],
    "dead_dense_fractions": [ref.dead_dense_fractions, dead_dense_tensors, dead_dense_counts_over_n],
    "resample_dead_features": [ref.resample_dead_features, resample_in_place, resample_masks],
    "resampling_probabilities": [ref.resampling_probabilities, probabilities_loops, probabilities_log_space],
    "topk_activation": [topk_relu, topk_relu_first, topk_threshold, topk_loops],
}
HIDDEN_CASES = (7, 8)


# --------------------------------------------------------------------------- mistakes as a student writes them


def _student_convention(flat_variant):
    """A catalogued resampling variant (flat inputs and outputs) as a student would write it."""
    keys = check.STATE_KEYS

    def fn(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
        state = {f"exp_avg_{k}": exp_avg[k] for k in keys} | {f"exp_avg_sq_{k}": exp_avg_sq[k] for k in keys}
        out = flat_variant(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, **state)
        return out[0], out[1], out[2], dict(zip(keys, out[3:6])), dict(zip(keys, out[6:9]))
    return fn


# The catalogue's resampling variants take and return flat tensors; a student's takes and returns
# the optimizer state as dicts (the contract submits these).
AS_SUBMITTED = {"resample_dead_features": {wrong.name: _student_convention(wrong.implementation)
                                           for wrong in check.RESAMPLE.misconceptions}}


def resample_forgetting_adam(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
    """The realistic way to leave Adam alone: resample the weights and hand the state back as it was."""
    W_enc, b_enc, W_dec, _, _ = ref.resample_dead_features(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs,
                                                           exp_avg, exp_avg_sq)
    return W_enc, b_enc, W_dec, exp_avg, exp_avg_sq


def resample_fresh_adam(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
    """... and the heavy-handed one: a brand-new optimizer state."""
    W_enc, b_enc, W_dec, _, _ = ref.resample_dead_features(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs,
                                                           exp_avg, exp_avg_sq)
    zeros = lambda state: {k: torch.zeros_like(v) for k, v in state.items()}  # noqa: E731
    return W_enc, b_enc, W_dec, zeros(exp_avg), zeros(exp_avg_sq)


@pytest.mark.parametrize("fn,name", [(resample_forgetting_adam, "Adam state untouched"),
                                     (resample_fresh_adam, "all Adam state reset")])
def test_hand_written_adam_mistakes_are_named(fn, name):
    wrong = next(m for m in check.RESAMPLE.misconceptions if m.name == name)
    with pytest.raises(CheckFailure) as info:
        check.resample_dead_features(fn)
    assert wrong.explanation in str(info.value)


# --------------------------------------------------------------------------- other failures


def test_stub_and_crash_fail_clearly(capsys):
    with pytest.raises(CheckFailure, match="raised RuntimeError"):
        check.sae_forward(lambda x, W_enc, b_enc, W_dec, b_dec: (x @ W_enc.T, x))  # the old layout's transpose
    with pytest.raises(CheckFailure, match="pass your function"):
        check.resample_dead_features(None)
    with pytest.raises(CheckFailure, match="pass your function"):
        check.l0(3)
    assert capsys.readouterr().err == ""


def test_tuple_answers_say_which_part_is_wrong():
    with pytest.raises(CheckFailure, match=r"return a tuple of 2 values \(f, x_hat\); you returned a Tensor"):
        check.sae_forward(lambda x, W_enc, b_enc, W_dec, b_dec: ref.sae_forward(x, W_enc, b_enc, W_dec, b_dec)[0])
    with pytest.raises(CheckFailure, match=r"x_hat is wrong\. .*max abs error"):
        check.sae_forward(lambda **kw: (ref.sae_forward(**kw)[0], ref.sae_forward(**kw)[1] + 0.1))
    with pytest.raises(CheckFailure, match=r"x_hat is wrong\. .*times 1\.1 everywhere"):
        check.sae_forward(lambda **kw: (ref.sae_forward(**kw)[0], ref.sae_forward(**kw)[1] * 1.1))
    with pytest.raises(CheckFailure, match=r"the dense fraction is wrong: Got 0\.5, expected .* \(relative error"):
        check.dead_dense_fractions(lambda density, dense_threshold: (float((density == 0).float().mean()), 0.5))
    with pytest.raises(CheckFailure, match=r"exp_avg_sq\['b_enc'\] is wrong"):
        def half_reset(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq):
            out = ref.resample_dead_features(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq)
            out[4]["b_enc"] = exp_avg_sq["b_enc"]  # forgot one entry
            return out
        check.resample_dead_features(half_reset)


def test_resampling_answer_shape_is_explained():
    with pytest.raises(CheckFailure, match=r"return \(W_enc, b_enc, W_dec, exp_avg, exp_avg_sq\).*None"):
        check.resample_dead_features(lambda **kw: None)
    with pytest.raises(CheckFailure, match="your exp_avg_sq is not such a dict"):
        check.resample_dead_features(lambda **kw: ref.resample_dead_features(**kw)[:4] + ([1, 2, 3],))


@pytest.mark.slow
def test_recovery_real_case_is_the_chapters_toy_run():
    """The check's real case: chapter 04's toy model and the SAE trained on its hidden layer, in which
    every true feature is found (so a correct answer there is all cosines near 1)."""
    inputs = real_recovery_inputs()
    assert inputs["true_directions"].shape == (10, 40) and inputs["W_dec"].shape == (80, 10)
    assert inputs["W_enc"].shape == (10, 80)
    assert ref.feature_recovery(**inputs).min() > 0.9


def test_recovery_wrong_axis_is_named_by_its_shape():
    with pytest.raises(CheckFailure, match="one score per TRUE feature"):
        check.feature_recovery(lambda true_directions, W_enc, W_dec: recovery_einsum(W_dec.T, W_enc, true_directions.T))


def test_unconverged_median_is_explained():
    def few_steps(points):
        y = points.mean(0)
        for _ in range(2):
            w = 1 / (points - y).norm(dim=1)
            y = (w[:, None] * points).sum(0) / w.sum()
        return y

    with pytest.raises(CheckFailure, match="better than the mean but not yet the median"):
        check.geometric_median(few_steps)
    with pytest.raises(CheckFailure, match="Sum of distances"):
        check.geometric_median(lambda points: points[0])


def test_unknown_wrong_answer_reports_location():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.normalize_decoder(lambda W_dec: ref.normalize_decoder(W_dec) + 0.01)
    with pytest.raises(CheckFailure, match="Got"):
        check.ce_loss_recovered(lambda ce_clean, ce_sae, ce_zero_ablation: 0.5)


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(W_dec):
        out = ref.normalize_decoder(W_dec)
        W_dec.zero_()
        return out

    check.normalize_decoder(mutating)
    check.resample_dead_features(resample_in_place)  # edits every argument it is given
