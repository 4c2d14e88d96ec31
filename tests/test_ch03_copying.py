"""utils.induction (copying, ablation, composition and their experiments) against independent computations.

Oracles: dense n x n matrices and their torch.linalg.eigvals; closed forms (identity, minus the
identity, a rotation, positive semi-definite circuits); brute-force loops over tokens, heads and
head pairs; torch's own cross-entropy; TransformerLens's composition-score utility; and the hooked
transformer itself with weights edited instead of hooks (zero-ablating a head's z is zeroing its
W_O). The last section measures the bundled models.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from random_models import randomized
from transformer_lens import FactoredMatrix

from utils import circuits as C
from utils import induction as ind
from utils.induction import induction_report, repeated_random_tokens
from utils.models import ModelConfig
from utils.models.transformer import lm_cross_entropy

TWO = ModelConfig(n_layers=2, d_model=12, n_heads=3, d_head=4, d_vocab=29, n_ctx=21)


def assert_same_eigenvalues(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-6):
    """Equal as multisets: match each wanted value to a distinct nearest got value."""
    got, want = got.reshape(-1).tolist(), want.reshape(-1).tolist()
    assert len(got) == len(want)
    left = list(got)
    for w in want:
        i = min(range(len(left)), key=lambda j: abs(left[j] - w))
        assert abs(left[i] - w) <= tol * (1 + abs(w)), (w, left[i])
        left.pop(i)


# --------------------------------------------------------------------------- 1. eigenvalues and copying


@pytest.mark.parametrize("seed", range(4))
def test_small_product_eigenvalues_are_the_dense_products_nonzero_ones(seed):
    g = torch.Generator().manual_seed(seed)
    n, r = 9 + seed, 2 + seed % 3
    A = torch.randn(2, n, r, generator=g, dtype=torch.float64)
    B = torch.randn(2, r, n, generator=g, dtype=torch.float64)
    small = ind.eigenvalues_via_small_product(A, B)
    assert small.shape == (2, r) and small.dtype == torch.complex128
    for h in range(2):
        dense = torch.linalg.eigvals(A[h] @ B[h])  # n x n, rank r
        by_size = dense[dense.abs().argsort(descending=True)]
        assert_same_eigenvalues(small[h], by_size[:r], tol=1e-8)
        assert by_size[r:].abs().max() < 1e-9  # the other n - r are zero
    # float32 in, complex64 out (computed in float64 inside)
    assert ind.eigenvalues_via_small_product(A.float(), B.float()).dtype == torch.complex64
    with pytest.raises(ValueError, match="square"):
        ind.eigenvalues_via_small_product(A, B[..., :-1])


def test_full_ov_eigenvalues_equal_those_of_the_explicit_vocab_matrix():
    model = randomized(TWO)
    for layer in range(2):
        w = ind.ov_weights(model, layer)
        eig = ind.full_ov_circuit_eigenvalues(**w)
        assert eig.shape == (TWO.n_heads, TWO.d_head)
        for h in range(TWO.n_heads):
            dense = (w["W_E"] @ w["W_V"][h] @ w["W_O"][h] @ w["W_U"]).double()  # [29, 29]
            by_size = torch.linalg.eigvals(dense)
            by_size = by_size[by_size.abs().argsort(descending=True)]
            assert_same_eigenvalues(eig[h], by_size[:TWO.d_head], tol=1e-4)
            # TransformerLens's FactoredMatrix agrees (its eigenvalues come from BA too)
            fm = C.full_ov_circuit(w["W_E"], w["W_V"][h], w["W_O"][h], w["W_U"])
            assert_same_eigenvalues(eig[h], fm.eigenvalues, tol=1e-4)


def test_copying_score_closed_forms():
    eye = torch.eye(5)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # a 90 degree rotation: eigenvalues +-i
    eigs = torch.linalg.eigvals
    assert ind.copying_score(eigs(eye)).item() == pytest.approx(1.0)
    assert ind.copying_score(eigs(-eye)).item() == pytest.approx(-1.0)
    assert ind.copying_score(eigs(rotation)).item() == pytest.approx(0.0, abs=1e-7)
    assert ind.copying_score(eigs(3 * rotation + 4 * torch.eye(2))).item() == pytest.approx(4 / 5)  # 4 +- 3i
    assert ind.copying_score(torch.tensor([2.0, -1.0, 1.0])).item() == pytest.approx(0.5)  # real input
    batched = torch.stack([eigs(torch.diag(torch.tensor([1.0, 2.0]))), eigs(rotation)])
    assert ind.copying_score(batched).tolist() == pytest.approx([1.0, 0.0], abs=1e-7)


def test_copying_score_of_positive_and_negative_semidefinite_circuits():
    """W_O = +-W_V^T and W_U = W_E^T make the full circuit +-(W_E W_V)(W_E W_V)^T: eigenvalues
    real and of one sign, so the score is exactly +-1; the real part of their sum is the trace."""
    g = torch.Generator().manual_seed(3)
    W_E = torch.randn(20, 6, generator=g, dtype=torch.float64)
    W_V = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None, None]
    eig = ind.full_ov_circuit_eigenvalues(W_E, W_V, sign * W_V.transpose(-1, -2), W_E.T)
    assert ind.copying_score(eig).tolist() == pytest.approx([1.0, -1.0], abs=1e-9)
    W_O = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    W_U = torch.randn(6, 20, generator=g, dtype=torch.float64)
    eig = ind.full_ov_circuit_eigenvalues(W_E, W_V, W_O, W_U)
    for h in range(2):
        dense = W_E @ W_V[h] @ W_O[h] @ W_U
        trace_score = torch.trace(dense) / eig[h].abs().sum()
        assert ind.copying_score(eig[h]).item() == pytest.approx(trace_score.item(), abs=1e-9)


def brute_force_top_k(W_E, W_V, W_O, W_U, k):
    out = []
    for h in range(W_V.shape[0]):
        circuit = W_E @ W_V[h] @ W_O[h] @ W_U
        hits = sum(t in circuit[t].topk(k).indices.tolist() for t in range(circuit.shape[0]))
        out.append(hits / circuit.shape[0])
    return out


@pytest.mark.parametrize("k", [1, 3, 7])
def test_self_top_k_fraction_against_a_loop(k):
    model = randomized(TWO, seed=k)
    w = ind.ov_weights(model, 0)
    want = brute_force_top_k(**w, k=k)
    assert ind.self_top_k_fraction(**w, k=k).tolist() == pytest.approx(want)
    assert ind.self_top_k_fraction(**w, k=k, chunk=5).tolist() == pytest.approx(want)  # chunks of rows


def test_self_top_k_fraction_closed_forms():
    d = 6
    W_E, W_V, W_U = torch.eye(d), torch.eye(d)[None], torch.eye(d)
    assert ind.self_top_k_fraction(W_E, W_V, torch.eye(d)[None], W_U, k=1).tolist() == [1.0]  # identity circuit
    assert ind.self_top_k_fraction(W_E, W_V, -torch.eye(d)[None], W_U, k=d - 1).tolist() == [0.0]  # last of each row
    assert ind.self_top_k_fraction(W_E, W_V, -torch.eye(d)[None], W_U, k=d).tolist() == [1.0]  # k = vocab
    with pytest.raises(ValueError, match="k must"):
        ind.self_top_k_fraction(W_E, W_V, W_V, W_U, k=0)


def test_random_init_copy_same_shape_new_weights():
    model = randomized(TWO)
    fresh = ind.random_init_copy(model, seed=5)
    assert fresh.cfg == ModelConfig(**{**TWO.to_dict(), "seed": 5}) and not fresh.training
    assert all(a.shape == b.shape for a, b in zip(model.parameters(), fresh.parameters()))
    assert not torch.equal(model.W_E, fresh.W_E)
    assert torch.equal(fresh.W_E, ind.random_init_copy(model, seed=5).W_E)
    summary = ind.copying_summary(fresh, layer=1, k=3)
    assert len(summary["copying_score"]) == len(summary["self_top_3"]) == TWO.n_heads


# --------------------------------------------------------------------------- 2. induction


def test_per_token_loss_is_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(3, 7, 11, generator=g) * 3, torch.randint(0, 11, (3, 7), generator=g)
    loss = ind.per_token_loss(logits, tokens)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none").view(3, 6)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(loss, lm_cross_entropy(logits, tokens, per_token=True))
    for b in range(3):
        for i in range(6):
            p = logits[b, i].double().softmax(0)[tokens[b, i + 1]]
            assert loss[b, i].item() == pytest.approx(-math.log(p.item()), abs=1e-5)
    with pytest.raises(ValueError, match="agree"):
        ind.per_token_loss(logits, tokens[:, 1:])


def test_induction_loss_drop_by_hand():
    n = 4
    losses = torch.arange(16, dtype=torch.float32).view(2, 8)
    first = (losses[:, 1:4].sum() / 6).item()  # entries 1..n-1: r_2..r_n of the first copy
    second = (losses[:, 5:8].sum() / 6).item()  # entries n+1..2n-1: r_2..r_n of the repeat
    assert ind.induction_loss_drop(losses, n) == pytest.approx(first - second)
    with pytest.raises(ValueError, match="2 \\* seq_len"):
        ind.induction_loss_drop(losses, 5)


def test_ablate_heads_zero_and_mean():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 5, 4, 3, generator=g)
    before = z.clone()
    zeroed = ind.ablate_heads(z, [1, 3])
    assert torch.equal(z, before)  # the input is not modified
    assert (zeroed[:, :, [1, 3]] == 0).all() and torch.equal(zeroed[:, :, [0, 2]], z[:, :, [0, 2]])
    meaned = ind.ablate_heads(z, [2], mean=True)
    for b in range(2):
        for p in range(5):
            torch.testing.assert_close(meaned[b, p, 2], z[:, :, 2].reshape(-1, 3).mean(0))
    assert torch.equal(meaned[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])
    assert torch.equal(ind.ablate_heads(z, []), z)
    with pytest.raises(ValueError, match="heads"):
        ind.ablate_heads(z, [4])


@torch.no_grad()
def _drop_with_weights(model, seq_len, batch, seed):
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    return ind.induction_loss_drop(ind.per_token_loss(model(tokens), tokens), seq_len)


def test_ablation_with_no_heads_is_the_induction_report():
    model = randomized(TWO, seed=2)
    drop = ind.ablated_induction_loss_drop(model, [], seq_len=10, batch=8, seed=3)
    assert drop == pytest.approx(induction_report(model, seq_len=10, batch=8, seed=3)["loss_drop"], abs=1e-3)
    assert abs(drop) > 1e-3  # not trivially zero: the random model's halves differ


@pytest.mark.parametrize("mean", [False, True])
def test_ablating_every_head_makes_the_halves_equal(mean):
    """Without heads each prediction depends on the current token only, and both halves predict
    r_2..r_n from r_1..r_{n-1}: the two halves' losses are identical."""
    model = randomized(TWO, seed=4)
    every = [(l, h) for l in range(TWO.n_layers) for h in range(TWO.n_heads)]
    drop = ind.ablated_induction_loss_drop(model, every, seq_len=10, batch=8, seed=1, mean=mean)
    assert drop == pytest.approx(0, abs=1e-6)


