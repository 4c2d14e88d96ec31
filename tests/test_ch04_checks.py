"""Chapter 04's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways, and each catalogued generator mistake as a student writes the
generator: the catalogue holds the statistics of its output, which is what the check compares), and
the tests particular to this chapter: generators, seeding, and unnamed mistakes explained."""
import check_harness as harness
import pytest
import torch
import torch.nn.functional as F

from utils.checks import CheckFailure
from utils.checks import ch04 as check
from utils.checks.core import outputs_match, seed_for
from utils.superposition import exercises as ref

# --------------------------------------------------------------------------- correct alternatives


def forward_einsum(W, b, x):
    h = torch.einsum("ihf,ibf->ibh", W, x)
    return torch.relu(torch.einsum("ihf,ibh->ibf", W, h) + b[:, None, :])


def forward_loops(W, b, x):
    return torch.stack([torch.relu(x[k] @ W[k].T @ W[k] + b[k]) for k in range(W.shape[0])])


def forward_float64(W, b, x):
    return ref.toy_forward(W.double(), b.double(), x.double())


def generate_two_draws(batch_size, feature_probability):
    shape = (feature_probability.shape[0], batch_size, feature_probability.shape[1])
    return torch.rand(shape) * (torch.rand(shape) < feature_probability[:, None, :])


def generate_bernoulli(batch_size, feature_probability):
    p = feature_probability[:, None, :].expand(-1, batch_size, -1)
    return torch.bernoulli(p) * torch.rand(p.shape)


def generate_one_draw(batch_size, feature_probability):
    return ref.generate_batch(batch_size, feature_probability)  # draws from the (seeded) global RNG


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


def test_every_exercise_has_three_seeded_cases_and_no_real_one():
    for name in CORRECT:
        ex = harness.exercise(check, name)
        assert len(ex.default_cases) == 3 and not ex.extra_inputs, name


# --------------------------------------------------------------------------- mistakes as a student writes them


def _shape(p, batch):
    return (p.shape[0], batch, p.shape[1])


WRONG_GENERATORS = {
    "on/off swapped": lambda batch, p: torch.rand(_shape(p, batch)) * (torch.rand(_shape(p, batch)) > p[:, None]),
    "binary features": lambda batch, p: (torch.rand(_shape(p, batch)) < p[:, None]).float(),
    "one draw, unscaled": lambda batch, p: (lambda u: u * (u < p[:, None]))(torch.rand(_shape(p, batch))),
    "one draw for all features": lambda batch, p: torch.rand(_shape(p, batch))
    * (torch.rand(p.shape[0], batch, 1) < p[:, None]),
}


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
        check.weighted_loss(lambda out, x, importance: ref.per_instance_loss(out, x, importance))
    with pytest.raises(CheckFailure, match="pass your function"):
        check.superposition(3)
    with pytest.raises(CheckFailure, match="pass your function"):
        check.generate_batch(None)
    assert capsys.readouterr().err == ""


def test_generator_shape_and_range_are_explained():
    with pytest.raises(CheckFailure, match=r"instances first, then the batch"):
        check.generate_batch(lambda batch, p: ref.generate_batch(batch, p).transpose(0, 1))
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
        check.dimensionality(lambda W: ref.dimensionality(W) + 0.01)
    with pytest.raises(CheckFailure, match="values have mean 0.6"):  # a generator whose values skew high
        check.generate_batch(lambda batch, p: generate_two_draws(batch, p) ** 0.5)


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(W, b, x):
        result = ref.toy_forward(W, b, x)
        W.zero_()
        x.zero_()
        return result

    check.toy_forward(mutating)


# --------------------------------------------------------------------------- 6. anti-correlated groups
# fn(batch_size, group_probability [inst, n_groups], group_size) -> x [inst, batch, n_groups * group_size]


def _gshape(p, batch):
    return (p.shape[0], batch, p.shape[1])


def _one_hot_batch(p, g, chosen, value, active):
    """Contiguous groups: feature k * g + chosen of group k gets value * active."""
    inst, batch, groups = chosen.shape
    x = torch.zeros(inst, batch, groups, g)
    x.scatter_(-1, chosen[..., None], (value * active)[..., None])
    return x.reshape(inst, batch, groups * g)


def anti_scatter(batch_size, group_probability, group_size):
    shape = _gshape(group_probability, batch_size)
    active = torch.rand(shape) < group_probability[:, None, :]
    return _one_hot_batch(group_probability, group_size, torch.randint(0, group_size, shape), torch.rand(shape), active)


def anti_one_hot(batch_size, group_probability, group_size):
    shape = _gshape(group_probability, batch_size)
    one_hot = F.one_hot(torch.randint(group_size, shape), group_size)  # [inst, batch, groups, g]
    on = (torch.rand(shape) < group_probability[:, None, :])[..., None]
    return (one_hot * on * torch.rand(shape)[..., None]).flatten(2)


