"""Chapter 04's checks accept correct implementations and name each catalogued mistake."""
import check_harness as harness
import pytest
import torch
import torch.nn.functional as F

from utils import progress
from utils import superposition as sp
from utils.checks import CheckFailure
from utils.checks import ch04 as check

# --------------------------------------------------------------------------- correct alternatives


def forward_einsum(W, b, x):
    h = torch.einsum("ihf,ibf->ibh", W, x)
    return torch.relu(torch.einsum("ihf,ibh->ibf", W, h) + b[:, None, :])


def forward_loops(W, b, x):
    return torch.stack([torch.relu(x[k] @ W[k].T @ W[k] + b[k]) for k in range(W.shape[0])])


def forward_float64(W, b, x):
    return sp.toy_forward(W.double(), b.double(), x.double())


def generate_two_draws(batch_size, feature_probability):
    shape = (feature_probability.shape[0], batch_size, feature_probability.shape[1])
    return torch.rand(shape) * (torch.rand(shape) < feature_probability[:, None, :])


def generate_bernoulli(batch_size, feature_probability):
    p = feature_probability[:, None, :].expand(-1, batch_size, -1)
    return torch.bernoulli(p) * torch.rand(p.shape)


def generate_one_draw(batch_size, feature_probability):
    return sp.generate_batch(batch_size, feature_probability)  # draws from the (seeded) global RNG


def loss_einsum(out, x, importance):
    return torch.einsum("ibf,if->", (x - out) ** 2, importance) / x.shape[1]


def loss_loops(out, x, importance):
    total = torch.zeros(())
    for k in range(x.shape[0]):
        total = total + (importance[k] * (x[k] - out[k]) ** 2).sum(-1).mean()
    return total


def superposition_normalize(W):
    W_hat = F.normalize(W, dim=1)
    overlaps = (W_hat.transpose(1, 2) @ W) ** 2
    mask = 1 - torch.eye(W.shape[-1])
    return (overlaps * mask).sum(-1)


def superposition_loops(W):
    out = torch.zeros(W.shape[0], W.shape[2])
    for k in range(W.shape[0]):
        for i in range(W.shape[2]):
            norm = W[k, :, i].norm()
            if norm > 0:
                for j in range(W.shape[2]):
                    if j != i:
                        out[k, i] += (W[k, :, i] @ W[k, :, j] / norm) ** 2
    return out


def dimensionality_gram(W):
    gram = W.transpose(1, 2) @ W  # [inst, i, j] = W_i . W_j
    norms_sq = gram.diagonal(dim1=1, dim2=2)
    # sum_j (W_i_hat . W_j)^2 = sum_j gram_ij^2 / ||W_i||^2
    denominator = (gram ** 2).sum(-1) / norms_sq.clamp_min(1e-12)
    return torch.where(norms_sq > 0, norms_sq / denominator.clamp_min(1e-12), torch.zeros_like(norms_sq))


CORRECT = [
    (check.toy_forward, [sp.toy_forward, forward_einsum, forward_loops, forward_float64], "toy_forward"),
    (check.generate_batch, [generate_two_draws, generate_bernoulli, generate_one_draw], "generate_batch"),
    (check.weighted_loss, [sp.importance_weighted_loss, loss_einsum, loss_loops], "weighted_loss"),
    (check.superposition, [sp.superposition, superposition_normalize, superposition_loops], "superposition"),
    (check.dimensionality, [sp.dimensionality, dimensionality_gram], "dimensionality"),
]


