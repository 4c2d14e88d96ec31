"""Chapter 04's training-loop check (utils/checks/ch04_training.py): the data tests/test_check_contract.py
runs the contract on (two correct loops written differently, and each catalogued broken loop as a
student writes it), and the tests particular to an outcome-graded training exercise.

Every call of the check trains six toy models for 3000 steps (a few seconds on one core), so this
file keeps to one hidden case and marks its seed sweep slow."""
import math

import pytest
import torch
from torch import nn

from utils.checks import CheckFailure
from utils.checks import ch04 as check
from utils.checks import ch04_training as training
from utils.checks.core import seed_for
from utils.superposition import exercises as ref

# --------------------------------------------------------------------------- the student's pieces


def toy_forward(W, b, x):
    h = torch.einsum("ihf,ibf->ibh", W, x)
    return torch.relu(torch.einsum("ihf,ibh->ibf", W, h) + b[:, None, :])


def generate_batch(batch_size, feature_probability):
    shape = (feature_probability.shape[0], batch_size, feature_probability.shape[1])
    return torch.rand(shape) * (torch.rand(shape) < feature_probability[:, None, :])


def weighted_loss(out, x, importance):
    return (importance[:, None, :] * (x - out) ** 2).sum() / x.shape[1]


# --------------------------------------------------------------------------- correct loops


def loop_parameters(W, b, importance, feature_probability, steps, batch_size, lr):
    """Written another way: nn.Parameters, a Bernoulli generator, per-instance losses summed,
    gradients set to None after each step, fused Adam."""
    W, b = nn.Parameter(W.clone()), nn.Parameter(b.clone())
    opt = torch.optim.Adam([W, b], lr=lr, fused=True)
    p = feature_probability[:, None, :].expand(-1, batch_size, -1)
    for _ in range(steps):
        with torch.enable_grad():
            x = torch.bernoulli(p) * torch.rand(p.shape)
            out = torch.relu(x @ (W.transpose(1, 2) @ W) + b[:, None, :])
            per_instance = ((out - x) ** 2 * importance[:, None, :]).sum(-1).mean(-1)
            per_instance.sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return W.data, b.data


def loop_student(W, b, importance, feature_probability, steps, batch_size, lr):
    """The notebook's solution, on the student's own pieces."""
    W = W.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            x = generate_batch(batch_size, feature_probability)
            loss = weighted_loss(toy_forward(W, b, x), x, importance)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return W.detach(), b.detach()


CORRECT = {"train_toy": [loop_student, ref.train_toy, loop_parameters]}
HIDDEN_CASES = (7,)
SLOW_EXERCISES = ("train_toy",)  # the check trains the loop: contract cases are slow


# --------------------------------------------------------------------------- broken loops, as written


def _broken(mistake):
    """The student's loop with one catalogued mistake."""
    def loop(W, b, importance, feature_probability, steps, batch_size, lr):
        W = W.clone().requires_grad_(True)
        b = b.clone().requires_grad_(True)
        if mistake == "copy":
            copies = [W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)]
            opt = torch.optim.Adam(copies, lr=lr)
        elif mistake == "W only":
            opt = torch.optim.Adam([W], lr=lr)
        else:
            opt = torch.optim.Adam([W, b], lr=lr, maximize=mistake == "ascent")
        once = generate_batch(batch_size, feature_probability)
        weights = torch.ones_like(importance) if mistake == "no importance" else importance
        with torch.enable_grad():
            for _ in range(steps):
                x = once if mistake == "one batch" else generate_batch(batch_size, feature_probability)
                loss = weighted_loss(toy_forward(W, b, x), x, weights)
                if mistake != "no zero_grad":
                    opt.zero_grad()
                loss.backward()
                opt.step()
        return W.detach(), b.detach()
    return loop


AS_SUBMITTED = {"train_toy": {
    "weights never change": _broken("copy"),
    "bias never trained": _broken("W only"),
    "gradient ascent": _broken("ascent"),
    "no zero_grad": _broken("no zero_grad"),
    "importance not applied": _broken("no importance"),
    "one batch reused": _broken("one batch"),
}}