def anti_multinomial(batch_size, group_probability, group_size):
    inst, groups = group_probability.shape
    # one categorical draw over "off" and the g features: P(off) = 1 - p, P(feature j) = p / g
    probs = torch.cat([1 - group_probability[..., None],
                       (group_probability / group_size)[..., None].expand(-1, -1, group_size)], -1)
    pick = torch.multinomial(probs.reshape(-1, group_size + 1), batch_size, replacement=True)
    pick = pick.reshape(inst, groups, batch_size).transpose(1, 2)  # [inst, batch, groups], 0 = off
    x = F.one_hot(pick, group_size + 1)[..., 1:] * torch.rand(inst, batch_size, groups, 1)
    return x.flatten(2)


def anti_single_draw(batch_size, group_probability, group_size):
    """One uniform per group decides all three: on iff u < p, then u / p * g picks and values."""
    shape = _gshape(group_probability, batch_size)
    u = torch.rand(shape) / group_probability[:, None, :] * group_size  # in [0, g) when active
    active = u < group_size
    chosen = u.floor().clamp(max=group_size - 1).long()
    return _one_hot_batch(group_probability, group_size, chosen, u - u.floor(), active)


def anti_loops(batch_size, group_probability, group_size):
    inst, groups = group_probability.shape
    x = torch.zeros(inst, batch_size, groups * group_size)
    active = torch.rand(inst, batch_size, groups) < group_probability[:, None, :]
    for k in range(groups):
        chosen = torch.randint(0, group_size, (inst, batch_size))
        x[..., k * group_size:(k + 1) * group_size] = F.one_hot(chosen, group_size) * (
            torch.rand(inst, batch_size) * active[..., k])[..., None]
    return x


def pair_losses_moments(p, r):
    """From the moments: Var(x) = E[x^2] - E[x]^2 and E[min(u, v)^2] = int 2 (1 - t) t^2 dt."""
    second, mean = p / 3, p / 2
    e_min_sq = 2 * (1 / 3 - 1 / 4)
    return torch.stack([r * (second - mean ** 2), p * p * e_min_sq * (1 + r)], dim=1)


def pair_losses_loop(p, r):
    return torch.tensor([[ri * (pi / 3 - pi * pi / 4), (1 + ri) * pi * pi / 6]
                         for pi, ri in zip(p.tolist(), r.tolist())])


CORRECT = {
    "pair_losses": [ref.pair_losses, pair_losses_moments, pair_losses_loop],
    "toy_forward": [ref.toy_forward, forward_einsum, forward_loops, forward_float64],
    "generate_batch": [generate_two_draws, generate_bernoulli, generate_one_draw],
    "weighted_loss": [ref.importance_weighted_loss, loss_einsum, loss_loops],
    "superposition": [ref.superposition, superposition_normalize, superposition_loops],
    "dimensionality": [ref.dimensionality, dimensionality_gram],
    "anticorrelated_batch": [ref.generate_anticorrelated_batch, anti_scatter, anti_one_hot, anti_multinomial,
                             anti_single_draw, anti_loops],
}
HIDDEN_CASES = (7, 8)


def _indep(q):
    def generate(batch, p, g):
        pf = q(p, g).repeat_interleave(g, dim=1)
        shape = (p.shape[0], batch, p.shape[1] * g)
        return torch.rand(shape) * (torch.rand(shape) < pf[:, None])
    return generate


def _interleaved(batch, p, g):
    inst, groups = p.shape
    shape = _gshape(p, batch)
    x = torch.zeros(inst, batch, g, groups)  # reshaped the wrong way round
    value = torch.rand(shape) * (torch.rand(shape) < p[:, None])
    x.scatter_(2, torch.randint(0, g, shape)[:, :, None, :], value[:, :, None, :])
    return x.reshape(inst, batch, g * groups)


def _one_draw(batch, p, g):
    u = torch.rand(_gshape(p, batch))
    return _one_hot_batch(p, g, (u * g).long(), u, torch.rand(_gshape(p, batch)) < p[:, None])


WRONG_ANTI = {
    "independent features, p / group_size each": _indep(lambda p, g: p / g),
    "independent features, p each": _indep(lambda p, g: p),
    "probability per feature": lambda batch, p, g: _one_hot_batch(
        p, g, torch.randint(0, g, _gshape(p, batch)), torch.rand(_gshape(p, batch)),
        torch.rand(_gshape(p, batch)) < p[:, None] * g),
    "groups interleaved": _interleaved,
    "last feature never chosen": lambda batch, p, g: _one_hot_batch(
        p, g, torch.randint(0, g - 1, _gshape(p, batch)), torch.rand(_gshape(p, batch)),
        torch.rand(_gshape(p, batch)) < p[:, None]),
    "choice and value from one draw": _one_draw,
    "binary features": lambda batch, p, g: _one_hot_batch(
        p, g, torch.randint(0, g, _gshape(p, batch)), torch.ones(_gshape(p, batch)),
        torch.rand(_gshape(p, batch)) < p[:, None]),
    "one draw for all groups": lambda batch, p, g: _one_hot_batch(
        p, g, torch.randint(0, g, _gshape(p, batch)), torch.rand(_gshape(p, batch)),
        torch.rand(p.shape[0], batch, 1) < p[:, None]),
}


