"""utils.sae against independent computations: per-feature loops, closed forms, brute-force
minimisation, direct model runs; and one small SAE trained on synthetic features in superposition,
which must find them (the end-to-end test of the training loop)."""
import json
import math

import pytest
import random_models
import torch

from utils.data.dataset import analysis_tokens, batches
from utils.sae import (
    PRESETS,
    ActivationStore,
    JumpReLUFunction,
    SAEConfig,
    SparseAutoencoder,
    StepFunction,
    ce_loss_recovered_from,
    ce_losses,
    dead_fraction,
    dense_fraction,
    density_histogram,
    evaluate_sae,
    feature_density,
    fraction_variance_explained,
    geometric_median,
    l0,
    load_sae,
    log10_density,
    lr_at,
    per_input_loss,
    preset,
    resample_dead_features_,
    save_sae,
    sparsity_coeff_at,
    train_sae,
)
from utils.sae.saving import SAE_DIR

HOOK = "blocks.0.mlp.hook_post"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from utils.models import load_model

    return load_model("gelu-1l", device="cpu")


def tiny_cfg(**changes):
    base = dict(d_in=6, d_sae=10, batch_size=8, buffer_size=64, training_tokens=64, b_dec_init_samples=16,
                resample_inputs=16, device="cpu")
    return SAEConfig(**{**base, **changes})