@torch.no_grad()
def test_zero_ablation_equals_zeroing_w_o():
    model = randomized(TWO, seed=5)
    heads = [(0, 2), (1, 0)]
    edited = randomized(TWO, seed=5)
    for layer, head in heads:
        edited.blocks[layer].attn.W_O[head] = 0.0
    want = _drop_with_weights(edited, 10, 8, 7)
    assert ind.ablated_induction_loss_drop(model, heads, seq_len=10, batch=8, seed=7) == pytest.approx(want, abs=1e-5)


@torch.no_grad()
def test_mean_ablation_equals_moving_the_mean_output_into_the_bias():
    """Mean-ablating a layer-1 head (its z depends on nothing ablated) = zeroing its W_O and adding
    its mean output (mean z over batch and positions, times W_O) to b_O."""
    model = randomized(TWO, seed=6)
    seq_len, batch, seed, head = 10, 8, 2, 1
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    _, cache = model.run_with_cache(tokens)
    mean_z = cache["blocks.1.attn.hook_z"][:, :, head].reshape(-1, TWO.d_head).mean(0)
    edited = randomized(TWO, seed=6)
    edited.blocks[1].attn.b_O += mean_z @ edited.blocks[1].attn.W_O[head]
    edited.blocks[1].attn.W_O[head] = 0.0
    want = _drop_with_weights(edited, seq_len, batch, seed)
    got = ind.ablated_induction_loss_drop(model, [(1, head)], seq_len, batch, seed, mean=True)
    assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="no head"):
        ind.ablated_induction_loss_drop(model, [(2, 0)], seq_len, batch)