# Each catalogued generator mistake as a student writes the generator (the contract submits these).
AS_SUBMITTED = {"generate_batch": WRONG_GENERATORS, "anticorrelated_batch": WRONG_ANTI}


@pytest.mark.parametrize("wrong", check.ANTICORRELATED_BATCH.misconceptions, ids=lambda m: m.name)
def test_anticorrelated_exact_statistics_match_the_wrong_generators(wrong):
    """Each misconception's exact statistics are those of its realistic example (so a student's
    version is recognised), and those of the reference are those of a correct generator."""
    ex = check.ANTICORRELATED_BATCH
    inputs = ex.make_inputs(seed_for(ex.name, 0))
    torch.manual_seed(0)
    for fn, stats in ((WRONG_ANTI[wrong.name], wrong.implementation(**inputs)),
                      (anti_scatter, ex.reference(**inputs))):
        x = fn(inputs["batch_size"], inputs["group_probability"], inputs["group_size"])
        got = check.anti_statistics(x, inputs["group_size"])
        assert outputs_match(got, stats, 0.0, check.GENERATE_TOL / 2), wrong.name


def test_anticorrelated_misconceptions_are_distinct_on_hidden_cases_too():
    ex = check.ANTICORRELATED_BATCH
    harness.assert_distinct(ex, [7, 8, 601, 602, 603])  # the contract checks the default cases
    sizes = {ex.make_inputs(seed_for(ex.name, c))["group_size"] for c in range(20)}
    assert sizes == {2, 3}  # both group sizes occur among the seeds


def test_anticorrelated_unnamed_mistakes_are_explained(capsys):
    def pairs_sometimes(batch, p, g):  # a correct batch, plus a second feature switched on now and then
        x = anti_scatter(batch, p, g)
        x[:, :5, 1] = x[:, :5, 0] = 0.5
        return x

    with pytest.raises(CheckFailure, match="two features of a group active together"):
        check.anticorrelated_batch(pairs_sometimes)
    with pytest.raises(CheckFailure, match="values not in \\[0, 1\\).*torch.randn"):
        check.anticorrelated_batch(lambda batch, p, g: _one_hot_batch(  # normal values instead of uniform
            p, g, torch.randint(0, g, _gshape(p, batch)), torch.randn(_gshape(p, batch)),
            torch.rand(_gshape(p, batch)) < p[:, None]))
    with pytest.raises(CheckFailure, match="values not in \\[0, 1\\).*fractional part"):
        check.anticorrelated_batch(lambda batch, p, g: anti_scatter(batch, p, g) * g)
    with pytest.raises(CheckFailure, match="flatten the group axes"):
        check.anticorrelated_batch(lambda batch, p, g: anti_scatter(batch, p, g).reshape(p.shape[0], batch, -1, g))
    with pytest.raises(CheckFailure, match="wrong activation probability per group"):
        check.anticorrelated_batch(lambda batch, p, g: anti_scatter(batch, (p * 0.7), g))
    with pytest.raises(CheckFailure, match="values have mean 0.6"):
        check.anticorrelated_batch(lambda batch, p, g: anti_scatter(batch, p, g) ** 0.5)
    with pytest.raises(CheckFailure, match="not implemented yet"):
        check.anticorrelated_batch(lambda batch, p, g: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(CheckFailure, match="pass your function"):
        check.anticorrelated_batch(None)
    assert capsys.readouterr().err == ""


def test_anticorrelated_check_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    check.anticorrelated_batch(anti_scatter)
    assert torch.equal(torch.rand(3), expected_next)


# --------------------------------------------------------------------------- 4b. the phase change in closed form


def test_pair_losses_match_the_toy_model_on_sampled_data():
    """The closed forms against the two solutions run through the toy model on 400k sampled rows:
    W = [1, 0], b = [0, p/2] (feature 0 alone) and W = [1, -1], b = 0 (the antipodal pair)."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.9, 0.5, 0.2, 0.05])
    r = torch.tensor([0.3, 1.0, 0.6, 0.8])
    k = len(p)
    importance = torch.stack([torch.ones(k), r], dim=1)
    x = ref.generate_batch(400_000, p[:, None].expand(k, 2), g)
    alone_W = torch.tensor([[[1.0, 0.0]]]).expand(k, 1, 2)
    alone_b = torch.stack([torch.zeros(k), p / 2], dim=1)
    pair_W = torch.tensor([[[1.0, -1.0]]]).expand(k, 1, 2)
    sampled = torch.stack([ref.per_instance_loss(ref.toy_forward(W, b, x), x, importance)
                           for W, b in ((alone_W, alone_b), (pair_W, torch.zeros(k, 2)))], dim=1)
    assert torch.allclose(sampled, ref.pair_losses(p, r), rtol=0.03, atol=2e-4)
    # the crossing: both columns equal at the critical probability, the pair cheaper below it
    crit = ref.critical_probability(r)
    at = ref.pair_losses(crit, r)
    assert torch.allclose(at[:, 0], at[:, 1], rtol=1e-5)
    below = ref.pair_losses(0.9 * crit, r)
    assert (below[:, 1] < below[:, 0]).all()