def random_sae(seed=0, **changes):
    """An SAE with every parameter random (not the structured initialisation)."""
    sae = SparseAutoencoder(tiny_cfg(**changes))
    return random_models.randomize_sae_(sae, seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- oracles (loops)


def encode_loop(sae, x):
    """f_i = act(sum_j (x_j - b_dec[j]) W_enc[j, i] + b_enc[i]), one token and one feature at a time."""
    f = torch.zeros(len(x), sae.d_sae)
    for t in range(len(x)):
        z = torch.zeros(sae.d_sae)
        for i in range(sae.d_sae):
            z[i] = sum((x[t, j] - sae.b_dec[j]) * sae.W_enc[j, i] for j in range(sae.d_in)) + sae.b_enc[i]
        arch = sae.cfg.architecture
        if arch == "l1":
            f[t] = z.clamp_min(0)
        elif arch == "jumprelu":
            theta = sae.log_threshold.exp()
            f[t] = torch.where(z > theta, z, torch.zeros(()))
        else:
            keep = sorted(range(sae.d_sae), key=lambda i: -z[i].item())[:sae.cfg.k]
            for i in keep:
                f[t, i] = max(z[i].item(), 0.0)
    return f


def decode_loop(sae, f):
    """x_hat = b_dec + sum_i f_i W_dec[i]."""
    out = torch.zeros(len(f), sae.d_in)
    for t in range(len(f)):
        out[t] = sae.b_dec.clone()
        for i in range(sae.d_sae):
            out[t] += f[t, i] * sae.W_dec[i]
    return out


# --------------------------------------------------------------------------- encoder, decoder, loss


@pytest.mark.parametrize("arch", ["l1", "topk", "jumprelu"])
def test_encode_decode_match_per_feature_loops(arch):
    sae = random_sae(architecture=arch, k=3, jumprelu_init_threshold=0.3)
    x = randn(5, 6, seed=1)
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, encode_loop(sae, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(f), decode_loop(sae, f), atol=1e-5, rtol=1e-5)


def test_l1_loss_is_squared_error_plus_l1_of_activations_not_weights():
    sae = random_sae()
    x = randn(7, 6, seed=2)
    with torch.no_grad():
        x_hat, f, losses = sae(x, sparsity_coeff=0.37)
        f_loop = encode_loop(sae, x)
        x_hat_loop = decode_loop(sae, f_loop)
        mse = sum(((x[t] - x_hat_loop[t]) ** 2).sum() for t in range(7)) / 7
        l1 = sum(f_loop[t].abs().sum() for t in range(7)) / 7
    assert losses["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert losses["sparsity"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((mse + 0.37 * l1).item(), rel=1e-5)
    # Without an explicit coefficient the config's lambda is used.
    assert sae(x)[2]["loss"].item() == pytest.approx((mse + sae.cfg.l1_coeff * l1).item(), rel=1e-5)


def test_topk_keeps_exactly_k_features():
    sae = SparseAutoencoder(tiny_cfg(architecture="topk", k=4, d_sae=40, d_in=12))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: the ReLU removes nothing
    f = sae.encode(randn(50, 12, seed=3))
    assert ((f != 0).sum(-1) == 4).all()
    assert sae(randn(50, 12, seed=3))[2]["sparsity"].item() == 0  # no penalty term
    # With negative pre-activations among the top k, the ReLU leaves fewer than k.
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    assert (sae.encode(randn(50, 12, seed=3)) == 0).all()


def test_jumprelu_threshold_gets_the_pseudo_derivative():
    eps, theta = 0.2, 0.5
    z = torch.tensor([[0.45, 0.7, 0.58, 0.1], [0.55, 0.41, 0.3, 0.62]], requires_grad=True)
    threshold = torch.full((4,), theta, requires_grad=True)
    out = JumpReLUFunction.apply(z, threshold, eps)
    torch.testing.assert_close(out.detach(), torch.where(z > theta, z, torch.zeros(())).detach())
    out.sum().backward()
    # d/dtheta_i = -(theta/eps) * #{tokens with |z - theta| < eps/2}; d/dz = 1{z > theta}.
    near = ((z - theta).abs() < eps / 2).float().sum(0)
    torch.testing.assert_close(threshold.grad, -(theta / eps) * near)
    torch.testing.assert_close(z.grad, (z > theta).float())

    z.grad = threshold.grad = None
    StepFunction.apply(z, threshold, eps).sum().backward()
    torch.testing.assert_close(threshold.grad, -(1 / eps) * near)
    assert (z.grad == 0).all()  # the L0 term teaches only the thresholds


def test_jumprelu_sae_log_threshold_receives_gradient_from_both_loss_terms():
    sae = SparseAutoencoder(tiny_cfg(architecture="jumprelu", l0_coeff=0.5, jumprelu_bandwidth=2.0,
                                     jumprelu_init_threshold=0.1))
    x = randn(64, 6, seed=4)
    sae(x)[2]["mse"].backward()  # through JumpReLU's pseudo-derivative
    assert sae.log_threshold.grad is not None and (sae.log_threshold.grad != 0).any()
    # The L0 penalty (mean over tokens of the number firing) through the step's pseudo-derivative,
    # and the chain rule through theta = exp(log theta): d/dlog(theta_i) = theta_i * (-1/eps) * near_i / n.
    sae.zero_grad()
    sae(x)[2]["sparsity"].backward()
    with torch.no_grad():
        theta, z = sae.threshold, sae.pre_activations(x)
        near = ((z - theta).abs() < 2.0 / 2).float().sum(0)
    torch.testing.assert_close(sae.log_threshold.grad, theta * (-1 / 2.0) * near / 64)
    assert (near > 0).any()  # so the check above is not 0 == 0


def test_wrong_input_width_raises_a_clear_error():
    sae = SparseAutoencoder(tiny_cfg())
    with pytest.raises(ValueError, match="d_in"):
        sae.encode(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="d_sae"):
        sae.decode(torch.zeros(3, 11))


# --------------------------------------------------------------------------- decoder constraints


def test_normalize_decoder_gives_unit_rows_with_unchanged_directions():
    sae = random_sae()
    with torch.no_grad():
        sae.W_dec *= torch.linspace(0.1, 5, 10)[:, None]
    before = sae.W_dec.detach().clone()
    sae.normalize_decoder_()
    for i in range(sae.d_sae):
        assert sae.W_dec[i].norm().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.dot(sae.W_dec[i], before[i] / before[i].norm()).item() == pytest.approx(1.0, abs=1e-6)


def test_parallel_gradient_removal_is_tangent_and_keeps_norms_to_first_order():
    sae = random_sae()
    sae(randn(16, 6, seed=5))[2]["loss"].backward()
    grad = sae.W_dec.grad.clone()
    sae.remove_parallel_decoder_grad_()
    projected = sae.W_dec.grad
    W = sae.W_dec.detach()
    for i in range(sae.d_sae):
        w, g = W[i], grad[i]
        expected = g - torch.dot(g, w) / torch.dot(w, w) * w  # loop oracle
        torch.testing.assert_close(projected[i], expected, atol=1e-6, rtol=1e-5)
        assert abs(torch.dot(projected[i], w).item()) < 1e-5
    # A small step along the projected gradient changes the norms only at second order.
    for eta in (1e-2, 1e-3):
        change = ((W - eta * projected).norm(dim=1) - W.norm(dim=1)).abs().max().item()
        assert change <= eta ** 2 * projected.norm(dim=1).max().item() ** 2
    # ... while the raw gradient changes them at first order.
    assert ((W - 1e-3 * grad).norm(dim=1) - W.norm(dim=1)).abs().max().item() > 1e-5


# --------------------------------------------------------------------------- geometric median


def test_geometric_median_of_collinear_points_is_their_median():
    t = torch.tensor([-3.0, -1.0, 0.5, 2.0, 10.0, 40.0, 41.0])
    direction = torch.tensor([1.0, 2.0, -2.0]) / 3
    points = t[:, None] * direction + torch.tensor([1.0, 0.0, 5.0])
    torch.testing.assert_close(geometric_median(points), points[3], atol=1e-4, rtol=0)


def test_geometric_median_matches_brute_force_minimisation():
    g = torch.Generator().manual_seed(6)
    points = torch.cat([torch.randn(30, 2, generator=g), torch.randn(4, 2, generator=g) * 20 + 30])  # outliers

    def cost(y):
        return (points[None] - y[:, None]).norm(dim=-1).sum(-1)

    # Brute force: a fine grid, then a finer one around its best point.
    best = torch.zeros(2)
    for half_width in (40.0, 1.0, 0.02):
        axis = torch.linspace(-half_width, half_width, 201)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) + best
        best = grid[cost(grid).argmin()]
    ours = geometric_median(points)
    assert (ours - best).norm().item() < 1e-3
    assert cost(ours[None]).item() <= cost(best[None]).item() + 1e-4
    assert (ours - points.mean(0)).norm() > 2  # the mean is dragged by the outliers; the median is not


def test_b_dec_initialisations():
    sample = randn(100, 6, seed=7) + 3
    sae = SparseAutoencoder(tiny_cfg())
    sae.init_b_dec_(sample, "mean")
    torch.testing.assert_close(sae.b_dec.detach(), sample.mean(0))
    sae.init_b_dec_(sample)  # the config's default: geometric median
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(sample))
    with pytest.raises(ValueError):
        sae.init_b_dec_(sample, "median")


# --------------------------------------------------------------------------- resampling