# --------------------------------------------------------------------------- 3. composition


def test_composition_score_against_dense_products_and_loops():
    g = torch.Generator().manual_seed(7)
    W_A, W_B = torch.randn(3, 1, 5, 6, generator=g), torch.randn(1, 4, 6, 7, generator=g)
    score = ind.composition_score(W_A, W_B)
    assert score.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            a, b = W_A[i, 0].double(), W_B[0, j].double()
            prod = torch.einsum("mn,np->mp", a, b)
            fro = lambda M: math.sqrt(sum(float(x) ** 2 for x in M.reshape(-1)))  # noqa: E731
            assert score[i, j].item() == pytest.approx(fro(prod) / (fro(a) * fro(b)), rel=1e-5)
    # factored inputs give the same numbers; the score is scale-free and lies in [0, 1]
    A1, A2 = torch.randn(3, 1, 5, 2, generator=g), torch.randn(3, 1, 2, 6, generator=g)
    B1, B2 = torch.randn(1, 4, 6, 3, generator=g), torch.randn(1, 4, 3, 7, generator=g)
    dense = ind.composition_score(A1 @ A2, B1 @ B2)
    torch.testing.assert_close(ind.composition_score(FactoredMatrix(A1, A2), FactoredMatrix(B1, B2)), dense)
    torch.testing.assert_close(ind.composition_score(FactoredMatrix(A1, A2), B1 @ B2), dense)
    torch.testing.assert_close(ind.composition_score(3 * (A1 @ A2), -0.5 * (B1 @ B2)), dense)
    assert ((dense >= 0) & (dense <= 1 + 1e-6)).all()
    assert ind.composition_score(torch.eye(4), torch.eye(4)).item() == pytest.approx(0.5)  # ||I|| / ||I||^2 = 1/2
    with pytest.raises(ValueError, match="columns"):
        ind.composition_score(W_A, W_A)


