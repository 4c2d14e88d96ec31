"""utils.attention against independent computations.

Oracles: explicit per-position loops written from the equations; torch.kron against einsum; the
hooked transformer's own hooks and logits (a randomised model whose biases are nonzero, and the
bundled attn-only-1l); TransformerLens 4.x's native bridge built from the same weights; and
TransformerLens's FactoredMatrix and composition_scores.
"""
import math

import matplotlib
import pytest
import torch
from random_models import randomized

from utils import attention as at
from utils.models import HookedTinyTransformer, ModelConfig

matplotlib.use("Agg")

SHORT = ModelConfig(n_layers=1, d_model=16, n_heads=3, d_head=4, d_vocab=23, n_ctx=9)
STANDARD = ModelConfig(n_layers=1, d_model=16, n_heads=3, d_head=4, d_vocab=23, n_ctx=9,
                       positional_embedding_type="standard")


def tokens_for(cfg, batch=2, seed=1):
    return torch.randint(0, cfg.d_vocab, (batch, cfg.n_ctx), generator=torch.Generator().manual_seed(seed))


def random_pattern(n, *lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*lead, n, n, generator=g)
    return scores.masked_fill(~at.causal_mask(n), float("-inf")).softmax(-1)


# --------------------------------------------------------------------------- loop oracles


