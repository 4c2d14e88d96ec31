"""utils.sae.exercises (chapter 05's pure-tensor references) against the SAE package they mirror and
against per-element loops."""
import pytest
import random_models
import torch

from utils.sae import (
    SAEConfig,
    SparseAutoencoder,
    ce_loss_recovered_from,
    dead_fraction,
    dense_fraction,
    per_input_loss,
    resample_dead_features_,
)
from utils.sae import exercises as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_sae(seed=0, d_in=6, d_sae=10):
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=8, buffer_size=64, training_tokens=64,
                                      b_dec_init_samples=16, resample_inputs=16, device="cpu"))
    return random_models.randomize_sae_(sae, seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_matches_the_module_and_a_loop():
    sae = random_sae()
    x = randn(7, 6, seed=1) + 1.0
    f, x_hat = ref.sae_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    with torch.no_grad():
        assert torch.allclose(f, sae.encode(x), atol=1e-6)
        assert torch.allclose(x_hat, sae.decode(sae.encode(x)), atol=1e-6)
    for t in range(len(x)):
        for i in range(sae.d_sae):
            z = sum((x[t, j] - sae.b_dec[j]) * sae.W_enc[j, i] for j in range(sae.d_in)) + sae.b_enc[i]
            assert f[t, i].item() == pytest.approx(max(z.item(), 0.0), abs=1e-5)
        rebuilt = sae.b_dec + sum(f[t, i] * sae.W_dec[i] for i in range(sae.d_sae))
        assert torch.allclose(x_hat[t], rebuilt, atol=1e-5)


def test_loss_matches_the_module():
    sae = random_sae()
    x = randn(9, 6, seed=2)
    with torch.no_grad():
        x_hat, f, losses = sae(x, sparsity_coeff=1.7)
    assert ref.sae_loss(x, x_hat, f, sae.W_dec, 1.7).item() == pytest.approx(losses["loss"].item(), rel=1e-6)
    by_hand = sum(((x[b] - x_hat[b]) ** 2).sum() + 1.7 * f[b].abs().sum() for b in range(len(x))) / len(x)
    assert ref.sae_loss(x, x_hat, f, sae.W_dec, 1.7).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_decoder_constraint_matches_the_module():
    sae = random_sae()
    with torch.no_grad():
        sae.W_dec.mul_(randn(10, 1, seed=3).abs() + 0.5)  # rows of many lengths
    W = sae.W_dec.detach().clone()
    grad = randn(10, 6, seed=4)
    sae.W_dec.grad = grad.clone()
    sae.remove_parallel_decoder_grad_()
    projected = ref.remove_parallel_grad(W, grad)
    assert torch.allclose(projected, sae.W_dec.grad, atol=1e-6)
    assert torch.allclose((projected * W).sum(1), torch.zeros(10), atol=1e-5)  # orthogonal to each row
    removed = grad - projected  # parallel to each row: removing its own projection leaves nothing
    assert torch.allclose(removed - ((removed * W).sum(1) / (W * W).sum(1))[:, None] * W, torch.zeros(10, 6),
                          atol=1e-5)
    sae.normalize_decoder_()
    assert torch.allclose(ref.normalize_decoder(W), sae.W_dec.detach(), atol=1e-6)
    assert torch.allclose(ref.normalize_decoder(W).norm(dim=1), torch.ones(10), atol=1e-6)


def test_metrics_match_the_module():
    ce = {"ce_clean": 3.1, "ce_sae": 3.4, "ce_zero_ablation": 5.0}
    assert ref.ce_loss_recovered(**ce) == pytest.approx(ce_loss_recovered_from(ce))
    assert ref.ce_loss_recovered(3.0, 3.0, 4.0) == 1.0 and ref.ce_loss_recovered(3.0, 4.0, 4.0) == 0.0
    density = torch.tensor([0.0, 0.0, 1e-7, 0.05, 0.1, 0.2, 0.5, 0.01])
    dead, dense = ref.dead_dense_fractions(density, 0.1)
    assert dead == pytest.approx(dead_fraction(density)) == pytest.approx(2 / 8)
    assert dense == pytest.approx(dense_fraction(density, 0.1)) == pytest.approx(2 / 8)


def test_resampling_matches_the_trainer_and_touches_only_dead_features():
    torch.manual_seed(0)
    sae = random_sae(seed=5)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(3):  # real, non-zero Adam state
        sae(randn(16, 6, seed=10 + step), sparsity_coeff=0.5)[2]["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7]] = True
    inputs = randn(40, 6, seed=6) * 2
    # The trainer draws the inputs itself; replay its draw with the same generator.
    weights = per_input_loss(sae, inputs).double().pow(2)
    chosen = torch.multinomial(weights, 3, replacement=False, generator=torch.Generator().manual_seed(9))

    names = ("W_enc", "b_enc", "W_dec")
    params = {n: getattr(sae, n) for n in names}
    before = {n: p.detach().clone() for n, p in params.items()}
    m = {n: optimizer.state[p]["exp_avg"].clone() for n, p in params.items()}
    v = {n: optimizer.state[p]["exp_avg_sq"].clone() for n, p in params.items()}
    m_before = {n: t.clone() for n, t in m.items()}
    out = ref.resample_dead_features(*(before[n] for n in names), sae.b_dec.detach(), dead, inputs[chosen], m, v)
    assert all(torch.equal(m[n], m_before[n]) for n in names)  # the arguments are left alone

    n = resample_dead_features_(sae, dead, inputs, optimizer, generator=torch.Generator().manual_seed(9))
    assert n == 3
    for got, p in zip(out[:3], params.values()):
        assert torch.allclose(got, p.detach(), atol=1e-6)
    for k, p in params.items():
        assert torch.equal(out[3][k], optimizer.state[p]["exp_avg"])
        assert torch.equal(out[4][k], optimizer.state[p]["exp_avg_sq"])
    # Only the dead features' columns / entries / rows changed, and their moments are exactly zero.
    live = ~dead
    assert torch.equal(out[0][:, live], before["W_enc"][:, live]) and torch.equal(out[2][live], before["W_dec"][live])
    assert torch.equal(out[3]["W_enc"][:, live], m_before["W_enc"][:, live])
    assert (out[3]["W_enc"][:, dead] == 0).all() and (out[4]["W_dec"][dead] == 0).all()
    assert (out[3]["b_enc"][dead] == 0).all() and (out[1][dead] == 0).all()
    # Each new feature points at its input (minus b_dec) with the paper's encoder scale.
    for j, i in enumerate(dead.nonzero().flatten().tolist()):
        direction = inputs[chosen[j]] - sae.b_dec.detach()
        assert torch.allclose(out[2][i], direction / direction.norm(), atol=1e-6)
    live_norm = before["W_enc"][:, live].norm(dim=0).mean()
    assert torch.allclose(out[0][:, dead].norm(dim=0), torch.full((3,), 0.2 * live_norm.item()), atol=1e-6)


def test_feature_recovery_is_the_best_signed_cosine_per_true_feature():
    true = randn(5, 7, seed=11) * torch.linspace(0.5, 2.0, 7)
    W_dec = randn(12, 5, seed=12) * torch.linspace(0.3, 3.0, 12)[:, None]  # [d_sae, d_in]: rows are features
    W_dec[3] = -true[:, 0]  # pointing away: not a match
    best = ref.feature_recovery(true, randn(5, 12, seed=13), W_dec)
    for i in range(7):
        cosines = [float(true[:, i] @ W_dec[j] / (true[:, i].norm() * W_dec[j].norm())) for j in range(12)]
        assert best[i].item() == pytest.approx(max(cosines), abs=1e-6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))  # SAE features in any order, any length
    assert torch.allclose(ref.feature_recovery(true, None, 4 * W_dec[perm]), best, atol=1e-6)
    assert torch.allclose(ref.feature_recovery(true, None, true.T), torch.ones(7), atol=1e-6)


@pytest.mark.slow
def test_the_toy_sae_recovers_every_toy_feature():
    from utils.sae.toy import bridge_run

    run = bridge_run()
    for name in ("resampled", "plain"):
        best = ref.feature_recovery(run["true_directions"], run[name]["W_enc"], run[name]["W_dec"])
        assert (best > 0.9).all() and best.min() > 0.99, name


def test_resampling_probabilities_are_the_trainers_loss_squared():
    """The trainer's per_input_loss on the module, squared and normalised; uniform when all are 0."""
    sae = random_sae(seed=3)
    x = randn(12, 6, seed=4) * 2
    expected = per_input_loss(sae, x).pow(2)
    with torch.no_grad():
        p = ref.resampling_probabilities(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.l1_coeff)
    assert torch.allclose(p, expected / expected.sum(), atol=1e-7) and abs(p.sum().item() - 1) < 1e-6
    silent = ref.resampling_probabilities(sae.b_dec.detach().expand(5, 6), torch.zeros(6, 10), -torch.ones(10),
                                          sae.W_dec.detach(), sae.b_dec.detach(), 2.0)
    assert torch.equal(silent, torch.full((5,), 0.2))


def test_the_loops_starting_point_is_seeded_and_a_quarter_dead():
    """initial_parameters: unit decoder rows, the encoder their scaled transpose, leaves requiring
    gradients, DEAD_AT_START of the features unable to fire; the same seed gives the same draw."""
    from utils.sae.loop import DEAD_AT_START, DEAD_BIAS, ENCODER_INIT_NORM, initial_parameters

    p = initial_parameters(16, 40, seed=5)
    assert all(t.is_leaf and t.requires_grad for t in p.values())
    assert torch.allclose(p["W_dec"].norm(dim=1), torch.ones(40))
    assert torch.allclose(p["W_enc"], ENCODER_INIT_NORM * p["W_dec"].T)
    assert int((p["b_enc"] == DEAD_BIAS).sum()) == int(DEAD_AT_START * 40) and p["b_dec"].eq(0).all()
    again = initial_parameters(16, 40, seed=5)
    assert all(torch.equal(p[k], again[k]) for k in p)
    assert not torch.equal(p["W_dec"], initial_parameters(16, 40, seed=6)["W_dec"])