def test_per_input_loss_matches_loop():
    sae = random_sae()
    x = randn(9, 6, seed=8)
    f = encode_loop(sae, x)
    expected = ((x - decode_loop(sae, f)) ** 2).sum(-1) + 0.3 * f.sum(-1)
    torch.testing.assert_close(per_input_loss(sae, x, 0.3), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_resampling_changes_exactly_the_dead_features_and_zeroes_exactly_their_adam_state():
    sae = random_sae(d_sae=12)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(3):  # give Adam non-zero state everywhere
        sae(randn(32, 6, seed=step))[2]["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    state_before = {name: {k: v.clone() for k, v in optimizer.state[p].items() if k != "step"}
                    for name, p in sae.named_parameters()}
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[1, 4, 5, 11]] = True
    inputs = randn(200, 6, seed=9)
    alive_norm = before["W_enc"][:, ~dead].norm(dim=0).mean()

    n = resample_dead_features_(sae, dead, inputs, optimizer, generator=torch.Generator().manual_seed(0))
    assert n == 4
    candidates = inputs - before["b_dec"]
    candidates = candidates / candidates.norm(dim=1, keepdim=True)
    chosen = []
    for i in range(12):
        if dead[i]:
            row = sae.W_dec[i].detach()
            assert row.norm().item() == pytest.approx(1.0, abs=1e-5)
            match = (candidates @ row).argmax()
            assert (candidates[match] @ row).item() == pytest.approx(1.0, abs=1e-5)  # an input, minus b_dec
            chosen.append(match.item())
            torch.testing.assert_close(sae.W_enc[:, i].detach(), 0.2 * alive_norm * row, atol=1e-5, rtol=1e-5)
            assert sae.b_enc[i].item() == 0
        else:
            assert torch.equal(sae.W_dec[i], before["W_dec"][i])
            assert torch.equal(sae.W_enc[:, i], before["W_enc"][:, i])
            assert sae.b_enc[i] == before["b_enc"][i]
    assert len(set(chosen)) == 4  # no two dead features sent to the same input
    assert torch.equal(sae.b_dec, before["b_dec"])

    where = {"W_dec": lambda t: t, "W_enc": lambda t: t.T, "b_enc": lambda t: t}  # feature on the first axis
    for name, p in sae.named_parameters():
        for key, old in state_before[name].items():
            new = optimizer.state[p][key]
            if name == "b_dec":
                assert torch.equal(new, old)
                continue
            per_feature_new, per_feature_old = where[name](new), where[name](old)
            assert (per_feature_new[dead] == 0).all()
            assert torch.equal(per_feature_new[~dead], per_feature_old[~dead])
            assert (per_feature_old[dead] != 0).any()  # so the zeroing did something


def test_resampling_draws_inputs_with_probability_proportional_to_squared_loss():
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # nothing fires: x_hat = b_dec, loss = ||x - b_dec||^2
    b = sae.b_dec.detach()
    unit = torch.eye(6)
    # Inputs at b_dec have zero loss and must never be drawn; two others with losses 1 and 2.
    inputs = torch.stack([b, b, b + unit[0], b, b + math.sqrt(2) * unit[1]])
    counts = torch.zeros(5)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[0] = True
    g = torch.Generator().manual_seed(1)
    start = {k: v.clone() for k, v in sae.state_dict().items()}
    for _ in range(400):
        sae.load_state_dict(start)  # a resampled feature fires, which would change the next draw's losses
        resample_dead_features_(sae, dead, inputs, generator=g)
        counts[(inputs - b).matmul(sae.W_dec[0].detach()).argmax()] += 1
    assert counts[[0, 1, 3]].sum() == 0
    # p(third) = 1^2 / (1^2 + 2^2) = 0.2; 400 draws: sd 0.02.
    assert counts[2] / 400 == pytest.approx(0.2, abs=0.07)


# --------------------------------------------------------------------------- metrics


def test_l0_fve_density_match_loops():
    g = torch.Generator().manual_seed(10)
    f = torch.randn(40, 15, generator=g).clamp_min(0.8) - 0.8
    f[:, 3] = 0  # a dead feature
    f[:, 7] = 1.0  # a dense one
    assert l0(f).item() == pytest.approx(sum((f[t] != 0).sum().item() for t in range(40)) / 40)
    density = feature_density(f)
    for i in range(15):
        assert density[i].item() == pytest.approx(sum(f[t, i] != 0 for t in range(40)).item() / 40)
    assert dead_fraction(density) == pytest.approx((density == 0).sum().item() / 15)
    assert dense_fraction(density, 0.3) == pytest.approx((density > 0.3).sum().item() / 15)
    assert log10_density(density)[3].item() == -10
    hist = density_histogram(density, bins=10, low=-3)
    assert hist["n_dead"] == 1 and hist["counts"].sum().item() + hist["n_below"] == 14

    x = torch.randn(50, 4, generator=g)
    x_hat = x + 0.3 * torch.randn(50, 4, generator=g)
    mean = [sum(x[t, j] for t in range(50)) / 50 for j in range(4)]
    residual = sum((x[t, j] - x_hat[t, j]) ** 2 for t in range(50) for j in range(4))
    total = sum((x[t, j] - mean[j]) ** 2 for t in range(50) for j in range(4))
    assert fraction_variance_explained(x, x_hat).item() == pytest.approx(1 - (residual / total).item(), rel=1e-5)
    assert fraction_variance_explained(x, x).item() == 1.0