@pytest.mark.parametrize("check_fn,fn,name", [(c, f, n) for c, fns, n in CORRECT for f in fns],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_correct_implementations_pass(check_fn, fn, name, capsys):
    check_fn(fn)
    check_fn(fn, cases=[7, 8])
    out = capsys.readouterr()
    assert out.out.count(f"PASS 04/{name}") == 2 and out.err == ""
    assert out.out.strip().splitlines()[0] == f"PASS 04/{name}: 3 cases"


# --------------------------------------------------------------------------- catalogued mistakes

DETERMINISTIC = [(check.toy_forward, check.TOY_FORWARD), (check.weighted_loss, check.LOSS),
                 (check.superposition, check.SUPERPOSITION), (check.dimensionality, check.DIMENSIONALITY)]


@pytest.mark.parametrize("check_fn,wrong", [(c, m) for c, ex in DETERMINISTIC for m in ex.misconceptions],
                         ids=lambda v: getattr(v, "name", ""))
def test_each_misconception_is_named(check_fn, wrong, capsys):
    with pytest.raises(CheckFailure) as info:
        check_fn(wrong.implementation)
    assert wrong.explanation in str(info.value)
    assert capsys.readouterr().err == ""


def _shape(p, batch):
    return (p.shape[0], batch, p.shape[1])


WRONG_GENERATORS = {
    "on/off swapped": lambda batch, p: torch.rand(_shape(p, batch)) * (torch.rand(_shape(p, batch)) > p[:, None]),
    "binary features": lambda batch, p: (torch.rand(_shape(p, batch)) < p[:, None]).float(),
    "one draw, unscaled": lambda batch, p: (lambda u: u * (u < p[:, None]))(torch.rand(_shape(p, batch))),
    "one draw for all features": lambda batch, p: torch.rand(_shape(p, batch))
    * (torch.rand(p.shape[0], batch, 1) < p[:, None]),
}


def test_every_generator_misconception_has_a_realistic_example():
    assert set(WRONG_GENERATORS) == {m.name for m in check.GENERATE_BATCH.misconceptions}


@pytest.mark.parametrize("wrong", check.GENERATE_BATCH.misconceptions, ids=lambda m: m.name)
def test_each_generator_misconception_is_named(wrong, capsys):
    with pytest.raises(CheckFailure) as info:
        check.generate_batch(WRONG_GENERATORS[wrong.name])
    assert wrong.explanation in str(info.value)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("ex", [check.TOY_FORWARD, check.LOSS, check.SUPERPOSITION, check.DIMENSIONALITY,
                                check.GENERATE_BATCH], ids=lambda ex: ex.name)
def test_misconceptions_are_distinct_on_the_check_inputs(ex):
    """Every variant differs from the truth and from every other variant on every default case,
    so none can pass by accident and each diagnosis is unambiguous."""
    from utils.checks.core import outputs_match, seed_for

    for case in ex.default_cases:
        inputs = ex.make_inputs(seed_for(ex.name, case))
        outputs = [ex.reference(**inputs)] + [m.implementation(**inputs) for m in ex.misconceptions]
        for a in range(len(outputs)):
            for b in range(a + 1, len(outputs)):
                assert not outputs_match(outputs[a], outputs[b], ex.rtol, ex.atol), (case, a, b)


# --------------------------------------------------------------------------- other failures


def test_stub_and_crash_fail_clearly(capsys):
    def stub(W, b, x):
        raise NotImplementedError()

    with pytest.raises(CheckFailure, match="not implemented yet"):
        check.toy_forward(stub)
    with pytest.raises(CheckFailure, match="not implemented yet"):
        check.generate_batch(lambda batch_size, p: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(CheckFailure, match="raised RuntimeError"):
        check.toy_forward(lambda W, b, x: W @ x)
    with pytest.raises(CheckFailure, match="torch.Tensor|shape"):
        check.weighted_loss(lambda out, x, importance: 0.0)
    with pytest.raises(CheckFailure, match="shape"):
        check.weighted_loss(lambda out, x, importance: sp.per_instance_loss(out, x, importance))
    with pytest.raises(CheckFailure, match="pass your function"):
        check.superposition(3)
    with pytest.raises(CheckFailure, match="pass your function"):
        check.generate_batch(None)
    assert capsys.readouterr().err == ""


def test_generator_shape_and_range_are_explained():
    with pytest.raises(CheckFailure, match=r"instances first, then the batch"):
        check.generate_batch(lambda batch, p: sp.generate_batch(batch, p).transpose(0, 1))
    with pytest.raises(CheckFailure, match=r"lie in \[0, 1\]"):
        check.generate_batch(lambda batch, p: 2 * generate_two_draws(batch, p))
    with pytest.raises(CheckFailure, match="torch.Tensor"):
        check.generate_batch(lambda batch, p: generate_two_draws(batch, p).numpy())


def test_generator_check_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    seen = []
    check.generate_batch(lambda batch, p: seen.append(torch.rand(1)) or generate_two_draws(batch, p))
    assert torch.equal(torch.rand(3), expected_next)  # the notebook's random stream is untouched
    again = []
    check.generate_batch(lambda batch, p: again.append(torch.rand(1)) or generate_two_draws(batch, p))
    assert seen == again  # the same seeds every time


def test_unguarded_division_by_a_dropped_feature_is_explained():
    def unguarded(W):
        W_hat = W / W.norm(dim=1, keepdim=True)
        overlaps = (W_hat.transpose(1, 2) @ W) ** 2
        return overlaps.sum(-1) - overlaps.diagonal(dim1=1, dim2=2)

    with pytest.raises(CheckFailure, match=r"NaN.*dropped \(W_i = 0"):
        check.superposition(unguarded)
    with pytest.raises(CheckFailure, match=r"NaN.*dropped"):
        check.dimensionality(lambda W: W.norm(dim=1) ** 2 / ((W / W.norm(dim=1, keepdim=True)).transpose(1, 2) @ W)
                             .square().sum(-1))


def test_unknown_wrong_answer_reports_location():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.dimensionality(lambda W: sp.dimensionality(W) + 0.01)
    with pytest.raises(CheckFailure, match="values have mean 0.6"):  # a generator whose values skew high
        check.generate_batch(lambda batch, p: generate_two_draws(batch, p) ** 0.5)


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(W, b, x):
        result = sp.toy_forward(W, b, x)
        W.zero_()
        x.zero_()
        return result

    check.toy_forward(mutating)


def test_multiple_choice():
    questions = harness.questions(check, "04")
    for ask, explanations, right in questions:
        for bad, why in explanations.items():
            with pytest.raises(CheckFailure, match=why[:25].replace("(", r"\(").replace(")", r"\)")):
                ask(bad)
        assert set(explanations) | {right} == set(harness.LETTERS)
        with pytest.raises(CheckFailure, match="set your answer"):
            ask(None)
        with pytest.raises(CheckFailure, match="not one of"):
            ask("e")
        ask(right)


def test_progress_is_recorded_and_shown(capsys):
    progress.show_progress("04")
    assert f"0/{len(check.EXERCISES)}" in capsys.readouterr().out
    check.toy_forward(sp.toy_forward)
    check.generate_batch(generate_two_draws)
    check.weighted_loss(sp.importance_weighted_loss)
    check.superposition(sp.superposition)
    check.dimensionality(sp.dimensionality)
    check.dense_regime_question(harness.right("04", "dense_regime_question"))
    check.antipodal_question(harness.right("04", "antipodal_question"))
    check.privileged_basis_question(harness.right("04", "privileged_basis_question"))
    progress.show_progress("04")
    out = capsys.readouterr().out
    assert f"{len(check.EXERCISES)}/{len(check.EXERCISES)}" in out and "all done" in out