def loop_pattern(x, W_Q, W_K, b_Q, b_K):
    """softmax_j<=i (q_i . k_j / sqrt(d_head)) with plain Python loops, one sequence."""
    n, d_head = x.shape[0], W_Q.shape[1]
    out = torch.zeros(n, n, dtype=torch.float64)
    x, W_Q, W_K, b_Q, b_K = (t.double() for t in (x, W_Q, W_K, b_Q, b_K))
    for i in range(n):
        q = x[i] @ W_Q + b_Q
        scores = [float(q @ (x[j] @ W_K + b_K)) / math.sqrt(d_head) for j in range(i + 1)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        for j, w in enumerate(weights):
            out[i, j] = w / sum(weights)
    return out


def loop_head(A, x, W_V, b_V, W_O):
    n = x.shape[0]
    z = torch.stack([sum(A[i, j] * (x[j] @ W_V + b_V) for j in range(n)) for i in range(n)])
    return z, torch.stack([z[i] @ W_O for i in range(n)])


# --------------------------------------------------------------------------- 1. one head


def test_causal_mask():
    mask = at.causal_mask(4)
    assert mask.dtype == torch.bool and mask[2, 2] and mask[3, 0] and not mask[0, 1]
    assert int(mask.sum()) == 10
    with pytest.raises(ValueError, match="at least one"):
        at.causal_mask(0)


def test_pattern_and_head_output_match_loops():
    g = torch.Generator().manual_seed(3)
    b, n, d, k = 2, 6, 7, 3
    x = torch.randn(b, n, d, generator=g)
    W_Q, W_K, W_V = (torch.randn(d, k, generator=g) for _ in range(3))
    b_Q, b_K, b_V = (torch.randn(k, generator=g) for _ in range(3))
    W_O = torch.randn(k, d, generator=g)
    pattern = at.attention_pattern(x, W_Q, W_K, b_Q, b_K)
    z, result = at.head_output(pattern, x, W_V, b_V, W_O)
    for i in range(b):
        expected = loop_pattern(x[i], W_Q, W_K, b_Q, b_K)
        torch.testing.assert_close(pattern[i].double(), expected, rtol=1e-5, atol=1e-6)
        z_loop, r_loop = loop_head(pattern[i], x[i], W_V, b_V, W_O)
        torch.testing.assert_close(z[i], z_loop, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result[i], r_loop, rtol=1e-5, atol=1e-5)
    assert (pattern.triu(1) == 0).all()
    torch.testing.assert_close(pattern.sum(-1), torch.ones(b, n))


@pytest.mark.parametrize("cfg", [SHORT, STANDARD], ids=["shortformer", "standard"])
def test_one_head_equals_the_models_hooks(cfg):
    model = randomized(cfg)
    tokens = tokens_for(cfg)
    for head in range(cfg.n_heads):
        data = at.head_inputs(model, tokens, head)
        pattern = at.attention_pattern(data["qk_input"], data["W_Q"], data["W_K"], data["b_Q"], data["b_K"])
        z, result = at.head_output(pattern, data["v_input"], data["W_V"], data["b_V"], data["W_O"])
        torch.testing.assert_close(pattern, data["pattern"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z, data["z"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result, data["result"], rtol=1e-5, atol=1e-5)
    assert model.blocks[0].attn.use_attn_result is False, "head_inputs must restore the model's setting"


def test_one_head_equals_the_bundled_models_hooks():
    from utils.data import analysis_tokens
    from utils.models import load_model

    model = load_model("attn-only-1l", device="cpu")
    tokens = analysis_tokens(seq_len=32, n_seqs=2)
    for head in range(model.cfg.n_heads):
        data = at.head_inputs(model, tokens, head)
        pattern = at.attention_pattern(data["qk_input"], data["W_Q"], data["W_K"], data["b_Q"], data["b_K"])
        z, result = at.head_output(data["pattern"], data["v_input"], data["W_V"], data["b_V"], data["W_O"])
        torch.testing.assert_close(pattern, data["pattern"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z, data["z"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result, data["result"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tl_bridge():
    """STANDARD's weights inside TransformerLens 4.x's native bridge (it rejects shortformer)."""
    try:
        bridge_mod = pytest.importorskip("transformer_lens.model_bridge.sources.native")
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError as exc:
        pytest.skip(f"TransformerLens native bridge unavailable: {exc}")
    model = randomized(STANDARD, seed=4)
    with torch.no_grad():  # no positions: then the standard model's residual is W_E[t] alone
        model.pos_embed.W_pos.zero_()
    cfg = model.cfg
    try:
        tl_cfg = TransformerBridgeConfig(
            d_model=cfg.d_model, n_layers=1, d_mlp=4 * cfg.d_model, d_head=cfg.d_head, n_heads=cfg.n_heads,
            n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, act_fn="gelu", attn_only=True, normalization_type=None,
            positional_embedding_type="standard", architecture="TransformerLensNative")
        bridge = bridge_mod.boot(tl_cfg, tokenizer=None, device="cpu", dtype=torch.float32, model_name="oracle")
        result = bridge.load_state_dict(convert_tl_checkpoint(dict(model.state_dict()), tl_cfg), strict=True)
    except (TypeError, AttributeError, ValueError) as exc:  # the bridge API moves between TL releases
        pytest.skip(f"TransformerLens native bridge unavailable: {exc}")
    assert not result.missing_keys and not result.unexpected_keys
    tokens = tokens_for(cfg, seed=5)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    return model, tokens, logits, cache


def test_against_transformer_lens(tl_bridge):
    model, tokens, tl_logits, tl_cache = tl_bridge
    x0 = model.W_E[tokens].detach()
    A = torch.stack([at.attention_pattern(x0, model.W_Q[0, h], model.W_K[0, h], model.b_Q[0, h], model.b_K[0, h])
                     for h in range(model.cfg.n_heads)], dim=1).detach()
    torch.testing.assert_close(A, tl_cache["blocks.0.attn.hook_pattern"], rtol=1e-4, atol=1e-5)
    for h in range(model.cfg.n_heads):
        z, _ = at.head_output(A[:, h], x0, model.W_V[0, h], model.b_V[0, h], model.W_O[0, h])
        torch.testing.assert_close(z, tl_cache["blocks.0.attn.hook_z"][:, :, h], rtol=1e-4, atol=1e-5)
    weights = dict(W_V=model.W_V[0].detach(), W_O=model.W_O[0].detach(), b_V=model.b_V[0].detach())
    x1 = at.multihead_residual(x0, A, b_O=model.b_O[0].detach(), **weights)
    torch.testing.assert_close(x1, tl_cache["blocks.0.hook_resid_post"], rtol=1e-4, atol=1e-4)
    paths = at.path_logits(tokens, A, model.W_E.detach(), W_U=model.W_U.detach(), b_O=model.b_O[0].detach(),
                           b_U=model.b_U.detach(), **weights)
    torch.testing.assert_close(paths.sum(1), tl_logits, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- 2. tensor products


def tiny_head(seed=0, n=4, d=5, k=2):
    g = torch.Generator().manual_seed(seed)
    return (random_pattern(n, seed=seed), torch.randn(d, k, generator=g), torch.randn(k, d, generator=g),
            torch.randn(n, d, generator=g))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tensor_forms_agree_with_a_loop(seed):
    A, W_V, W_O, x = tiny_head(seed)
    loop = torch.stack([sum(A[i, j] * (x[j] @ W_V @ W_O) for j in range(len(x))) for i in range(len(x))])
    for fn in (at.tensor_head_einsum, at.tensor_head_kron):
        torch.testing.assert_close(fn(A, W_V, W_O, x), loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(at.tensor_head(A, at.ov_matrix(W_V, W_O), x), loop, rtol=1e-5, atol=1e-5)
    big = at.kron_head_matrix(A, at.ov_matrix(W_V, W_O))
    torch.testing.assert_close((big @ at.vec(x)).view_as(x), loop, rtol=1e-5, atol=1e-5)


def test_kron_entries_and_mixed_product_property():
    A, W_V, W_O, _ = tiny_head(3, n=3, d=4, k=2)
    read, mix, write = at.kron_head_factors(A, W_V, W_O)
    assert read.shape == (3 * 2, 3 * 4) and mix.shape == (6, 6) and write.shape == (12, 6)
    W_OV = W_V @ W_O
    big = at.kron_head_matrix(A, W_OV)
    # (Id ⊗ W_O)(A ⊗ Id)(Id ⊗ W_V) = A ⊗ W_O W_V, and each entry is A[i, j] * W_OV[b, a].
    torch.testing.assert_close(write @ mix @ read, big, rtol=1e-5, atol=1e-6)
    d = 4
    for i, j, a, b in [(0, 0, 1, 2), (2, 1, 3, 0), (1, 2, 0, 0)]:
        assert torch.isclose(big[i * d + a, j * d + b], A[i, j] * W_OV[b, a])
    # Block (i, j) vanishes above the diagonal: the causal mask survives the tensor product.
    assert (big[:d, d:] == 0).all()


def test_kron_helper_accepts_transposed_views():
    a, w = torch.randn(3, 3), torch.randn(4, 2)
    torch.testing.assert_close(at.kron(a.T, w.T), torch.kron(a.T.contiguous(), w.T.contiguous()))


def test_kron_refuses_real_sizes():
    with pytest.raises(ValueError, match="einsum"):
        at.tensor_head_kron(random_pattern(64), torch.randn(128, 32), torch.randn(32, 128), torch.randn(64, 128))
    with pytest.raises(ValueError, match="too big"):
        at.kron_head_matrix(random_pattern(64), torch.randn(128, 128))


# --------------------------------------------------------------------------- 3. the layer


@pytest.mark.parametrize("cfg", [SHORT, STANDARD], ids=["shortformer", "standard"])
def test_multihead_residual_equals_resid_post(cfg):
    model = randomized(cfg)
    tokens = tokens_for(cfg)
    _, cache = model.run_with_cache(tokens)
    x1 = at.multihead_residual(cache["blocks.0.hook_resid_pre"], cache["blocks.0.attn.hook_pattern"],
                               model.W_V[0].detach(), model.W_O[0].detach(),
                               model.b_V[0].detach(), model.b_O[0].detach())
    torch.testing.assert_close(x1, cache["blocks.0.hook_resid_post"], rtol=1e-5, atol=1e-5)


def test_multihead_residual_is_x0_plus_the_heads_tensor_products():
    g = torch.Generator().manual_seed(0)
    b, h, n, d, k = 2, 3, 5, 6, 2
    x0, A = torch.randn(b, n, d, generator=g), random_pattern(n, b, h)
    W_V, W_O = torch.randn(h, d, k, generator=g), torch.randn(h, k, d, generator=g)
    b_V, b_O = torch.randn(h, k, generator=g), torch.randn(d, generator=g)
    expected = x0.clone() + b_O
    for bi in range(b):
        for hi in range(h):
            expected[bi] += at.tensor_head_kron(A[bi, hi], W_V[hi], W_O[hi], x0[bi]) + b_V[hi] @ W_O[hi]
    torch.testing.assert_close(at.multihead_residual(x0, A, W_V, W_O, b_V, b_O), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- 4. the path expansion


def test_path_expansion_equals_the_models_logits_in_float64():
    model = randomized(SHORT, dtype=torch.float64)
    tokens = tokens_for(SHORT)
    paths = at.path_logits(**at.path_inputs(model, tokens))
    assert paths.shape == (2, SHORT.n_heads + 2, SHORT.n_ctx, SHORT.d_vocab)
    torch.testing.assert_close(paths.sum(1), model(tokens), rtol=1e-10, atol=1e-10)
    # The bias path is the same at every position and token.
    assert torch.allclose(paths[:, -1], paths[:1, -1, :1].expand_as(paths[:, -1]))


def test_path_expansion_matches_explicit_vocab_kron():
    """Each head path literally as (A^h ⊗ W_U W_OV^h W_E) applied to the one-hot tokens."""
    model = randomized(SHORT, dtype=torch.float64)
    tokens = tokens_for(SHORT, batch=1)
    data = at.path_inputs(model, tokens)
    paths = at.path_logits(**data)
    onehot = torch.nn.functional.one_hot(tokens[0], SHORT.d_vocab).double()  # [pos, vocab]
    direct_matrix = (data["W_E"] @ data["W_U"]).T  # the paper's W_U W_E [vocab_out, vocab_in]
    torch.testing.assert_close(at.vec(paths[0, 0]),
                               at.kron(torch.eye(SHORT.n_ctx, dtype=torch.float64), direct_matrix) @ at.vec(onehot))
    for h in range(SHORT.n_heads):
        circuit = (data["W_E"] @ data["W_V"][h] @ data["W_O"][h] @ data["W_U"]).T  # W_U W_OV^h W_E
        expected = at.kron(data["A"][0, h], circuit) @ at.vec(onehot)
        torch.testing.assert_close(at.vec(paths[0, 1 + h]), expected, rtol=1e-10, atol=1e-10)


def test_path_expansion_on_the_bundled_model_is_exact_in_fp32():
    from utils.data import analysis_tokens
    from utils.models import load_model

    model = load_model("attn-only-1l", device="cpu")
    tokens = analysis_tokens(seq_len=64, n_seqs=4)
    paths = at.path_logits(**at.path_inputs(model, tokens))
    error = (paths.sum(1) - model(tokens)).abs().max().item()
    assert error < 1e-3, error
    assert at.path_names(model.cfg.n_heads) == ["direct", "head 0", "head 1", "head 2", "head 3", "biases"]


def test_path_inputs_refuses_models_it_cannot_expand():
    for cfg in (STANDARD, ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=11, n_ctx=5),
                ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=11, n_ctx=5, normalization_type="LN"),
                ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=11, n_ctx=5, d_mlp=16)):
        with pytest.raises(ValueError):
            at.path_inputs(HookedTinyTransformer(cfg), torch.zeros(1, 3, dtype=torch.long))


def test_bad_inputs_raise_clear_errors():
    A = random_pattern(4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        at.attention_pattern(A.numpy(), torch.eye(4), torch.eye(4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="dimensions"):
        at.attention_pattern(torch.randn(4, 4), torch.eye(4), torch.eye(4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="d_model"):
        at.attention_pattern(torch.randn(1, 4, 5), torch.eye(4), torch.eye(4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="positions"):
        at.head_output(random_pattern(3, 1), torch.randn(1, 4, 4), torch.eye(4), torch.zeros(4), torch.eye(4))
    with pytest.raises(TypeError, match="integer"):
        at.path_logits(torch.zeros(1, 4), random_pattern(4, 1, 2), torch.randn(5, 3), torch.randn(2, 3, 2),
                       torch.randn(2, 2, 3), torch.randn(3, 5), torch.zeros(2, 2), torch.zeros(3), torch.zeros(5))
    with pytest.raises(ValueError, match="head"):
        at.head_inputs(randomized(SHORT), tokens_for(SHORT), head=SHORT.n_heads)


# --------------------------------------------------------------------------- 5. subspaces


def test_the_16_dim_read_write_example():
    W_V, W_O = at.read_write_weights(16, range(0, 4), range(8, 12))
    assert W_V.shape == (16, 4) and W_O.shape == (4, 16)
    W_OV = W_V @ W_O
    for i in range(16):  # e_i @ W_OV: dims 0-3 land on 8-11, everything else vanishes
        expected = torch.zeros(16)
        if i < 4:
            expected[8 + i] = 1
        torch.testing.assert_close(torch.eye(16)[i] @ W_OV, expected)
    # Same matrices from the identity's rows and columns, an independent construction.
    torch.testing.assert_close(W_V, torch.eye(16)[:, 0:4])
    torch.testing.assert_close(W_O, torch.eye(16)[8:12, :])


def test_virtual_weights_and_composition_scores_match_transformer_lens():
    from transformer_lens import FactoredMatrix

    from utils.induction import composition_score  # the score of a virtual weight: chapter 03's one function

    W_V1, W_O1 = at.read_write_weights(16, range(0, 4), range(8, 12))
    reads_it, _ = at.read_write_weights(16, range(8, 12), range(12, 16))
    ignores_it, _ = at.read_write_weights(16, range(4, 8), range(12, 16))
    torch.testing.assert_close(at.virtual_weight(W_O1, reads_it), torch.eye(4))
    torch.testing.assert_close(at.virtual_weight(W_O1, ignores_it), torch.zeros(4, 4))
    assert float(composition_score(W_O1, ignores_it)) == 0.0
    g = torch.Generator().manual_seed(0)
    W_V2, W_O2 = torch.randn(16, 4, generator=g), torch.randn(4, 16, generator=g)
    ov1, ov2 = FactoredMatrix(W_V1, W_O1), FactoredMatrix(W_V2, W_O2)
    # The composed OV circuit factors through the virtual weight: W_V1 (W_O1 W_V2) W_O2.
    torch.testing.assert_close((ov1 @ ov2).AB, W_V1 @ at.virtual_weight(W_O1, W_V2) @ W_O2)
    try:
        from transformer_lens.utilities.matrix import composition_scores
    except ImportError:
        pytest.skip("this TransformerLens has no utilities.matrix.composition_scores")
    # TL scores any two factored matrices; wrap W_O1 and W_V2 (times identities) as such.
    for W_V_next in (W_V2, reads_it, ignores_it):
        left = FactoredMatrix(W_O1, torch.eye(16))
        right = FactoredMatrix(W_V_next, torch.eye(W_V_next.shape[1]))
        assert math.isclose(float(composition_score(W_O1, W_V_next)), float(composition_scores(left, right)),
                            rel_tol=1e-5, abs_tol=1e-7)


def test_composition_score_range_and_errors():
    from utils.induction import composition_score

    g = torch.Generator().manual_seed(1)
    W_O1, W_V2 = torch.randn(3, 10, generator=g), torch.randn(10, 5, generator=g)
    score = float(composition_score(W_O1, W_V2))
    assert 0 < score <= 1
    assert math.isclose(score, at.virtual_weight(W_O1, W_V2).norm().item() / (W_O1.norm() * W_V2.norm()).item(),
                        rel_tol=1e-6)
    assert math.isclose(float(composition_score(W_O1, W_O1.T)),
                        (W_O1 @ W_O1.T).norm().item() / W_O1.norm().item() ** 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="as many"):
        at.read_write_weights(16, [0, 1], [8])
    with pytest.raises(ValueError, match="distinct"):
        at.read_write_weights(16, [0, 0], [8, 9])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        at.read_write_weights(16, [0, 16], [8, 9])
    with pytest.raises(ValueError, match="d_model"):
        at.virtual_weight(torch.randn(3, 10), torch.randn(9, 2))


# --------------------------------------------------------------------------- 6. composition


@pytest.mark.parametrize("seed", [0, 1])
def test_composition_equals_applying_the_heads_in_turn(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 4, 3
    A1, A2 = random_pattern(n, seed=seed), random_pattern(n, seed=seed + 10)
    W1, W2 = torch.randn(d, d, generator=g), torch.randn(d, d, generator=g)
    x = torch.randn(n, d, generator=g)
    A, W = at.compose_heads(A2, W2, A1, W1)
    torch.testing.assert_close(at.tensor_head(A, W, x), at.tensor_head(A2, W2, at.tensor_head(A1, W1, x)))
    # The Kronecker identity itself, with explicit matrices.
    lhs = at.kron_head_matrix(A2, W2) @ at.kron_head_matrix(A1, W1)
    torch.testing.assert_close(lhs, at.kron_head_matrix(A, W), rtol=1e-5, atol=1e-6)
    # A product of causal, row-stochastic patterns is again one.
    torch.testing.assert_close(A.sum(-1), torch.ones(n))
    assert (A.triu(1) == 0).all()


def test_composition_batches_over_patterns():
    A1, A2 = random_pattern(5, 2, seed=0), random_pattern(5, 2, seed=1)
    W = torch.eye(3)
    A, _ = at.compose_heads(A2, W, A1, W)
    for b in range(2):
        torch.testing.assert_close(A[b], A2[b] @ A1[b])


# --------------------------------------------------------------------------- plots


def test_plot_helpers_return_figures():
    import matplotlib.pyplot as plt

    A, W_V, W_O, _ = tiny_head(0, n=3, d=4)
    figs = [at.plot_kron_blocks(at.kron_head_matrix(A, W_V @ W_O), block=4, title="t"),
            at.plot_matrices([W_V, W_O, W_V @ W_O], ["W_V", "W_O", "W_OV"], suptitle="s"),
            at.plot_path_contributions(torch.tensor([1.0, -0.5, 0.2, 0.1]), ["direct", "head 0", "head 1", "biases"],
                                       total=0.8, title="p")]
    assert all(isinstance(f, plt.Figure) for f in figs)
    with pytest.raises(ValueError, match="names"):
        at.plot_path_contributions(torch.zeros(3), ["a"])
    plt.close("all")


# --------------------------------------------------------------------------- the package's layout


def test_the_shared_helpers_are_utils_tensors_and_the_checks_grade_against_exercises():
    from utils import tensors
    from utils.attention import exercises
    from utils.checks import ch01
    from utils.checks.core import Exercise

    assert at.causal_mask is tensors.causal_mask and at.kron is tensors.kron and at.MASKED is tensors.MASKED
    graded = [name for name in ch01.EXERCISES if not name.endswith("_question")]
    for name in graded:
        (check,) = [v for v in vars(ch01).values() if isinstance(v, Exercise) and v.name == name]
        assert check.reference is getattr(exercises, name), f"check {name} does not grade against exercises.{name}"
