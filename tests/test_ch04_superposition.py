"""utils.superposition against independent computations (loops over instances and features, closed
forms), its opt-in fast path (utils.superposition.fast) against autograd, and the paper's
phase-change facts on small models trained here, seeded."""
import math

import matplotlib
import pytest
import torch

from utils import superposition as sp
from utils.superposition import fast

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_close_figures():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    plt.close("all")


def random_W(inst=3, m=2, n=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(inst, m, n, generator=g, dtype=dtype) * (0.3 + torch.rand(inst, 1, n, generator=g, dtype=dtype))


def columns(*vectors):
    """One instance [1, d, k] whose feature directions are the given vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T[None]


def polygon(k, radius=1.0):
    angles = torch.arange(k) * 2 * math.pi / k
    return (radius * torch.stack([angles.cos(), angles.sin()]))[None]


# --------------------------------------------------------------------------- oracles (loops)


def forward_loops(W, b, x, relu_output=True, relu_hidden=False):
    out = torch.empty_like(x)
    for k in range(W.shape[0]):
        for r in range(x.shape[1]):
            h = W[k] @ x[k, r]
            if relu_hidden:
                h = h.clamp_min(0)
            y = W[k].T @ h + b[k]
            out[k, r] = y.clamp_min(0) if relu_output else y
    return out


def loss_loops(out, x, importance):
    per = torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(x.shape[0]):
        for r in range(x.shape[1]):
            for i in range(x.shape[2]):
                per[k] += importance[k, i] * (x[k, r, i] - out[k, r, i]) ** 2
        per[k] /= x.shape[1]
    return per


def superposition_loops(W):
    inst, _, n = W.shape
    out = torch.zeros(inst, n)
    for k in range(inst):
        for i in range(n):
            norm = W[k, :, i].norm()
            if norm == 0:
                continue
            for j in range(n):
                if j != i:
                    out[k, i] += (W[k, :, i] @ W[k, :, j] / norm) ** 2
    return out


def dimensionality_loops(W):
    inst, _, n = W.shape
    out = torch.zeros(inst, n)
    for k in range(inst):
        for i in range(n):
            norm = W[k, :, i].norm()
            if norm == 0:
                continue
            denominator = sum((W[k, :, i] @ W[k, :, j] / norm) ** 2 for j in range(n))
            out[k, i] = norm ** 2 / denominator
    return out


# --------------------------------------------------------------------------- model, data, loss


@pytest.mark.parametrize("relu_output,relu_hidden", [(True, False), (False, False), (True, True)])
def test_forward_matches_loops(relu_output, relu_hidden):
    g = torch.Generator().manual_seed(1)
    W, b = torch.randn(3, 2, 5, generator=g), torch.randn(3, 5, generator=g) * 0.3
    x = torch.rand(3, 7, 5, generator=g) * (torch.rand(3, 7, 5, generator=g) < 0.5)
    got = sp.toy_forward(W, b, x, relu_output, relu_hidden)
    assert torch.allclose(got, forward_loops(W, b, x, relu_output, relu_hidden), atol=1e-5)
    cfg = sp.ToyConfig(5, 2, 3, relu_output=relu_output, relu_hidden=relu_hidden)
    model = sp.ToyModel(cfg)
    with torch.no_grad():
        model.W.copy_(W)
        model.b.copy_(b)
    assert torch.allclose(model(x), got)


def test_model_init_is_seeded_and_broadcasts_settings():
    cfg = sp.ToyConfig(n_features=4, d_hidden=2, n_instances=3)
    a, b = sp.ToyModel(cfg, seed=5), sp.ToyModel(cfg, seed=5)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, sp.ToyModel(cfg, seed=6).W)
    assert torch.equal(a.b, torch.zeros(3, 4))
    assert a.W.std().item() == pytest.approx(math.sqrt(2 / 6), rel=0.5)
    m = sp.ToyModel(cfg, feature_probability=torch.tensor([[1.0], [0.1], [0.01]]), importance=[1, 0.5, 0.25, 0.1])
    assert m.feature_probability.shape == (3, 4)
    assert torch.equal(m.feature_probability[:, 2], torch.tensor([1.0, 0.1, 0.01]))
    assert torch.equal(m.importance[2], torch.tensor([1, 0.5, 0.25, 0.1]))


def test_loss_matches_loops_and_sums_instances():
    g = torch.Generator().manual_seed(2)
    x, out = torch.rand(3, 6, 4, generator=g), torch.rand(3, 6, 4, generator=g)
    importance = torch.rand(3, 4, generator=g)
    per = loss_loops(out, x, importance)
    assert torch.allclose(sp.per_instance_loss(out, x, importance), per, atol=1e-6)
    assert torch.allclose(sp.importance_weighted_loss(out, x, importance), per.sum(), atol=1e-6)


@pytest.mark.parametrize("relu_output", [True, False])
def test_hand_written_gradients_match_autograd(relu_output):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(3, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.rand(3, 50, 7, generator=g, dtype=torch.float64) * (torch.rand(3, 50, 7, generator=g) < 0.4)
    importance = torch.rand(3, 7, generator=g, dtype=torch.float64)
    loss = sp.per_instance_loss(sp.toy_forward(W, b, x, relu_output), x, importance)
    loss.sum().backward()
    got_loss, grad_W, grad_b = fast.loss_and_grads(W.detach(), b.detach(), x, importance, relu_output)
    assert torch.allclose(got_loss, loss, atol=1e-12)
    assert torch.allclose(grad_W, W.grad, atol=1e-12) and torch.allclose(grad_b, b.grad, atol=1e-12)


@pytest.mark.parametrize("cfg", [sp.ToyConfig(6, 2, 3), sp.ToyConfig(6, 2, 3, relu_output=False),
                                 sp.ToyConfig(6, 3, 2, relu_hidden=True)], ids=["relu", "linear", "relu-hidden"])
@pytest.mark.parametrize("use_fast", [False, True], ids=["autograd", "fast"])
def test_train_equals_a_plain_autograd_loop(cfg, use_fast):
    """train() is Adam on importance_weighted_loss with generate_batch data, nothing more; and so is
    train(fast=True) (for the ReLU-hidden model it falls back to autograd)."""
    p, imp = torch.tensor([[0.9], [0.3], [0.05]])[:cfg.n_instances], sp.decaying_importance(6, 0.8)
    model = sp.ToyModel(cfg, p, imp, seed=4)
    twin = sp.ToyModel(cfg, p, imp, seed=4)
    history = sp.train(model, steps=30, batch_size=64, lr=1e-2, seed=9, log_every=10, fast=use_fast)
    g = torch.Generator().manual_seed(9)
    opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        x = sp.generate_batch(64, twin.feature_probability, g)
        loss = sp.per_instance_loss(twin(x), x, twin.importance)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    assert torch.allclose(model.W, twin.W, atol=1e-5) and torch.allclose(model.b, twin.b, atol=1e-5)
    assert history.shape == (4, cfg.n_instances)  # steps 0, 10, 20 and the last
    assert torch.allclose(history, torch.stack([losses[i] for i in (0, 10, 20, 29)]), atol=1e-5)


@pytest.mark.parametrize("cfg", [sp.ToyConfig(20, 5, 4), sp.ToyConfig(6, 2, 3, relu_output=False)],
                         ids=["relu", "linear"])
def test_fast_path_trains_like_autograd(cfg):
    """The opt-in fast path: the same data from the same seed, and after 200 steps the same weights
    and loss history as the autograd reference, to float32 rounding."""
    p = sp.sweep_probabilities(cfg.n_instances, 0.01)[:, None]
    imp = sp.decaying_importance(cfg.n_features, 0.7)
    sample = fast.sampler(sp.as_instance_feature(p, cfg.n_instances, cfg.n_features, "p"))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample(256, g1), sp.generate_batch(256, sp.as_instance_feature(p, cfg.n_instances,
                                                                                      cfg.n_features, "p"), g2))
    reference, quick = sp.ToyModel(cfg, p, imp, seed=1), sp.ToyModel(cfg, p, imp, seed=1)
    h_ref = sp.train(reference, steps=200, batch_size=256, lr=3e-3, seed=2, log_every=50)
    h_fast = sp.train(quick, steps=200, batch_size=256, lr=3e-3, seed=2, log_every=50, fast=True)
    assert torch.allclose(quick.W, reference.W, atol=1e-5) and torch.allclose(quick.b, reference.b, atol=1e-5)
    assert torch.allclose(h_fast, h_ref, rtol=1e-5, atol=1e-7)


def test_training_is_deterministic_and_seed_dependent():
    cfg = sp.ToyConfig(5, 2, 2)
    runs = []
    for seed in (0, 0, 1):
        model = sp.ToyModel(cfg, 0.2, sp.decaying_importance(5, 0.9), seed=0)
        sp.train(model, steps=200, batch_size=128, seed=seed)
        runs.append(model.W.detach().clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("generate", [sp.generate_batch, sp.generate_batch_two_draws])
def test_generated_data_has_the_right_distribution(generate):
    p = torch.tensor([[1.0, 0.5, 0.1, 0.01], [0.9, 0.3, 0.03, 0.2]])
    x = generate(200_000, p, torch.Generator().manual_seed(0))
    assert x.shape == (2, 200_000, 4) and x.min() >= 0 and x.max() <= 1
    on = x > 0
    assert torch.allclose(on.float().mean(1), p, atol=3e-3)
    values = x[on]
    assert values.mean().item() == pytest.approx(0.5, abs=3e-3)
    assert (values < 0.25).float().mean().item() == pytest.approx(0.25, abs=3e-3)  # uniform, not just mean 1/2
    both = (on[0, :, 1] & on[0, :, 2]).float().mean().item()
    assert both == pytest.approx(0.05, abs=3e-3)  # independent features: 0.5 * 0.1
    again = generate(200_000, p, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_sweep_helpers():
    p = sp.sweep_probabilities(4, 1e-3)
    assert torch.allclose(p, torch.tensor([1.0, 0.1, 0.01, 0.001]))
    assert torch.equal(sp.sweep_probabilities(1), torch.ones(1))
    assert torch.allclose(sp.decaying_importance(3, 0.7), torch.tensor([1.0, 0.7, 0.49]))


# --------------------------------------------------------------------------- measures


def test_measures_match_loops():
    W = random_W(inst=3, m=3, n=7)
    W[1, :, 2] = 0
    assert torch.allclose(sp.superposition(W), superposition_loops(W), atol=1e-5)
    assert torch.allclose(sp.dimensionality(W), dimensionality_loops(W), atol=1e-5)
    expected_norms = torch.tensor([[W[k, :, i].norm() for i in range(7)] for k in range(3)])
    assert torch.allclose(sp.feature_norms(W), expected_norms)
    expected_dpf = torch.tensor([3 / sum(W[k, :, i].norm() ** 2 for i in range(7)) for k in range(3)])
    assert torch.allclose(sp.dims_per_feature(W), expected_dpf, atol=1e-6)


def test_antipodal_pair_closed_form():
    W = columns([1.0, 0.0], [-1.0, 0.0], [0.0, 1.0])  # a pair on the first axis, a loner on the second
    assert torch.allclose(W[0].T @ W[0], torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 1]]))
    assert torch.allclose(sp.superposition(W), torch.tensor([[1.0, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(sp.dimensionality(W), torch.tensor([[0.5, 0.5, 1.0]]), atol=1e-6)
    assert sp.antipodal_pairs(W[0]) == [(0, 1)]
    assert sp.alone_and_shared(W[0]) == ([2], [0, 1])


@pytest.mark.parametrize("name,W,expected", [
    ("orthonormal basis", torch.eye(4)[None], 1.0),
    ("digon", columns([1.0], [-1.0]), 1 / 2),
    ("triangle", polygon(3), 2 / 3),
    ("pentagon", polygon(5), 2 / 5),
    ("hexagon", polygon(6), 1 / 3),
    ("tetrahedron", columns([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]), 3 / 4),
    ("scaled pentagon", polygon(5, radius=1.7), 2 / 5),
])
def test_dimensionality_of_known_configurations(name, W, expected):
    n = W.shape[-1]
    assert torch.allclose(sp.dimensionality(W), torch.full((1, n), expected), atol=1e-5), name
    if name != "scaled pentagon":  # dims per feature is exact for unit-length features only
        unit = W / W.norm(dim=1, keepdim=True)
        assert sp.dims_per_feature(unit).item() == pytest.approx(expected, abs=1e-5)


def test_dropped_features_measure_zero_not_nan():
    W = columns([1.0, 0.0], [0.0, 0.0], [0.0, 1.0])
    assert torch.equal(sp.superposition(W)[0, 1], torch.tensor(0.0))
    assert torch.equal(sp.dimensionality(W)[0, 1], torch.tensor(0.0))
    assert sp.n_represented(W).tolist() == [2]


def test_neuron_alignment():
    assert sp.neuron_alignment(torch.eye(3)[None]).item() == pytest.approx(1.0)
    c = math.sqrt(0.5)
    rotated = torch.tensor([[[c, -c], [c, c]]])
    assert sp.neuron_alignment(rotated).item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- inputs that must raise


@pytest.mark.parametrize("call", [
    lambda: sp.ToyConfig(n_features=0),
    lambda: sp.ToyModel(sp.ToyConfig(3, 2, 2), feature_probability=0.0),
    lambda: sp.ToyModel(sp.ToyConfig(3, 2, 2), feature_probability=1.5),
    lambda: sp.ToyModel(sp.ToyConfig(3, 2, 2), importance=-1.0),
    lambda: sp.ToyModel(sp.ToyConfig(3, 2, 2), feature_probability=torch.ones(4)),
    lambda: sp.ToyModel(sp.ToyConfig(3, 2, 2), importance=torch.ones(2, 3, 1)),
    lambda: sp.generate_batch(0, torch.ones(2, 3)),
    lambda: sp.generate_batch(4, torch.ones(3)),
    lambda: sp.generate_batch(4, torch.full((2, 3), 2.0)),
    lambda: sp.train(sp.ToyModel(sp.ToyConfig(3, 2, 1)), steps=0),
    lambda: sp.train(sp.ToyModel(sp.ToyConfig(3, 2, 1)), lr=-1.0),
    lambda: sp.toy_forward(torch.ones(2, 2, 3), torch.ones(2, 4), torch.ones(2, 5, 3)),
    lambda: sp.toy_forward(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 5, 3)),
    lambda: sp.sweep_probabilities(3, lowest=0.0),
    lambda: sp.decaying_importance(4, decay=1.5),
    lambda: sp.superposition(torch.ones(3)),
    lambda: sp.antipodal_pairs(torch.ones(2, 2, 3)),
    lambda: sp.almost_orthogonal_count(4, eps=1.5),
    lambda: sp.nonuniform_sparsity_setup(sparsest=2.0),
    lambda: sp.plot_geometry(torch.ones(1, 3, 4)),
], ids=lambda f: "")
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------- experiments: setups


def test_nonuniform_cases():
    importance, probability, labels = sp.nonuniform_sparsity_setup(n_features=5, n_levels=3, spread=10)
    assert importance.shape == probability.shape == (15, 5) and len(labels) == 15
    assert [c for c, _ in labels[::3]] == list(sp.NONUNIFORM_CASES)
    by_case = {case: k for k, (case, _) in reversed(list(enumerate(labels)))}  # first instance of each case
    aligned, anti = probability[by_case["aligned"]], probability[by_case["anti-aligned"]]
    assert (aligned.diff() < 0).all() and (anti.diff() > 0).all()  # importance always decreases with i
    assert aligned[0] == pytest.approx(1.0) and aligned[0] / aligned[-1] == pytest.approx(10.0)
    for case in ("random A", "random B", "constant importance"):
        assert torch.allclose(probability[by_case[case]].sort().values, aligned.sort().values)
    assert not torch.equal(probability[by_case["random A"]], probability[by_case["random B"]])
    assert torch.equal(importance[by_case["constant importance"]], torch.ones(5))
    assert (importance[by_case["anti-aligned"]].diff() < 0).all()


def test_almost_orthogonal_count():
    assert sp.almost_orthogonal_count(1, 0.5, n_candidates=200) == 1  # on a line every pair is parallel
    assert sp.almost_orthogonal_count(2, 0.05, n_candidates=2000) == 2
    counts = [sp.almost_orthogonal_count(d, 0.5, n_candidates=4000) for d in (4, 8, 16)]
    assert counts[0] < counts[1] < counts[2] and counts[2] > 4 * 16  # far more than d directions
    assert sp.jl_experiment((4, 8), (0.5,), n_candidates=4000)[0.5] == counts[:2]


@pytest.mark.slow
def test_plots_and_explorer_run():
    W = random_W(inst=3, m=2, n=5)
    p = torch.tensor([1.0, 0.1, 0.01])
    for fig in (sp.plot_sweep(W, p[:, None], title="t"), sp.plot_geometry(W, ["a", "b", "c"], torch.ones(5)),
                sp.plot_dimensionality(W, p), sp.plot_jl([2, 4], {0.5: [2, 6]})):
        assert isinstance(fig, matplotlib.figure.Figure)
    models = {"a": sp.ToyModel(sp.ToyConfig(5, 2, 2)), "b": sp.ToyModel(sp.ToyConfig(5, 2, 2, relu_hidden=True))}
    assert isinstance(sp.plot_neuron_weights(models), matplotlib.figure.Figure)
    model, fig = sp.explore(feature_probability=0.1, steps=50)
    assert model.W.shape == (1, 2, 5) and isinstance(fig, matplotlib.figure.Figure)
    _, fig = sp.explore(n_features=6, d_hidden=3, relu_output=False, steps=20)  # no geometry panel for m != 2


def test_explorer_widget_retrains_on_change(capsys):
    pytest.importorskip("ipywidgets")
    box = sp.explorer(steps=30, batch_size=64)
    sliders = [w for row in box.children[:2] for w in row.children]
    probability = next(w for w in sliders if getattr(w, "description", "") == "1 - S")
    probability.value = 0.01  # triggers a retrain and a redraw
    assert len(box.children) == 3


# --------------------------------------------------------------------------- phase change on trained models


@pytest.fixture(scope="module")
def sweep20():
    """n = 20, m = 5, I_i = 0.7^i at a dense, an intermediate and a sparse level (ReLU), and the
    dense and sparse levels for the linear model. ~20 s of training: every test reading it is slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    p = torch.tensor([[1.0], [0.4], [0.01]])
    relu = sp.ToyModel(sp.ToyConfig(20, 5, 3), p, sp.decaying_importance(20, 0.7), seed=0)
    sp.train(relu, steps=10_000, seed=0)
    linear = sp.ToyModel(sp.ToyConfig(20, 5, 2, relu_output=False), p[[0, 2]], sp.decaying_importance(20, 0.7), seed=0)
    sp.train(linear, steps=6_000, seed=0)
    torch.set_num_threads(threads)
    return relu.W.detach(), linear.W.detach()


@pytest.mark.slow
def test_dense_relu_model_represents_the_top_m_features_orthogonally(sweep20):
    W = sweep20[0][0]
    norms = sp.feature_norms(W)
    assert (norms[:5] > 0.9).all() and (norms[5:] < 0.1).all()
    assert (sp.superposition(W)[:5] < 0.05).all()
    assert sp.dims_per_feature(W[None]).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow
def test_intermediate_sparsity_superposes_in_antipodal_pairs(sweep20):
    W = sweep20[0][1]
    assert sp.n_represented(W[None]).item() > 5
    pairs = sp.antipodal_pairs(W)
    assert pairs, "expected antipodal pairs at 1 - S = 0.4"
    alone, shared = sp.alone_and_shared(W)
    assert 0 in alone  # the most important feature keeps its own dimension
    assert {i for pair in pairs for i in pair} <= set(shared)
    D = sp.dimensionality(W[None])[0]
    for i, j in pairs:
        assert D[i] + D[j] == pytest.approx(1.0, abs=0.05)  # a pair shares exactly one dimension


@pytest.mark.slow
def test_sparse_relu_model_packs_many_more_than_m_features(sweep20):
    W = sweep20[0][2]
    represented = sp.feature_norms(W) > sp.REPRESENTED_NORM
    assert represented.sum().item() >= 9
    assert (sp.superposition(W)[represented] > 0.5).all()  # all of them share
    assert sp.dims_per_feature(W[None]).item() < 0.5


@pytest.mark.slow
def test_linear_model_keeps_the_top_m_features_at_any_sparsity(sweep20):
    for W in sweep20[1]:
        norms = sp.feature_norms(W)
        assert (norms[:5] > 0.9).all() and (norms[5:] < 0.1).all()
        assert torch.allclose(W.T @ W, torch.diag((norms > 0.5).float()), atol=0.1)  # a projection


@pytest.fixture(scope="module")
def small_models():
    """n = 5 in m = 2: the geometry sweep (I_i = 0.9^i) and the anti-aligned non-uniform case, as
    instances of one stack. ~10 s of training: every test reading it is slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    geometry_p = torch.tensor([1.0, 0.46, 0.2, 0.01])[:, None].expand(4, 5)
    importance, probability, labels = sp.nonuniform_sparsity_setup(n_features=5, n_levels=3)
    anti = [k for k, (case, _) in enumerate(labels) if case == "anti-aligned"]
    p = torch.cat([geometry_p, probability[anti]])
    imp = torch.cat([sp.decaying_importance(5, 0.9).expand(4, 5), importance[anti]])
    model = sp.ToyModel(sp.ToyConfig(5, 2, len(p)), p, imp, seed=0)
    sp.train(model, steps=10_000, seed=0)
    torch.set_num_threads(threads)
    return model.W.detach()


@pytest.mark.slow
def test_geometry_goes_from_orthogonal_to_pairs_to_pentagon(small_models):
    W = small_models[:4]
    D = sp.dimensionality(W)
    dense, pairs_and_one, two_pairs, pentagon = range(4)
    assert sp.n_represented(W).tolist()[dense] == 2 and torch.allclose(D[dense, :2], torch.ones(2), atol=0.05)
    assert len(sp.antipodal_pairs(W[pairs_and_one])) == 1 and D[pairs_and_one].max() > 0.85
    assert len(sp.antipodal_pairs(W[two_pairs])) == 2
    assert torch.allclose(D[two_pairs].sort(descending=True).values[:4], torch.full((4,), 0.5), atol=0.05)
    assert torch.allclose(D[pentagon], torch.full((5,), 0.4), atol=0.03)


@pytest.mark.slow
def test_dimensionality_sticks_to_simple_fractions(small_models):
    W = small_models[:4]
    represented = sp.feature_norms(W) > sp.REPRESENTED_NORM
    D = sp.dimensionality(W)[represented]
    fractions = (1.0, 0.5, 0.4)  # alone, antipodal pair, pentagon
    distance = (D[:, None] - torch.tensor(fractions)).abs().min(1).values
    assert (distance < 0.1).all()
    assert (distance < 0.03).float().mean() > 0.8
    assert all(((D - f).abs() < 0.03).any() for f in fractions)  # each fraction occurs


@pytest.mark.slow
def test_anti_aligned_importance_and_sparsity_leave_no_feature_alone(small_models):
    for W in small_models[4:]:
        alone, shared = sp.alone_and_shared(W)
        assert alone == [] and len(shared) >= 3


@pytest.mark.slow
def test_features_align_with_neurons_only_in_a_privileged_basis():
    models = sp.privileged_basis_experiment(n_features=10, d_hidden=5, feature_probability=(1.0, 1.0, 1.0),
                                            steps=8_000)
    linear = sp.neuron_alignment(models["linear hidden layer"].W)
    relu = sp.neuron_alignment(models["ReLU hidden layer"].W)
    assert (relu > 0.95).all(), relu
    assert (linear < 0.85).all(), linear
    assert (sp.n_represented(models["ReLU hidden layer"].W) == 5).all()


# --------------------------------------------------------------------------- correlated and anti-correlated groups


def test_correlated_groups_switch_on_together():
    p = torch.tensor([[0.5, 0.1, 1.0], [0.2, 0.3, 0.05]])
    x = sp.generate_correlated_batch(200_000, p, 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 200_000, 6) and x.min() >= 0 and x.max() < 1
    on = (x > 0).reshape(2, 200_000, 3, 2)
    assert torch.equal(on[..., 0], on[..., 1])  # a group's features are on together, or not at all
    assert torch.allclose(on[..., 0].float().mean(1), p, atol=3e-3)
    both_groups = (on[0, :, 0, 0] & on[0, :, 1, 0]).float().mean().item()
    assert both_groups == pytest.approx(0.05, abs=3e-3)  # groups independent of each other
    values = x[x > 0]
    assert values.mean().item() == pytest.approx(0.5, abs=3e-3)
    assert (values < 0.25).float().mean().item() == pytest.approx(0.25, abs=3e-3)
    pair = x[0].reshape(-1, 3, 2)[:, 0][on[0, :, 0, 0]]
    assert abs(torch.corrcoef(pair.T)[0, 1].item()) < 0.01  # the values themselves are independent
    assert torch.equal(x, sp.generate_correlated_batch(200_000, p, 2, torch.Generator().manual_seed(0)))


def test_anticorrelated_groups_have_one_feature_at_most():
    p = torch.tensor([[0.9, 0.3], [0.6, 1.0]])
    x = sp.generate_anticorrelated_batch(300_000, p, 3, torch.Generator().manual_seed(0))
    assert x.shape == (2, 300_000, 6) and x.min() >= 0 and x.max() < 1
    per_group = (x > 0).reshape(2, 300_000, 2, 3)
    assert per_group.sum(-1).max() == 1
    assert torch.allclose(per_group.any(-1).float().mean(1), p, atol=3e-3)
    assert torch.allclose(per_group.float().mean(1), (p / 3)[..., None].expand(2, 2, 3), atol=3e-3)
    values = x[x > 0]
    assert values.mean().item() == pytest.approx(0.5, abs=3e-3)
    assert (values < 0.25).float().mean().item() == pytest.approx(0.25, abs=3e-3)
    both_groups = (per_group[0, :, 0].any(-1) & per_group[0, :, 1].any(-1)).float().mean().item()
    assert both_groups == pytest.approx(0.27, abs=3e-3)


def test_group_generators_reject_bad_input():
    with pytest.raises(ValueError):
        sp.generate_anticorrelated_batch(10, torch.tensor([0.5, 0.5]), 2)  # not [inst, groups]
    with pytest.raises(ValueError):
        sp.generate_correlated_batch(10, torch.tensor([[0.5]]), 0)
    with pytest.raises(ValueError):
        sp.generate_anticorrelated_batch(10, torch.tensor([[1.5]]), 2)
    with pytest.raises(ValueError):
        sp.correlation_experiment(group_size=2, feature_probability=(0.6,))


def test_train_data_argument_defaults_to_the_independent_features():
    cfg = sp.ToyConfig(5, 2, 2)
    runs = []
    probability = torch.full((2, 5), 0.2)
    for data in (None, "default", lambda b, g: sp.generate_batch(b, probability, g)):
        model = sp.ToyModel(cfg, 0.2, 1.0, seed=0)
        if data == "default":
            history = sp.train(model, steps=150, batch_size=64)
        else:
            history = sp.train(model, steps=150, batch_size=64, data=data)
        runs.append((model.W.detach().clone(), history))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(runs[0][0], runs[2][0])  # the same data handed in through ``data``



def test_group_geometry_on_known_configurations():
    # groups (0, 1), (2, 3): feature 1 antipodal to 0, 3 orthogonal to 2 and aligned with 0
    W = columns([1, 0], [-1, 0], [0, 1], [1, 0])
    r = sp.group_geometry(W, 2)
    assert r["within_pairs"] == 2 and r["across_pairs"] == 4 and r["represented"] == 4
    assert r["within_cos"] == pytest.approx(-0.5) and r["within_abs_cos"] == pytest.approx(0.5)
    assert r["within_antipodal"] == 0.5 and r["within_orthogonal"] == 0.5 and r["within_aligned"] == 0
    # across: (0,2) 0, (0,3) +1, (1,2) 0, (1,3) -1
    assert r["across_cos"] == pytest.approx(0) and r["across_abs_cos"] == pytest.approx(0.5)
    assert r["across_antipodal"] == 0.25 and r["across_aligned"] == 0.25 and r["across_orthogonal"] == 0.5
    dropped = columns([1, 0], [0.1, 0], [0, 1], [0, -1])  # feature 1 not represented: its pair does not count
    r = sp.group_geometry(dropped, 2)
    assert r["within_pairs"] == 1 and r["within_antipodal"] == 1 and r["represented"] == 3
    with pytest.raises(ValueError):
        sp.group_geometry(W, 3)


@pytest.mark.slow
def test_anticorrelated_features_pair_up_and_correlated_ones_do_not():
    """The chapter's correlation experiment, shrunk: the claims its text makes, at the denser level
    (anti-correlated pairs antipodal, correlated pairs collapsed onto one direction) and the
    sparser one (correlated pairs orthogonal)."""
    models, p = sp.correlation_experiment(n_per_level=8, steps=3000)
    sparse, dense = p == 0.05, p == 0.4
    anti = sp.group_geometry(models["anti-correlated"].W[dense], 2)
    indep = sp.group_geometry(models["independent"].W[dense], 2)
    corr_dense = sp.group_geometry(models["correlated"].W[dense], 2)
    corr_sparse = sp.group_geometry(models["correlated"].W[sparse], 2)
    assert anti["within_antipodal"] >= 0.7 and anti["within_antipodal"] > indep["within_antipodal"] + 0.4
    assert corr_dense["within_aligned"] >= 0.7
    assert corr_sparse["within_antipodal"] == 0 and corr_sparse["within_orthogonal"] >= 0.8