def identity_sae(d_in=512):
    """d_sae = 2 d_in, features relu(x_j) and relu(-x_j): x_hat = relu(x) - relu(-x) = x exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=2 * d_in, device="cpu"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_ce_loss_recovered_is_one_for_identity_and_zero_for_zero_reconstruction(model):
    tokens = analysis_tokens(seq_len=64, n_seqs=4)
    ce = ce_losses(identity_sae(), model, tokens, HOOK)
    assert ce["ce_sae"] == pytest.approx(ce["ce_clean"], abs=1e-5)
    assert ce["ce_clean"] == pytest.approx(model(tokens, return_type="loss").item(), abs=1e-6)
    assert ce["ce_zero_ablation"] > ce["ce_clean"] + 0.3
    assert ce_loss_recovered_from(ce) == pytest.approx(1.0, abs=1e-4)

    zero = identity_sae()
    with torch.no_grad():
        zero.W_dec.zero_()
    ce0 = ce_losses(zero, model, tokens, HOOK)
    assert ce0["ce_sae"] == pytest.approx(ce0["ce_zero_ablation"], abs=1e-6)
    assert ce_loss_recovered_from(ce0) == pytest.approx(0.0, abs=1e-5)


def test_evaluate_sae_matches_direct_computation(model):
    sae = random_sae(d_in=512, d_sae=64)
    n_seqs, seq_len = 6, 32
    out = evaluate_sae(sae, model, n_tokens=n_seqs * (seq_len - 1), batch_seqs=4, seq_len=seq_len)
    tokens = analysis_tokens(seq_len=seq_len, n_seqs=n_seqs)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK][:, 1:].reshape(-1, 512)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    assert out["n_tokens"] == len(x)
    assert out["l0"] == pytest.approx(l0(f).item(), rel=1e-6)
    assert out["fve"] == pytest.approx(fraction_variance_explained(x, x_hat).item(), rel=1e-4, abs=1e-5)
    assert out["dead_fraction"] == pytest.approx(dead_fraction(feature_density(f)))
    torch.testing.assert_close(out["density"], feature_density(f))
    ce = ce_losses(sae, model, tokens, HOOK)
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation"):
        assert out[key] == pytest.approx(ce[key], abs=1e-4)


# --------------------------------------------------------------------------- activation store


def windows(seed, model_batch_size, seq_len):
    return batches("train", model_batch_size, seq_len, torch.Generator().manual_seed(seed))


def test_store_buffer_is_the_hook_activations_of_its_text(model):
    seq_len, rows = 16, 5
    store = ActivationStore(model, HOOK, batch_size=8, buffer_size=rows * (seq_len - 1), seq_len=seq_len,
                            model_batch_size=8, seed=3)
    tokens = next(windows(3, 8, seq_len))[:rows]
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    direct = cache[HOOK][:, 1:].reshape(-1, 512)  # BOS position dropped
    # The buffer is a shuffle of exactly these rows: a bijection within float tolerance.
    distance = torch.cdist(store.buffer, direct, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(1)
    assert distance.min(1).values.max().item() < 1e-4
    assert sorted(nearest.tolist()) == list(range(len(direct)))
    assert store.d_in == 512 and store.tokens_processed == len(direct)


class NumberedStore(ActivationStore):
    """The buffer logic on numbered rows: activation n is the vector [n, n, ...]."""

    def _fresh(self, n):
        start = self.tokens_processed
        self.tokens_processed += n
        return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, self.d_in).clone()


def test_store_refills_half_and_never_hands_out_a_row_twice(model):
    store = NumberedStore(model, HOOK, batch_size=10, buffer_size=64, seq_len=8, model_batch_size=4, seed=0)
    assert store.tokens_processed == 64
    seen = []
    for _ in range(40):
        batch = store.next_batch()
        assert batch.shape == (10, 512)
        seen += batch[:, 0].long().tolist()
    assert len(seen) == len(set(seen))  # every row handed out once at most
    assert store.refills > 5
    # Each refill replaced exactly the rows used since the last one (30 = 3 batches of the 32-row half).
    assert store.tokens_processed == 64 + 30 * (store.refills - 1)
    # Fresh rows mix with old ones: later batches contain rows generated before the last refill.
    assert min(seen[-10:]) < store.tokens_processed - 30


def test_store_is_seeded(model):
    def first_batches(seed):
        store = ActivationStore(model, HOOK, batch_size=16, buffer_size=64, seq_len=12, model_batch_size=4, seed=seed)
        return torch.cat([store.next_batch() for _ in range(6)])

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_store_measures_its_throughput(model):
    store = ActivationStore(model, HOOK, batch_size=16, buffer_size=64, seq_len=12, model_batch_size=4)
    speed = store.measure_throughput(n_batches=5)
    assert speed["served_per_s"] > 0 and speed["model_activations_per_s"] > 0
    # 5 batches of 16 from a 32-row half: two refills of 32 rows, each made of whole 11-token rows.
    assert speed["model_activations_during_serving"] == 2 * 33


def test_store_rejects_bad_settings(model):
    with pytest.raises(ValueError, match="buffer_size"):
        ActivationStore(model, HOOK, batch_size=64, buffer_size=100)
    with pytest.raises(ValueError, match="hook"):
        ActivationStore(model, "blocks.0.mlp.hook_nothing", batch_size=8, buffer_size=64)


# --------------------------------------------------------------------------- config, save/load


@pytest.mark.parametrize("changes, field", [
    (dict(d_sae=0), "d_sae"), (dict(architecture="relu"), "architecture"), (dict(architecture="topk", k=11), "k"),
    (dict(k=0), "k"),
    (dict(l1_coeff=-1.0), "l1_coeff"), (dict(lr=0.0), "lr"), (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
    (dict(buffer_size=10), "buffer_size"), (dict(training_tokens=4), "training_tokens"),
    (dict(resample_steps=(8,)), "resample_steps"), (dict(resample_steps=(4, 2)), "resample_steps"),
    (dict(device="tpu"), "device"),
    (dict(b_dec_init="median"), "b_dec_init"), (dict(lr_decay_fraction=1.5), "lr_decay_fraction"),
    (dict(encoder_init_norm=0.0), "encoder_init_norm"), (dict(grad_clip_norm=0.0), "grad_clip_norm"),
    (dict(grad_clip_norm=float("inf")), "grad_clip_norm"),
])
def test_config_rejects_bad_values(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny_cfg(**changes)


def test_config_round_trip_and_presets():
    for name in PRESETS:
        cfg = preset(name)
        assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    assert {"cpu", "cpu-topk", "gpu"} <= set(PRESETS)
    # The encoder starts small for L1 and TopK, at full scale for JumpReLU (unless set).
    assert tiny_cfg().initial_encoder_norm == 0.1 and tiny_cfg(encoder_init_norm=0.5).initial_encoder_norm == 0.5
    assert tiny_cfg(architecture="jumprelu").initial_encoder_norm == 1.0
    sae = SparseAutoencoder(tiny_cfg())
    torch.testing.assert_close(sae.W_enc.detach(), 0.1 * sae.W_dec.detach().T)
    assert sae.W_enc.shape == (sae.d_in, sae.d_sae) and sae.W_dec.shape == (sae.d_sae, sae.d_in)
    assert preset("cpu", d_sae=1024).d_sae == 1024
    with pytest.raises(ValueError, match="unknown"):
        SAEConfig.from_dict({"d_sea": 3})
    with pytest.raises(ValueError, match="preset"):
        preset("tpu")


def test_schedules():
    cfg = tiny_cfg(training_tokens=800, batch_size=8, lr=1.0, lr_warmup_steps=10, lr_decay_fraction=0.2,
                   l1_coeff=2.0, l1_warmup_steps=20)
    assert cfg.steps == 100
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(50, cfg) == 1.0 and lr_at(90, cfg) == pytest.approx(0.5) and lr_at(99, cfg) == pytest.approx(0.05)
    assert sparsity_coeff_at(9, cfg) == pytest.approx(1.0) and sparsity_coeff_at(40, cfg) == 2.0


@pytest.mark.parametrize("arch", ["l1", "jumprelu"])
def test_save_load_round_trip(tmp_path, arch):
    sae = random_sae(architecture=arch)
    path = save_sae(sae, tmp_path / "sub" / "my_sae", metrics={"l0": 3.5})
    assert path.exists() and (tmp_path / "sub" / "my_sae.json").exists()
    for handle in (tmp_path / "sub" / "my_sae", str(path)):
        loaded = load_sae(handle)
        assert loaded.cfg == sae.cfg and loaded.metrics == {"l0": 3.5}
        for (name, p), q in zip(sae.named_parameters(), loaded.parameters()):
            assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="no saved SAE"):
        load_sae(tmp_path / "missing")
    # fp16 files (for bundling) load back as fp32, equal to the rounded weights.
    save_sae(sae, tmp_path / "half", dtype=torch.float16)
    half = load_sae(tmp_path / "half")
    assert half.W_dec.dtype == torch.float32
    assert torch.equal(half.W_dec, sae.W_dec.detach().half().float())


def rewrite_weights(stem, state, metadata):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(stem) + ".safetensors", metadata=metadata)


@pytest.mark.parametrize("d_sae", [10, 6])  # 6 = d_in: the shapes cannot tell a transposed file apart
def test_load_sae_reads_the_saelens_layout_and_refuses_any_other(tmp_path, d_sae):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from utils.sae.saving import LAYOUT

    sae = random_sae(d_sae=d_sae)
    save_sae(sae, tmp_path / "new")
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        assert handle.metadata()["layout"] == LAYOUT
    stored = load_file(str(tmp_path / "new.safetensors"))
    assert stored["W_enc"].shape == (6, d_sae) and stored["W_dec"].shape == (d_sae, 6)
    assert "layout" in json.loads((tmp_path / "new.json").read_text())
    loaded = load_sae(tmp_path / "new")
    for (name, p), q in zip(sae.named_parameters(), loaded.parameters()):
        assert torch.equal(p, q), name
    assert loaded.W_enc.stride() == sae.W_enc.stride() and loaded.W_dec.stride() == sae.W_dec.stride()
    # The course's earlier layout (the transposes, no layout key) and unknown keys are refused, by name.
    transposed = dict(stored, W_enc=stored["W_enc"].T, W_dec=stored["W_dec"].T)
    for metadata in ({"format": "pt"}, {"format": "pt", "layout": "sideways"}):
        rewrite_weights(tmp_path / "new", transposed, metadata)
        with pytest.raises(ValueError, match="layout"):
            load_sae(tmp_path / "new")
    rewrite_weights(tmp_path / "new", dict(stored, W_dec=stored["W_dec"][:, :5]), {"format": "pt", "layout": LAYOUT})
    with pytest.raises(ValueError, match="do not fit"):
        load_sae(tmp_path / "new")


def test_bundled_sae_files_are_in_the_saelens_layout():
    from safetensors import safe_open

    from utils.sae.saving import LAYOUT

    for name, (_, d_sae) in BUNDLED.items():
        with safe_open(str(SAE_DIR / f"{name}.safetensors"), framework="pt") as handle:
            assert handle.metadata().get("layout") == LAYOUT, name
            assert handle.get_slice("W_enc").get_shape() == [512, d_sae]
            assert handle.get_slice("W_dec").get_shape() == [d_sae, 512]
        assert "W_dec [d_sae, d_in]" in json.loads((SAE_DIR / f"{name}.json").read_text())["layout"]


def test_initialisation_is_the_seeded_draw_stored_contiguously():
    """The seeded initialisation draws [d_in, d_sae] unit columns, one feature each (the draw the
    course has always made, so a seed gives the same dictionary), and stores them in the current
    layout, every parameter contiguous: W_dec [d_sae, d_in] their transpose, W_enc [d_in, d_sae]
    them scaled by initial_encoder_norm."""
    cfg = tiny_cfg(d_sae=10)
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    directions = torch.randn(cfg.d_in, cfg.d_sae, generator=g)
    directions /= directions.norm(dim=0, keepdim=True)
    assert cfg.initial_encoder_norm == 0.1
    assert torch.equal(sae.W_dec.detach(), directions.T) and torch.equal(sae.W_enc.detach(), 0.1 * directions)
    assert all(p.is_contiguous() for p in sae.parameters())


# --------------------------------------------------------------------------- training, end to end


class SyntheticStore:
    """Sparse combinations of known unit directions: x = sum_i c_i d_i, c_i ~ U[0.5, 1.5] w.p. p."""

    def __init__(self, directions, p, batch_size, seed=0):
        self.directions, self.p, self.batch_size = directions, p, batch_size
        self.d_in = directions.shape[1]
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n):
        present = torch.rand(n, len(self.directions), generator=self.generator) < self.p
        coeff = 0.5 + torch.rand(n, len(self.directions), generator=self.generator)
        return (present * coeff) @ self.directions

    def next_batch(self):
        return self.draw(self.batch_size)

    def sample(self, n):
        return self.draw(n)


@pytest.mark.parametrize("arch, extra", [("l1", dict(l1_coeff=0.3)), ("topk", dict(k=4))])
@pytest.mark.slow
def test_training_recovers_features_in_superposition(arch, extra):
    g = torch.Generator().manual_seed(0)
    n_true, d_in = 48, 24  # twice as many features as dimensions
    directions = torch.randn(n_true, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    store = SyntheticStore(directions, p=0.04, batch_size=256)
    cfg = SAEConfig(d_in=d_in, d_sae=96, architecture=arch, lr=3e-3, lr_warmup_steps=20, batch_size=256,
                    training_tokens=256 * 600, buffer_size=4096, b_dec_init_samples=1024, resample_inputs=2048,
                    resample_steps=(200, 350), resample_window=100, device="cpu", log_every=100, **extra)
    sae, log = train_sae(cfg, store=store, progress=False)
    cos = directions @ sae.W_dec.detach().T  # [n_true, d_sae], decoder rows are unit norm
    recovered = (cos.max(1).values > 0.9).float().mean().item()
    assert recovered >= 0.9, f"only {recovered:.0%} of the true features found (max cos > 0.9)"
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96), atol=1e-5, rtol=0)
    assert len(log["history"]) == 6 and log["history"][-1]["fve"] > 0.8
    assert [r["step"] for r in log["resampled"]] == [200, 350]


def test_gradient_clipping_bounds_the_gradient_norm_adam_sees(monkeypatch):
    """With grad_clip_norm set, every gradient handed to Adam has at most that norm (checked at
    each step against the norm over all parameters), and some were longer before clipping."""
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(torch.cat([p.grad.flatten() for group in self.param_groups for p in group["params"]]).norm())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    store = SyntheticStore(torch.eye(6) * 10, p=0.5, batch_size=8)
    train_sae(tiny_cfg(training_tokens=8 * 20), store=store, progress=False)
    unclipped = torch.stack(seen)
    seen.clear()
    train_sae(tiny_cfg(training_tokens=8 * 20, grad_clip_norm=0.5), store=store, progress=False)
    assert (unclipped > 0.5).any() and (torch.stack(seen) <= 0.5 * (1 + 1e-5)).all()


def test_step_benchmark_script_reports_a_dense_rate(capsys):
    """scripts/bench_sae_step.py (the GPU measurement of the SAE chapter) runs end to end, on a tiny
    CPU problem here: positive rates, and f dense enough that the CPU step kept its dense path."""
    import importlib.util
    from pathlib import Path

    from utils.sae import cpu_step

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_sae_step.py"
    spec = importlib.util.spec_from_file_location("bench_sae_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(["--device", "cpu", "--d-in", "16", "--d-sae", "64", "--batch", "32", "--intervals", "3",
                    "--steps-per-interval", "2"])
    assert r["timed_steps"] == 4 and r["tokens_per_s"] > 0 and r["matmul_gflops"] > 0
    assert r["gflops"] == pytest.approx(r["tokens_per_s"] / 32 * 10 * 32 * 16 * 64 / 1e9)
    assert r["l0_fraction"] >= cpu_step.SPARSE_MAX_DENSITY
    assert "tokens/s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least 2 intervals"):
        bench.measure(16, 64, 32, "cpu", intervals=1)


def test_train_sae_rejects_a_store_of_the_wrong_width():
    store = SyntheticStore(torch.eye(5), p=0.5, batch_size=8)
    with pytest.raises(ValueError, match="d_in"):
        train_sae(tiny_cfg(), store=store, progress=False)


BUNDLED = {  # name: (architecture, d_sae)
    "gelu-1l-mlp-l1": ("l1", 2048), "gelu-1l-mlp-l1-seed1": ("l1", 2048), "gelu-1l-mlp-l1-d512": ("l1", 512),
    "gelu-1l-mlp-topk-k24": ("topk", 2048),
}


@pytest.mark.parametrize("name", sorted(BUNDLED))
@pytest.mark.slow
def test_bundled_saes_meet_the_quality_bar_on_fresh_tokens(name, model):
    """Each shipped SAE, re-measured here on held-out text, matches the metrics saved beside it and
    meets the chapter's bar for the CPU preset: L0 5-50, CE loss recovered >= 0.85, dead < 15%
    (on its 131k-token evaluation; TopK gives no gradient to a feature outside the top k, so more die
    between resamplings: its bar is 25%)."""
    sae = load_sae(name)
    assert (sae.cfg.architecture, sae.d_sae) == BUNDLED[name]
    fresh = evaluate_sae(sae, model, n_tokens=8192)
    saved = sae.metrics
    assert fresh["l0"] == pytest.approx(saved["l0"], rel=0.15)
    assert fresh["fve"] == pytest.approx(saved["fve"], abs=0.03)
    assert fresh["ce_loss_recovered"] == pytest.approx(saved["ce_loss_recovered"], abs=0.03)
    assert 5 <= fresh["l0"] <= 50 and fresh["ce_loss_recovered"] >= 0.85
    assert saved["dead_fraction"] < (0.25 if sae.cfg.architecture == "topk" else 0.15)


# --------------------------------------------------------------------------- the hand-written CPU step


def sae_firing_on_a_tenth(architecture, seed=0):
    """A float64 SAE (random parameters, b_dec non-zero) whose features fire on ~10% of x's rows."""
    torch.manual_seed(seed)
    sae = random_sae(seed, d_in=24, d_sae=96, architecture=architecture, k=3).double()
    x = torch.randn(40, 24, dtype=torch.float64).relu() * 2
    with torch.no_grad():
        sae.b_enc -= sae.pre_activations(x).quantile(0.9, dim=0)
    return sae, x


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("architecture", ["l1", "topk"])
def test_cpu_step_gives_autograds_losses_and_gradients(architecture, path, monkeypatch):
    """cpu_step.step_gradients_ (gradients derived by hand; CSR kernels on the sparse path) against
    sae(x) + loss.backward(), in float64: every loss, every parameter's gradient, the count of
    non-zeros and which features fired."""
    from utils.sae import cpu_step

    monkeypatch.setattr(cpu_step, "SPARSE_MAX_DENSITY", 0.0 if path == "dense" else 1.0)
    sae, x = sae_firing_on_a_tenth(architecture)
    _, f, losses = sae(x, sparsity_coeff=1.5)
    losses["loss"].backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)

    took = {"csr": 0}
    to_csr = torch.Tensor.to_sparse_csr
    monkeypatch.setattr(torch.Tensor, "to_sparse_csr", lambda t: took.__setitem__("csr", took["csr"] + 1) or to_csr(t))
    result = cpu_step.step_gradients_(sae, x, sparsity_coeff=1.5)
    assert took["csr"] == (path == "sparse")
    for key in ("loss", "mse", "sparsity"):
        assert result.losses[key].item() == pytest.approx(losses[key].item(), abs=1e-10), key
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-10, rtol=0, msg=name)
    assert result.n_active.item() == (f != 0).sum().item()
    assert torch.equal(result.fired, (f != 0).any(0))


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_cpu_step_with_a_workspace_reuses_its_buffers_and_gives_the_same_gradients(path, monkeypatch):
    """Two consecutive steps with one workspace dict: the same gradients as without it, on each
    batch, and the second step writes into the memory the first one allocated."""
    from utils.sae import cpu_step

    monkeypatch.setattr(cpu_step, "SPARSE_MAX_DENSITY", 0.0 if path == "dense" else 1.0)
    sae, x = sae_firing_on_a_tenth("l1")
    batches = [x, x.flip(0) * 1.3]
    expected = []
    for batch in batches:
        cpu_step.step_gradients_(sae, batch, 1.5)
        expected.append({name: p.grad.clone() for name, p in sae.named_parameters()})
    workspace, addresses = {}, []
    for batch, grads in zip(batches, expected):
        cpu_step.step_gradients_(sae, batch, 1.5, workspace)
        for name, p in sae.named_parameters():
            torch.testing.assert_close(p.grad, grads[name], atol=1e-12, rtol=0, msg=name)
        addresses.append({name: buf.data_ptr() for name, buf in workspace.items()})
    assert addresses[0] and addresses[0] == addresses[1]
    assert ("grad_W_dec" in workspace) == (path == "dense")