# --------------------------------------------------------------------------- chapter-specific tests


def test_every_band_of_a_misconception_is_its_own():
    """Each catalogued loop misses its own band first, and no two share one."""
    named = [band.misconception for band in training.BANDS if band.misconception]
    assert sorted(named) == sorted(m.name for m in check.TRAIN_TOY.misconceptions)
    assert set(AS_SUBMITTED["train_toy"]) == set(named)


def test_the_check_keeps_the_run_it_graded_and_leaves_the_global_rng_alone(capsys):
    """One training per case: the weights the notebook plots are the ones the check graded; the
    check is deterministic for a submission (it seeds torch itself) and does not disturb the
    notebook's random stream."""
    seen = []

    def recording(*args):
        seen.append(torch.rand(1))  # the first draw of the loop's random stream
        W, b = loop_student(*args)
        return W, b

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    check.train_toy(recording)
    assert torch.equal(torch.rand(3), expected_next)
    first = check.last_run()
    inputs = check.TRAIN_TOY.make_inputs(seed_for("train_toy", 0))
    assert first.W.shape == inputs["W"].shape and first.seconds > 0 and len(seen) == 1
    assert torch.equal(first.importance, inputs["importance"])
    check.train_toy(recording)
    assert torch.equal(seen[0], seen[1]) and torch.equal(check.last_run().W, first.W)
    assert "PASS 04/train_toy: 1 cases" in capsys.readouterr().out


def test_a_loop_without_gradients_or_with_a_bad_result_is_explained(capsys):
    def no_enable_grad(W, b, importance, feature_probability, steps, batch_size, lr):
        W = W.clone().requires_grad_(True)
        x = generate_batch(batch_size, feature_probability)
        weighted_loss(toy_forward(W, b, x), x, importance).backward()  # the check runs under no_grad
        return W, b

    with pytest.raises(CheckFailure, match=r"torch.enable_grad\(\)"):
        check.train_toy(no_enable_grad)
    with pytest.raises(CheckFailure, match="two tensors"):
        check.train_toy(lambda W, b, *rest: W)
    with pytest.raises(CheckFailure, match="expected the shapes"):
        check.train_toy(lambda W, b, *rest: (W[0], b))
    with pytest.raises(CheckFailure, match="NaN"):
        check.train_toy(lambda W, b, *rest: (W * math.nan, b))
    with pytest.raises(CheckFailure, match="returned the weights it started from"):
        check.train_toy(lambda W, b, *rest: (W.clone(), b.clone()))
    assert capsys.readouterr().err == ""


def test_a_loop_that_barely_trains_is_described_not_misnamed():
    """Plain SGD at the same learning rate: not in the catalogue, so the check says which band it
    missed instead of naming a mistake the student did not make."""
    def sgd(W, b, importance, feature_probability, steps, batch_size, lr):
        W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        opt = torch.optim.SGD([W, b], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                x = generate_batch(batch_size, feature_probability)
                opt.zero_grad()
                weighted_loss(toy_forward(W, b, x), x, importance).backward()
                opt.step()
        return W.detach(), b.detach()

    with pytest.raises(CheckFailure, match="a correct loop reaches 'the sparse instances learn'"):
        check.train_toy(sgd)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_correct_loops_reach_every_band_from_other_seeds(seed, capsys):
    """The bands hold for correct loops beyond the contract's cases, with room to spare: in the
    typical dense instance the dropped features stay below half the band's 0.1, the sparse loss
    below 15% where the band allows 25%."""
    check.train_toy(loop_parameters if seed % 2 else loop_student, cases=[seed])
    m = check.last_run().measures
    dense = training._which(training.DENSE)
    assert float(m.norms[dense, 2:].amax(-1).median()) < training.DROPPED / 2
    assert float(m.relative[training._which(training.SPARSE)].max()) < 0.15