def _tl_composition_scores():
    try:  # transformer-lens 4.x
        from transformer_lens.utilities import composition_scores
    except ImportError:  # 3.x
        from transformer_lens.utils import composition_scores
    return composition_scores


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_loops_and_transformer_lens(kind):
    model = randomized(TWO, seed=8)
    w = ind.attn_weights(model)
    scores = ind.composition_scores(**w, kind=kind)
    assert scores.shape == (TWO.n_heads, TWO.n_heads)
    for i in range(TWO.n_heads):
        for j in range(TWO.n_heads):
            ov0 = w["W_V"][0, i] @ w["W_O"][0, i]
            qk1 = w["W_Q"][1, j] @ w["W_K"][1, j].T
            W_B = {"Q": qk1, "K": qk1.T, "V": w["W_V"][1, j] @ w["W_O"][1, j]}[kind]
            want = (ov0 @ W_B).norm() / (ov0.norm() * W_B.norm())
            assert scores[i, j].item() == pytest.approx(want.item(), rel=1e-4)
    # TransformerLens's all_composition_scores, rebuilt from its utility exactly as it does it
    left = FactoredMatrix(w["W_V"], w["W_O"])
    qk = FactoredMatrix(w["W_Q"], w["W_K"].transpose(-2, -1))
    right = {"Q": qk, "K": qk.T, "V": left}[kind]
    tl = _tl_composition_scores()(left, right, broadcast_dims=True)  # [layer, head, layer, head]
    torch.testing.assert_close(scores, tl[0, :, 1, :], rtol=1e-4, atol=1e-6)