@pytest.mark.parametrize("architecture", ["l1", "topk"])
def test_cpu_step_on_a_batch_where_nothing_fires(architecture):
    """f == 0 everywhere (the sparse path with an empty CSR matrix): the gradients are autograd's,
    nothing counts as fired."""
    from utils.sae import cpu_step

    sae, x = sae_firing_on_a_tenth(architecture)
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
    _, _, losses = sae(x, sparsity_coeff=1.5)
    losses["loss"].backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    result = cpu_step.step_gradients_(sae, x, sparsity_coeff=1.5)
    assert result.n_active.item() == 0 and not result.fired.any()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-10, rtol=0, msg=name)


def test_cpu_step_refuses_what_it_does_not_handle():
    from utils.sae import cpu_step

    sae, x = sae_firing_on_a_tenth("jumprelu")
    assert not cpu_step.applies(sae, "cpu")
    with pytest.raises(ValueError, match="'l1' and 'topk'"):
        cpu_step.step_gradients_(sae, x, 1.0)
    sae, x = sae_firing_on_a_tenth("l1")
    assert cpu_step.applies(sae, "cpu") and not cpu_step.applies(sae, "cuda")
    with pytest.raises(ValueError, match="batch, d_in"):
        cpu_step.step_gradients_(sae, x[None], 1.0)
    with pytest.raises(ValueError, match="d_in"):
        cpu_step.step_gradients_(sae, x[:, :5], 1.0)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fused_adam_gets_gradients_in_its_parameters_layout(path, monkeypatch):
    """torch's fused Adam reads a gradient as if it had its parameter's strides (a row-major gradient
    on a transposed parameter trains on scrambled numbers). The SAE's parameters are contiguous, and
    the CPU step hands each one a contiguous gradient of its shape, on both paths, so fused and
    per-tensor Adam make the same step."""
    from utils.sae import cpu_step

    monkeypatch.setattr(cpu_step, "SPARSE_MAX_DENSITY", 0.0 if path == "dense" else 1.0)
    updated = []
    for fused in (False, True):
        sae, x = sae_firing_on_a_tenth("l1")
        sae.float()
        cpu_step.step_gradients_(sae, x.float(), 1.0)
        for p in sae.parameters():
            assert p.is_contiguous() and p.grad.shape == p.shape and p.grad.stride() == p.stride()
        torch.optim.Adam(sae.parameters(), lr=0.1, fused=fused).step()
        updated.append([p.detach().clone() for p in sae.parameters()])
    for fused, unfused in zip(updated[1], updated[0]):
        torch.testing.assert_close(fused, unfused)


