"""utils.features against independent computations.

Oracles: brute-force loops over (sequence, position), tokens and matrix entries; numpy's corrcoef;
hand-counted confusion tables; the SparseAutoencoder module itself (``encode``/``decode``) and the
hooked model run directly (``run_with_cache``, a hand-written hook). Model-level checks use the
bundled gelu-1l and its bundled L1 SAE on eight held-out rows.
"""
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from utils.data.dataset import analysis_tokens
from utils.features import (
    FeatureCorpus,
    ablation_effect,
    collect,
    cross_correlation,
    decoder_cosine,
    effect_html,
    examples_html,
    feature_acts,
    feature_figure,
    feature_logit_weights,
    hypothesis_scores,
    logit_effect,
    prompt_html,
    proxy_log_likelihood_ratio,
    quantile_examples,
    steered_generate,
    top_tokens,
)
from utils.features import exercises as ref
from utils.features.effects import ablation_hook, steering_hook
from utils.sae import SAEConfig, SparseAutoencoder, load_sae, preset

HOOK = "blocks.0.mlp.hook_post"
N_SEQS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from utils.models import load_model

    torch.set_num_threads(1)
    return load_model("gelu-1l", device="cpu")


@pytest.fixture(scope="module")
def sae():
    return load_sae("gelu-1l-mlp-l1")


@pytest.fixture(scope="module")
def corpus(model):
    torch.set_num_threads(1)
    return collect(model, n_seqs=N_SEQS)


@pytest.fixture(scope="module")
def f_all(sae, corpus):
    """Every feature's activation on the counted tokens, straight from the SAE module."""
    with torch.no_grad():
        return sae.encode(corpus.flat_mlp())