def test_k_and_q_composition_read_different_sides():
    """The earlier head writes into dims 0-1. The later head's keys read dims 0-1 and its queries
    dims 4-5: K-composition is large and Q-composition exactly 0 (and the other way round when
    queries and keys swap)."""
    d, k = 6, 2
    e = torch.eye(d)
    W = {name: torch.zeros(2, 1, d, k) for name in ("W_Q", "W_K", "W_V")}
    W["W_O"] = torch.zeros(2, 1, k, d)
    W["W_V"][0, 0], W["W_O"][0, 0] = e[:, 2:4], e[0:2]  # reads dims 2-3, writes dims 0-1
    W["W_Q"][1, 0], W["W_K"][1, 0] = e[:, 4:6], e[:, 0:2]
    W["W_V"][1, 0], W["W_O"][1, 0] = e[:, 2:4], e[2:4]
    assert ind.composition_scores(**W, kind="K").item() > 0.4
    assert ind.composition_scores(**W, kind="Q").item() == 0.0
    W["W_Q"], W["W_K"] = W["W_K"], W["W_Q"]
    assert ind.composition_scores(**W, kind="Q").item() > 0.4
    assert ind.composition_scores(**W, kind="K").item() == 0.0
    with pytest.raises(ValueError, match="kind"):
        ind.composition_scores(**W, kind="k")


def test_random_composition_baseline_matches_the_rotation_argument():
    """E[score^2] = 1 / d_model exactly for rotation-invariant random W_A (see the docstring)."""
    for d_model, d_head in [(16, 4), (64, 8)]:
        scores = ind.random_composition_scores(d_model, d_head, n_samples=4000, seed=0)
        assert (scores ** 2).mean().item() == pytest.approx(1 / d_model, rel=0.05)
        assert ((scores > 0) & (scores < 1)).all()
    mean, std = ind.random_composition_baseline(128, 32, n_samples=500, seed=1)
    assert mean == pytest.approx(1 / math.sqrt(128), rel=0.05) and 0 < std < 0.02
    assert (mean, std) == ind.random_composition_baseline(128, 32, n_samples=500, seed=1)


# --------------------------------------------------------------------------- the bundled models, measured


@pytest.fixture(scope="module")
def bundled():
    from utils.models import load_model

    return load_model("attn-only-1l", device="cpu")


def test_trained_heads_copy_and_random_ones_do_not(bundled):
    """Measured: copying scores 0.65 0.86 0.86 0.58 (random init: -0.11 .. 0.04); self-top-5
    fractions 0.046 0.081 0.067 0.011 (random init about 0.001 = 5/4096, chance)."""
    trained = ind.copying_summary(bundled, k=5)
    fresh = ind.copying_summary(ind.random_init_copy(bundled, seed=0), k=5)
    assert min(trained["copying_score"]) > 0.5
    assert max(abs(s) for s in fresh["copying_score"]) < 0.3
    assert min(trained["self_top_5"]) > 4 * max(fresh["self_top_5"])
    assert max(fresh["self_top_5"]) < 0.005


def test_two_layer_induction_heads_k_compose_and_carry_the_loss_drop():
    from utils.induction import induction_report
    from utils.models import load_model

    model = load_model("attn-only-2l", device="cpu")
    report = induction_report(model, seq_len=50, batch=16)
    induction = torch.tensor(report["layers"][1]["induction_score"])
    previous = torch.tensor(report["layers"][0]["previous_token_score"])
    k_scores = ind.composition_scores(**ind.attn_weights(model), kind="K")
    mean, std = ind.random_composition_baseline(model.cfg.d_model, model.cfg.d_head, n_samples=300)
    assert k_scores[int(previous.argmax()), int(induction.argmax())] > mean + 3 * std
    heads = [(1, h) for h in range(model.cfg.n_heads) if induction[h] > 0.3]
    ablated = ind.ablated_induction_loss_drop(model, heads, seq_len=50, batch=16)
    assert ablated < 0.5 * report["loss_drop"]