@pytest.mark.parametrize("architecture", ["l1", "topk"])
def test_training_through_the_cpu_step_matches_autograd(architecture, monkeypatch):
    """Thirty steps of train_sae (lr and λ warm-ups, resampling at step 20) through the CPU step
    and through autograd end at the same SAE, to float32 rounding. The CPU step is the opt-in
    ``fast_cpu=True``; the default is autograd's."""
    from utils.sae import cpu_step

    used = []
    step_gradients = cpu_step.step_gradients_
    monkeypatch.setattr(cpu_step, "step_gradients_", lambda *a, **k: used.append(1) or step_gradients(*a, **k))
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(32, 16, generator=g)
    cfg = SAEConfig(d_in=16, d_sae=64, architecture=architecture, k=4, l1_coeff=0.3, lr=3e-3, lr_warmup_steps=5,
                    l1_warmup_steps=10, batch_size=64, training_tokens=64 * 30, buffer_size=1024,
                    b_dec_init_samples=256, resample_inputs=256, resample_steps=(20,), resample_window=10,
                    device="cpu", log_every=10)
    trained, histories = [], []
    assert SAEConfig().fast_cpu is False
    for use_cpu_step in (True, False):
        used.clear()
        sae, log = train_sae(cfg.replace(fast_cpu=use_cpu_step),
                             store=SyntheticStore(directions / directions.norm(dim=1, keepdim=True), p=0.1,
                                                  batch_size=64), progress=False)
        assert len(used) == (30 if use_cpu_step else 0)
        trained.append(sae)
        histories.append(log["history"])
    for (name, p), q in zip(trained[0].named_parameters(), trained[1].parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=name)
    for ours, reference in zip(*histories):
        for key in ("loss", "mse", "l0", "fve", "dead_fraction"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), (ours["step"], key)