@pytest.fixture(scope="module")
def topk_sae():
    """A small random TopK SAE on the same 512-wide activations, with random encoder biases so
    the top-k gate, not the sign of one pre-activation, decides which features fire."""
    sae = SparseAutoencoder(preset("cpu-topk", k=4, d_sae=64), seed=1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(64, generator=torch.Generator().manual_seed(2)) * 0.3)
    return sae


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_l1_sae(seed=0, d_in=6, d_sae=10) -> SparseAutoencoder:
    """A float64 L1 SAE with every parameter random (biases included, so none hides behind a zero)."""
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=8, buffer_size=64, training_tokens=64, b_dec_init_samples=16,
                    resample_inputs=16, device="cpu")
    sae = SparseAutoencoder(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
        sae.normalize_decoder_()
    return sae


def weights(sae):
    return (sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach())


def live_feature(f_all, rank=0):
    """A feature that fires often on the corpus (the rank-th most often)."""
    return int((f_all > 0).sum(0).argsort(descending=True)[rank])


# --------------------------------------------------------------------------- exercises: pure functions


@pytest.mark.parametrize("k", [1, 9, 35])
def test_top_activating_matches_brute_force_sort_over_seq_and_pos(k):
    acts = randn(5, 7, seed=k)  # non-square: a row/column mix-up cannot pass
    seqs, pos, values = ref.top_activating(acts, k)
    brute = sorted(((acts[s, p].item(), s, p) for s in range(5) for p in range(7)), reverse=True)[:k]
    assert seqs.tolist() == [s for _, s, _ in brute]
    assert pos.tolist() == [p for _, _, p in brute]
    assert values.tolist() == [v for v, _, _ in brute]
    assert (values[:-1] >= values[1:]).all()
    assert (acts[seqs, pos] == values).all()


def test_logit_weights_match_a_triple_loop():
    W_dec, W_out, W_U = randn(9, 6, seed=1), randn(6, 4, seed=2), randn(4, 11, seed=3)  # W_dec [d_sae, d_mlp]
    dec, out, unembed = W_dec.tolist(), W_out.tolist(), W_U.tolist()
    for f in (0, 4, 8):
        loop = [sum(dec[f][m] * out[m][d] * unembed[d][v] for m in range(6) for d in range(4)) for v in range(11)]
        torch.testing.assert_close(ref.logit_weights(W_dec, W_out, W_U, f), torch.tensor(loop, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def test_pearson_matches_numpy_corrcoef_column_by_column():
    a, b = randn(50, 4, seed=4), randn(50, 3, seed=5)
    b[:, 1] += 0.8 * a[:, 2]  # one strongly correlated pair
    got = ref.pearson_correlation(a, b)
    want = torch.tensor([[np.corrcoef(a[:, i].numpy(), b[:, j].numpy())[0, 1] for j in range(3)] for i in range(4)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_pearson_constant_columns_give_zero_not_nan():
    a, b = randn(7, 4, seed=6), randn(7, 3, seed=7)
    a[:, 1] = 0.0  # a dead feature
    a[:, 3] = 0.1  # constant but not 0: centering leaves rounding noise, not zeros
    b[:, 2] = 0.3
    for dtype in (torch.float32, torch.float64):
        got = ref.pearson_correlation(a.to(dtype), b.to(dtype))
        assert not got.isnan().any()
        assert (got[[1, 3]] == 0).all() and (got[:, 2] == 0).all()
        assert (got[[0, 2]][:, :2] != 0).all()
    # A constant column against itself is still 0: no variance, no correlation.
    assert ref.pearson_correlation(a[:, 3:], a[:, 3:]).item() == 0


def test_pearson_is_invariant_to_positive_affine_maps_and_flips_sign_with_negative_scale():
    a, b = randn(40, 3, seed=8), randn(40, 2, seed=9)
    base = ref.pearson_correlation(a, b)
    shifted = a.clone()
    shifted[:, 0] = 3.5 * a[:, 0] + 7.0
    torch.testing.assert_close(ref.pearson_correlation(shifted, b), base, rtol=1e-10, atol=1e-12)
    flipped = a.clone()
    flipped[:, 1] = -2.0 * a[:, 1] + 1.0
    want = base.clone()
    want[1] = -want[1]
    torch.testing.assert_close(ref.pearson_correlation(flipped, b), want, rtol=1e-10, atol=1e-12)


def test_specificity_sensitivity_against_hand_counts():
    acts = torch.tensor([0.0, 0.5, 2.0, 0.0, 3.0, 0.1])
    hyp = torch.tensor([True, True, False, False, True, False])
    # fires (> 0): tokens 1, 2, 4, 5; of them the hypothesis covers 1 and 4; it covers 0, 1, 4.
    assert ref.specificity_sensitivity(acts, hyp) == pytest.approx((2 / 4, 2 / 3))
    # threshold 0.5 is strict: token 1 (exactly 0.5) no longer fires; tokens 2 and 4 do.
    assert ref.specificity_sensitivity(acts, hyp, threshold=0.5) == pytest.approx((1 / 2, 1 / 3))
    # never fires: specificity undefined; the hypothesis's tokens are all missed.
    spec, sens = ref.specificity_sensitivity(acts, hyp, threshold=3.0)
    assert math.isnan(spec) and sens == 0
    # empty hypothesis: sensitivity undefined; none of the firing tokens is covered.
    spec, sens = ref.specificity_sensitivity(acts, torch.zeros(6, dtype=torch.bool))
    assert spec == 0 and math.isnan(sens)


def test_feature_activation_is_a_column_of_sae_encode():
    sae = random_l1_sae()
    x = randn(9, 6, seed=10)
    with torch.no_grad():
        f = sae.encode(x)
    assert (f > 0).any() and (f == 0).any()  # both sides of the ReLU are exercised
    for i in range(sae.d_sae):
        torch.testing.assert_close(ref.feature_activation(x, sae.W_enc.detach(), sae.b_enc.detach(),
                                                         sae.b_dec.detach(), i), f[:, i], rtol=1e-12, atol=1e-12)


def test_ablate_feature_subtracts_its_term_row_by_row():
    sae = random_l1_sae(seed=1)
    W_enc, b_enc, W_dec, b_dec = weights(sae)
    x = randn(8, 6, seed=11)
    for i in range(sae.d_sae):
        want = torch.empty_like(x)
        for t in range(len(x)):
            z = sum((x[t, j] - b_dec[j]) * W_enc[j, i] for j in range(6)) + b_enc[i]
            want[t] = x[t] - max(z.item(), 0.0) * W_dec[i]
        torch.testing.assert_close(ref.ablate_feature(x, W_enc, b_enc, W_dec, b_dec, i), want,
                                   rtol=1e-12, atol=1e-12)


def test_steer_feature_identity_ablation_and_linearity():
    sae = random_l1_sae(seed=2)
    W_enc, b_enc, W_dec, b_dec = weights(sae)
    x = randn(6, 6, seed=12)
    with torch.no_grad():
        f = sae.encode(x)
    for i in range(sae.d_sae):
        args = (W_enc, b_enc, W_dec, b_dec, i)
        for t in range(len(x)):  # clamped to its own value, the feature changes nothing
            row = x[t:t + 1]
            own = ref.feature_activation(row, W_enc, b_enc, b_dec, i).item()
            assert torch.equal(ref.steer_feature(row, *args, value=own), row)
        assert torch.equal(ref.steer_feature(x, *args, value=0.0), ref.ablate_feature(x, *args))
        s0, s1, s2 = (ref.steer_feature(x, *args, value=v) for v in (0.0, 1.5, -4.0))
        torch.testing.assert_close(s1 - s0, (1.5 * W_dec[i]).expand_as(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s1 + s2 - s0, ref.steer_feature(x, *args, value=-2.5), rtol=1e-12, atol=1e-12)
        # The change is what the SAE's decoder says clamping f_i to 3 does to the reconstruction.
        g = f.clone()
        g[:, i] = 3.0
        with torch.no_grad():
            torch.testing.assert_close(ref.steer_feature(x, *args, value=3.0) - x, sae.decode(g) - sae.decode(f),
                                       rtol=1e-10, atol=1e-12)


def test_match_features_is_a_per_row_max_and_argmax():
    corr = randn(5, 7, seed=13)
    values, indices = ref.match_features(corr)
    for r in range(5):
        row = corr[r].tolist()
        best = max(range(7), key=lambda j: row[j])
        assert indices[r].item() == best and values[r].item() == row[best]


# --------------------------------------------------------------------------- corpus


def test_collect_stores_the_analysis_rows_and_their_hooked_activations(model, corpus):
    assert torch.equal(corpus.tokens, analysis_tokens(128, N_SEQS))
    assert corpus.mlp.shape == (N_SEQS, 128, model.cfg.d_mlp)
    for row in (0, N_SEQS - 1):
        _, cache = model.run_with_cache(corpus.tokens[row:row + 1])
        torch.testing.assert_close(corpus.mlp[row], cache[HOOK][0], rtol=1e-5, atol=1e-5)
    assert len(corpus.vocab) == model.cfg.d_vocab
    assert corpus.str_tokens(3)[1:] == model.to_str_tokens(corpus.tokens[3], prepend_bos=False)[1:]


def test_flat_views_drop_position_zero_in_seq_pos_order(corpus):
    flat, flat_tok = corpus.flat_mlp(), corpus.flat_tokens()
    assert corpus.n_tokens == N_SEQS * 127 == len(flat) == len(flat_tok)
    r = 0
    for s in range(N_SEQS):
        for p in range(1, 128):
            if p in (1, 64, 127):
                assert torch.equal(flat[r], corpus.mlp[s, p]) and flat_tok[r] == corpus.tokens[s, p]
            r += 1
    counts = corpus.unigram_counts
    for t in flat_tok[:5].tolist() + [0]:
        assert counts[t] == sum(1 for u in flat_tok.tolist() if u == t)
    assert counts[0] == (corpus.tokens[:, 1:] == 0).sum()


def test_token_mask_matches_a_loop_and_never_marks_bos(corpus):
    texts = [" the", ".", ",", "<|endoftext|>"]  # BOS's own text: position 0 must still be False
    mask = corpus.token_mask(texts)
    for s in range(N_SEQS):
        for p in range(128):
            assert mask[s, p].item() == (p > 0 and corpus.vocab[corpus.tokens[s, p]] in texts)
    assert not mask[:, 0].any() and mask.any()
    with pytest.raises(ValueError):
        corpus.token_mask(["no such token, surely"])


def test_feature_acts_is_the_sae_encoder_with_bos_zeroed(sae, corpus, f_all):
    with torch.no_grad():
        full = sae.encode(corpus.mlp)
    fires = (f_all > 0).sum(0)
    features = [live_feature(f_all), live_feature(f_all, 50), int(fires.argmin()), 7]
    for f in features:
        acts = feature_acts(sae, corpus, f)
        assert acts.shape == corpus.tokens.shape
        assert (acts[:, 0] == 0).all()
        torch.testing.assert_close(acts[:, 1:], full[:, 1:, f], rtol=1e-4, atol=1e-4)


def test_feature_acts_runs_the_full_encoder_for_topk(topk_sae, corpus):
    with torch.no_grad():
        full = topk_sae.encode(corpus.mlp)
    W_enc, b_enc, W_dec, b_dec = weights(topk_sae)
    gated_somewhere = False
    for f in range(0, 64, 9):
        acts = feature_acts(topk_sae, corpus, f)
        assert (acts[:, 0] == 0).all()
        torch.testing.assert_close(acts[:, 1:], full[:, 1:, f], rtol=1e-5, atol=1e-5)
        relu_only = ref.feature_activation(corpus.mlp[:, 1:].reshape(-1, 512), W_enc, b_enc, b_dec, f)
        gated_somewhere |= bool(((relu_only > 0) & (acts[:, 1:].reshape(-1) == 0)).any())
    assert gated_somewhere  # one encoder column alone would have been wrong


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_hypothesis_scores_match_specificity_sensitivity_per_feature(sae, corpus, f_all, threshold):
    mask = corpus.token_mask([" the", " a"])
    hyp = mask[:, 1:].reshape(-1)
    scores = hypothesis_scores(sae, corpus, mask, threshold=threshold)
    fires = (f_all > threshold).sum(0)
    dead = int(fires.argmin())
    assert fires[dead] == 0
    on_hyp = (f_all[hyp] > threshold).sum(0)
    for f in [live_feature(f_all), live_feature(f_all, 30), int(on_hyp.argmax()), dead]:
        spec, sens = ref.specificity_sensitivity(f_all[:, f], hyp, threshold)
        assert scores["fires"][f].item() == fires[f].item()
        if fires[f] == 0:  # documented convention: specificity 0, not NaN
            assert math.isnan(spec) and scores["specificity"][f].item() == 0
        else:
            assert scores["specificity"][f].item() == pytest.approx(spec, abs=1e-6)
        assert scores["sensitivity"][f].item() == pytest.approx(sens, abs=1e-6)
        p, r = scores["specificity"][f].item(), scores["sensitivity"][f].item()
        assert scores["f1"][f].item() == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-6)


def test_cross_correlation_equals_pearson_on_full_activation_matrices(sae, topk_sae, corpus, f_all):
    got = cross_correlation(sae, sae, corpus)
    want = ref.pearson_correlation(f_all[:, :64].double(), f_all[:, :64].double()).float()
    torch.testing.assert_close(got[:64, :64], want, rtol=0, atol=1e-4)
    with torch.no_grad():
        f_topk = topk_sae.encode(corpus.flat_mlp())
    want_ab = ref.pearson_correlation(f_all[:, :64].double(), f_topk.double()).float()
    torch.testing.assert_close(cross_correlation(sae, topk_sae, corpus)[:64], want_ab, rtol=0, atol=1e-4)
    # The diagonal: 1 for a feature that varies over the corpus, exactly 0 for one that never fires.
    diag, var = got.diagonal(), f_all.double().var(0)
    dead = ~(f_all > 0).any(0)
    assert dead.any() and (diag[dead] == 0).all()
    varies = var > 1e-6
    torch.testing.assert_close(diag[varies], torch.ones(int(varies.sum())), rtol=0, atol=1e-5)


def test_proxy_llr_matches_direct_computation(corpus):
    texts, eps = [" the", " a"], 0.01
    llr = proxy_log_likelihood_ratio(corpus, texts, epsilon=eps)
    ids = corpus.flat_tokens().tolist()
    counts = [ids.count(t) + 1 for t in range(len(corpus.vocab))]  # add-one unigram counts
    total = sum(counts)
    inside = [t for t, s in enumerate(corpus.vocab) if s in texts]
    in_set = sum(counts[t] for t in inside)
    never_seen = next(t for t in range(len(corpus.vocab)) if counts[t] == 1 and t not in inside)
    outside_seen = next(t for t in ids if t not in inside)
    for t in inside + [outside_seen, never_seen]:
        p = counts[t] / total
        p_given = (1 - eps) * (counts[t] / in_set if t in inside else 0.0) + eps * p
        assert llr[t].item() == pytest.approx(math.log(p_given / p), abs=1e-5)
    outside = torch.ones(len(corpus.vocab), dtype=torch.bool)
    outside[inside] = False
    torch.testing.assert_close(llr[outside], torch.full((int(outside.sum()),), math.log(eps)), rtol=0, atol=1e-5)
    assert (llr[inside] > 0).all()
    with pytest.raises(ValueError):
        proxy_log_likelihood_ratio(corpus, ["no such token, surely"])
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            proxy_log_likelihood_ratio(corpus, texts, epsilon=bad)


def test_decoder_cosine_diagonal_is_one_and_entries_are_cosines(sae, topk_sae):
    cos = decoder_cosine(sae, sae)
    torch.testing.assert_close(cos.diagonal(), torch.ones(sae.d_sae), rtol=0, atol=1e-5)
    cross = decoder_cosine(sae, topk_sae)
    assert cross.shape == (sae.d_sae, topk_sae.d_sae)
    for i, j in [(0, 0), (5, 63), (2047, 17)]:
        u, v = sae.W_dec[i].detach().double(), topk_sae.W_dec[j].detach().double()
        assert cross[i, j].item() == pytest.approx((u @ v / (u.norm() * v.norm())).item(), abs=1e-5)


# --------------------------------------------------------------------------- logit weights on the model


def test_logit_weights_on_the_model_are_the_direct_path(model, sae, corpus, f_all):
    feature = live_feature(f_all)
    W_dec, W_out, W_U = sae.W_dec.detach().double(), model.W_out[0].detach().double(), model.W_U.detach().double()
    want = torch.einsum("m,md,dv->v", W_dec[feature], W_out, W_U).float()
    got = ref.logit_weights(sae.W_dec.detach(), model.W_out[0].detach(), model.W_U.detach(), feature)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feature_logit_weights(sae, model, feature), got, rtol=0, atol=0)
    # Run the model with one unit of the feature added to the MLP's hidden layer: the MLP's output
    # moves by W_dec[f] @ W_out, which the unembedding turns into the logit weights.
    direction = sae.W_dec[feature].detach()
    tokens = corpus.tokens[:1, :16]
    _, clean = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    with model.hooks(fwd_hooks=[(HOOK, lambda act, hook: act + direction)]):
        _, pushed = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    delta = pushed["blocks.0.hook_mlp_out"] - clean["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(delta[0, 5].double() @ W_U, want.double(), rtol=1e-3, atol=1e-3)


def test_top_tokens_are_the_largest_and_smallest_weights(model, sae):
    w = feature_logit_weights(sae, model, 3)
    vocab = [f"t{i}" for i in range(len(w))]
    order = sorted(range(len(w)), key=lambda i: -w[i].item())
    assert [s for s, _ in top_tokens(w, vocab, n=5)] == [vocab[i] for i in order[:5]]
    assert [s for s, _ in top_tokens(w, vocab, n=5, largest=False)] == [vocab[i] for i in order[::-1][:5]]


# --------------------------------------------------------------------------- effects


def manual_ablation_hook(sae, feature):
    """Positions 1..: x - f_i(x) W_dec[i] via the exercise; BOS left alone."""
    W_enc, b_enc, W_dec, b_dec = weights(sae)

    def hook(act, hook):
        out = act.clone()
        x = act[:, 1:].reshape(-1, act.shape[-1])
        out[:, 1:] = ref.ablate_feature(x, W_enc, b_enc, W_dec, b_dec, feature).view(act[:, 1:].shape)
        return out
    return hook


def logprob_of_next(model, tokens, hooks=()):
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    lp = logits[:, :-1].log_softmax(-1)
    out = torch.empty(tokens.shape[0], tokens.shape[1] - 1)
    for b in range(tokens.shape[0]):
        for p in range(tokens.shape[1] - 1):
            out[b, p] = lp[b, p, tokens[b, p + 1]]
    return out


def test_ablation_effect_matches_a_hand_written_hook(model, sae, corpus, f_all):
    tokens = corpus.tokens[:2, :48]
    feature = live_feature(f_all)
    effect = ablation_effect(model, sae, tokens, feature)
    want = logprob_of_next(model, tokens, [(HOOK, manual_ablation_hook(sae, feature))]) - logprob_of_next(model, tokens)
    assert effect.shape == (2, 47)
    torch.testing.assert_close(effect, want, rtol=0, atol=1e-4)
    assert effect.abs().max() > 1e-3  # the feature does something here
    # Position 0 predicts from the BOS alone, whose activation is untouched (one-layer model).
    assert effect[:, 0].abs().max() <= 1e-6


def test_ablating_a_feature_that_never_fires_changes_nothing(model, sae, corpus):
    tokens = corpus.tokens[:2, :48]
    with torch.no_grad():
        f = sae.encode(corpus.mlp[:2, 1:48])
    silent = int(f.amax((0, 1)).argmin())
    assert (f[..., silent] == 0).all()
    assert ablation_effect(model, sae, tokens, silent).abs().max() <= 1e-6


@pytest.mark.parametrize("value", [0.0, 2.5, 20.0])
def test_steering_hook_replaces_the_feature_term_and_leaves_bos(sae, corpus, f_all, value):
    feature = live_feature(f_all)
    act = corpus.mlp[:2]
    with torch.no_grad():
        out = steering_hook(sae, feature, value)(act, None)
        f = sae.encode(act[:, 1:])[..., feature]
    assert torch.equal(out[:, 0], act[:, 0])
    W_enc, b_enc, W_dec, b_dec = weights(sae)
    want = ref.steer_feature(act[:, 1:].reshape(-1, 512), W_enc, b_enc, W_dec, b_dec, feature, value)
    torch.testing.assert_close(out[:, 1:], want.view(act[:, 1:].shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:] - act[:, 1:], (value - f)[..., None] * W_dec[feature],
                               rtol=1e-4, atol=1e-4)
    if value == 0.0:
        with torch.no_grad():
            assert torch.equal(ablation_hook(sae, feature)(act, None), out)


def test_logit_effect_of_a_large_clamp_follows_the_logit_weights(model, sae, corpus, f_all):
    feature = live_feature(f_all)
    tokens = corpus.tokens[:1, :24]
    effect = logit_effect(model, sae, tokens, feature, 20.0)
    assert effect.shape == (model.cfg.d_vocab,)
    # Clamping to a large value moves log-probs along the logit weights (through the final LayerNorm).
    w = feature_logit_weights(sae, model, feature)
    assert np.corrcoef(effect.numpy(), w.numpy())[0, 1] > 0.5


def test_steered_generation_is_seeded_and_steering_changes_it(model, sae, corpus, f_all):
    w = torch.stack([feature_logit_weights(sae, model, f) for f in range(sae.d_sae)])
    spread = (w.amax(1) - w.amin(1)).masked_fill(~(f_all > 0).any(0), -1.0)  # live features only
    feature = int(spread.argmax())
    prompt, kw = "The cat sat on the", dict(max_new_tokens=12, temperature=1.0, seed=3, stop_at_eos=False)
    first = steered_generate(model, sae, prompt, feature, 20.0, **kw)
    assert steered_generate(model, sae, prompt, feature, 20.0, **kw) == first
    assert model.generate(prompt, **kw) != first


# --------------------------------------------------------------------------- dashboard


def tiny_corpus():
    vocab = ["<|endoftext|>", "<b>", " a", "&", '"x"', "\n", "<script>"]
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1], [0, 2, 1, 1, 3, 6, 5, 4]])
    return FeatureCorpus(tokens=tokens, mlp=torch.zeros(2, 8, 4), vocab=vocab)


def assert_offline_and_escaped(page: str):
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert "<b>" not in page  # the token text "<b>" is escaped, never markup
    assert "&lt;b&gt;" in page


def test_examples_and_effect_html_escape_token_text_and_stay_offline():
    corpus = tiny_corpus()
    acts = torch.rand(2, 8, generator=torch.Generator().manual_seed(0))
    acts[:, 0] = 0
    page = examples_html(corpus, acts, [0, 1], [1, 3], title="<b> feature")
    assert_offline_and_escaped(page)
    assert page.count("<u>") == 2  # each example's own token is underlined
    page = effect_html(corpus.str_tokens(1), torch.linspace(-1, 1, 7), title="<b>")
    assert_offline_and_escaped(page)
    assert "rgba(220,40,40" in page and "rgba(40,90,220" in page  # decreases red, increases blue


def test_prompt_html_is_offline_and_escaped(model, sae):
    page = prompt_html(model, sae, "if a < b then <script>alert(1)</script> the end", n_features=2)
    assert "<script" not in page and "http" not in page
    assert "&lt;" in page
    assert page.count("<tr>") == len(model.to_str_tokens("if a < b then <script>alert(1)</script> the end")) - 1


def test_quantile_examples_fall_in_their_bins(sae, corpus, f_all):
    acts = feature_acts(sae, corpus, live_feature(f_all))
    bins = quantile_examples(acts, n_quantiles=4, per_quantile=3, seed=0)
    assert len(bins) == 4
    for lo, hi, seqs, positions in bins:
        for s, p in zip(seqs.tolist(), positions.tolist()):
            assert lo < acts[s, p].item() <= hi + 1e-6
    assert quantile_examples(torch.zeros(3, 5)) == []


def test_feature_figure_has_two_axes(model, sae, corpus, f_all):
    import matplotlib.pyplot as plt

    feature = live_feature(f_all)
    acts = feature_acts(sae, corpus, feature)
    w = feature_logit_weights(sae, model, feature)
    llr = proxy_log_likelihood_ratio(corpus, [" the"])
    for ratio in (llr, None):
        fig = feature_figure(acts, corpus.tokens, w, corpus.vocab, llr=ratio, title=f"#{feature}")
        try:
            assert isinstance(fig, Figure) and len(fig.axes) == 2
        finally:
            plt.close(fig)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("feature", [-1, 2048, 10_000])
def test_feature_out_of_range_raises(model, sae, corpus, feature):
    with pytest.raises(ValueError):
        ablation_hook(sae, feature)
    with pytest.raises(ValueError):
        steering_hook(sae, feature, 1.0)
    with pytest.raises(ValueError):
        ablation_effect(model, sae, corpus.tokens[:1, :8], feature)
    with pytest.raises(ValueError):
        steered_generate(model, sae, "Hello", feature, 5.0, max_new_tokens=2)


# --------------------------------------------------------------------------- human ratings, feature attribution


def test_rubric_agreement_against_scipy_and_a_hand_example():
    from scipy.stats import spearmanr

    ratings = torch.tensor([12.0, 8.0, 11.0, 11.0, 3.0])  # one exactly at the threshold, one tie
    rated = torch.tensor([7, 2, 9, 4, 5])
    auto_features = torch.tensor([4, 9, 7, 1, 2, 5])  # the table's own order, one feature unrated
    auto_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    fraction, rho = ref.rubric_agreement(ratings, rated, auto_features, auto_scores, threshold=8)
    assert fraction == pytest.approx(3 / 5)  # 8 is not above 8
    assert rho == pytest.approx(spearmanr(ratings.tolist(), [0.7, 0.5, 0.8, 0.9, 0.1])[0])
    # scores that follow the ratings' order exactly, on another scale: rho is 1
    other_scale = torch.tensor([0.3, 0.2, 0.4, 0.0, 0.0, 0.1])
    rho = ref.rubric_agreement(ratings[[0, 2, 4]], rated[[0, 2, 4]], auto_features, other_scale)[1]
    assert rho == pytest.approx(1.0)


def test_feature_logit_attribution_matches_a_loop_with_an_explicit_layernorm():
    g = torch.Generator().manual_seed(3)
    seq, d_sae, d_mlp, d_model, d_vocab = 5, 9, 6, 4, 11
    f = torch.relu(torch.randn(seq, d_sae, generator=g))
    W_dec, W_out = torch.randn(d_sae, d_mlp, generator=g), torch.randn(d_mlp, d_model, generator=g) + 1
    W_U, scale = torch.randn(d_model, d_vocab, generator=g), 1 + torch.rand(seq, generator=g)
    tokens, position = torch.randint(0, d_vocab, (seq,), generator=g), 2
    got = ref.feature_logit_attribution(f, W_dec, W_out, W_U, scale, tokens, position)
    target = int(tokens[position + 1])
    for i in range(d_sae):
        write = [sum(f[position, i] * W_dec[i, m] * W_out[m, d] for m in range(d_mlp)) for d in range(d_model)]
        mean = sum(write) / d_model
        want = sum((write[d] - mean) / scale[position] * W_U[d, target] for d in range(d_model))
        assert float(got[i]) == pytest.approx(float(want), abs=1e-5)
    assert (got[f[position] == 0] == 0).all()


def test_mlp_logit_attribution_parts_add_up_to_the_mlp_and_the_logit(model, sae, corpus):
    """Features + SAE error + biases = the direct contribution of hook_mlp_out; and every
    component's direct contribution, plus the final LayerNorm's bias and b_U, is the model's logit
    (so the LayerNorm is handled as the model applies it)."""
    from utils.features.attribution import mlp_logit_attribution
    from utils.induction import folded_unembed

    tokens = corpus.tokens[0, :40]
    names = ("hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out",
             "blocks.0.hook_resid_post")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
        W_U = folded_unembed(model).float()
        const = model.ln_final.b @ model.W_U + model.b_U
    for position in (3, 17, 38):
        r = mlp_logit_attribution(model, sae, tokens, position)
        assert r.target == int(tokens[position + 1])
        assert float(r.features.sum()) + r.error + r.bias == pytest.approx(r.total, abs=1e-3)
        resid = cache["blocks.0.hook_resid_post"][0, position]
        scale = ((resid - resid.mean()).pow(2).mean() + model.ln_final.eps).sqrt()
        parts = [cache[n][0, position] for n in names[:4]]
        assert torch.allclose(sum(parts), resid, atol=1e-4)
        direct = [float((p - p.mean()) / scale @ W_U[:, r.target]) for p in parts]
        assert direct[3] == pytest.approx(r.total, abs=1e-3)
        assert sum(direct) + float(const[r.target]) == pytest.approx(r.logit, abs=1e-3)
        assert r.logit == pytest.approx(float(logits[0, position, r.target]), abs=1e-4)
    with pytest.raises(ValueError, match="position"):
        mlp_logit_attribution(model, sae, tokens, 0)


def test_the_optional_saelens_cell_skips_at_once_offline(monkeypatch):
    import time

    from utils.features import saelens

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    sae, reason = saelens.public_sae()
    assert sae is None and reason == "HF_HUB_OFFLINE is set"
    assert time.perf_counter() - start < 0.5
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(__import__("sys").modules, "sae_lens", None)  # import fails: not installed
    assert "not installed" in saelens.why_not_online()