# --------------------------------------------------------------------------- AuxK (Gao et al. 2024)


def test_auxk_off_is_the_old_step_bit_for_bit(monkeypatch):
    """aux_k=None trains exactly as before; so does AuxK at aux_coeff=0 on the same (autograd) path:
    the aux term adds exact zeros to the loss and to every gradient."""
    monkeypatch.setattr("utils.sae.cpu_step.applies", lambda sae, device: False)
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(40, 12, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    runs = []
    for aux in (dict(), dict(aux_k=8, aux_coeff=0.0, aux_dead_steps=5)):
        cfg = SAEConfig(d_in=12, d_sae=64, architecture="topk", k=3, batch_size=128, training_tokens=128 * 60,
                        buffer_size=1024, b_dec_init_samples=256, resample_inputs=256, device="cpu", log_every=10,
                        **aux)
        sae, log = train_sae(cfg, store=SyntheticStore(directions, p=0.05, batch_size=128), progress=False)
        runs.append(([h["loss"] for h in log["history"]], {k: v.clone() for k, v in sae.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k


def test_auxk_loss_reaches_only_the_dead_latents():
    sae = random_sae(architecture="topk", k=2, aux_k=3, d_sae=10)
    x = randn(16, 6, seed=5)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7, 8]] = True
    z = sae.pre_activations(x)
    x_hat = sae.decode(sae.activation(z))
    aux = sae.aux_loss(x, x_hat, z, dead)
    assert aux.item() > 0
    aux.backward()
    live = ~dead
    assert sae.W_enc.grad[:, dead].abs().sum() > 0 and sae.W_dec.grad[dead].abs().sum() > 0
    assert torch.all(sae.W_enc.grad[:, live] == 0) and torch.all(sae.W_dec.grad[live] == 0)
    assert torch.all(sae.b_enc.grad[live] == 0)
    # by hand: the 3 largest dead pre-activations of each row, ReLU'd, decoded without b_dec, vs x - x_hat
    with torch.no_grad():
        z_dead = torch.where(dead, z, torch.tensor(float("-inf")))
        f_aux = torch.zeros_like(z)
        for row in range(len(x)):
            for i in z_dead[row].topk(3).indices.tolist():
                f_aux[row, i] = max(z[row, i].item(), 0.0)
        expected = ((x - x_hat) - f_aux @ sae.W_dec).pow(2).sum() / len(x)
    assert aux.item() == pytest.approx(expected.item(), rel=1e-5)
    # in the forward pass: "loss" includes aux_coeff * aux; no dead latent, no aux loss
    _, _, losses = sae(x, dead=dead)
    assert losses["loss"].item() == pytest.approx((losses["mse"] + sae.cfg.aux_coeff * losses["aux"]).item(), rel=1e-6)
    assert sae(x, dead=torch.zeros(10, dtype=torch.bool))[2]["aux"].item() == 0


def test_fast_cpu_is_an_opt_in_and_validated():
    assert SAEConfig().fast_cpu is False and all(not cfg.fast_cpu for cfg in PRESETS.values())
    assert tiny_cfg(fast_cpu=True).fast_cpu is True
    with pytest.raises(ValueError, match="fast_cpu"):
        tiny_cfg(fast_cpu=1)


def test_auxk_config_is_validated():
    with pytest.raises(ValueError, match="aux_k"):
        tiny_cfg(architecture="l1", aux_k=4)
    with pytest.raises(ValueError, match="aux_k"):
        tiny_cfg(architecture="topk", k=2, aux_k=11)
    with pytest.raises(ValueError, match="aux_coeff"):
        tiny_cfg(architecture="topk", k=2, aux_k=4, aux_coeff=-1.0)
    assert SAEConfig().aux_k is None and SAEConfig().aux_coeff == 1 / 32
