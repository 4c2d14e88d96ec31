"""utils.circuits against independent computations.

Oracles: dense vocab x vocab products and plain Python loops written from the definitions; the
hooked transformer itself (its attention scores and patterns with some inputs switched off, and
its logits with an attention pattern pinned by a hook); TransformerLens's FactoredMatrix algebra;
and, for the rank correlation, a pure-Python Spearman (ties averaged by hand). The last section
measures the bundled model: skip-trigram confirmation, the direct path against bigram counts.
"""
import math
from collections import Counter

import matplotlib
import pytest
import random_models
import torch

from utils import circuits as C
from utils.models import HookedTinyTransformer, ModelConfig

matplotlib.use("Agg")

SHORT = ModelConfig(n_layers=1, d_model=12, n_heads=3, d_head=4, d_vocab=29, n_ctx=10)


def randomized(cfg: ModelConfig = SHORT, seed: int = 0) -> HookedTinyTransformer:
    return random_models.randomized(cfg, seed)


@pytest.fixture(scope="module")
def bundled():
    from utils.models import load_model

    return load_model("attn-only-1l", device="cpu")


@pytest.fixture(scope="module")
def frequent(bundled):
    from utils.data import load_corpus_tokens

    counts = torch.bincount(load_corpus_tokens()["train"], minlength=bundled.cfg.d_vocab)
    allowed = counts >= 200
    allowed[0] = False
    return allowed


def weights(model, layer=0):
    return {n: getattr(model, n).detach()[layer] for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K")}


# --------------------------------------------------------------------------- 1. the full circuits


def test_full_circuits_equal_dense_products_and_loops():
    model = randomized()
    W_E, W_U, w = model.W_E.detach(), model.W_U.detach(), weights(model)
    ov = C.full_ov_circuit(W_E, w["W_V"], w["W_O"], W_U)
    qk = C.full_qk_circuit(W_E, w["W_Q"], w["W_K"])
    assert ov.shape == qk.shape == (3, 29, 29)
    assert ov.A.shape[-1] == qk.A.shape[-1] == SHORT.d_head  # factored through d_head
    for h in range(3):
        dense_ov = W_E @ w["W_V"][h] @ w["W_O"][h] @ W_U
        torch.testing.assert_close(ov.AB[h], dense_ov, rtol=1e-5, atol=1e-5)
        for s, c in [(0, 0), (3, 17), (28, 5)]:
            value = sum(float(W_E[s] @ w["W_V"][h][:, k]) * float(w["W_O"][h][k] @ W_U[:, c]) for k in range(4))
            assert abs(float(ov.AB[h, s, c]) - value) < 1e-4
        for d, s in [(0, 0), (4, 21), (27, 2)]:
            q, k = W_E[d] @ w["W_Q"][h], W_E[s] @ w["W_K"][h]
            assert abs(float(qk.AB[h, d, s]) - sum(float(q[i] * k[i]) for i in range(4))) < 1e-4


def test_full_circuits_agree_with_transformer_lens_algebra():
    model = randomized(seed=1)
    W_E, W_U, w = model.W_E.detach(), model.W_U.detach(), weights(model)
    torch.testing.assert_close(C.full_qk_circuit(W_E, w["W_Q"], w["W_K"]).AB, (W_E @ model.QK[0] @ W_E.T).AB,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(C.full_ov_circuit(W_E, w["W_V"], w["W_O"], W_U).AB, (W_E @ model.OV[0] @ W_U).AB,
                               rtol=1e-5, atol=1e-5)


def test_qk_circuit_is_the_models_attention_score_without_positions_and_biases():
    model = randomized(seed=2)
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
        model.blocks[0].attn.b_Q.zero_()
        model.blocks[0].attn.b_K.zero_()
    tokens = torch.tensor([[3, 7, 7, 0, 28, 11, 5]])
    _, cache = model.run_with_cache(tokens)
    scores = cache["blocks.0.attn.hook_attn_scores"][0] * math.sqrt(SHORT.d_head)  # [head, q, k]
    qk = C.full_qk_circuit(model.W_E.detach(), model.W_Q[0].detach(), model.W_K[0].detach())
    expected = C.circuit_slice(qk, tokens[0], tokens[0])
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(scores[:, mask], expected[:, mask], rtol=1e-4, atol=1e-4)


def test_ov_circuit_is_what_the_model_does_when_attention_is_pinned():
    """Running the model (biases, all heads, direct path) with one head's attention pinned to two
    different keys: the logit difference is exactly the difference of two OV rows."""
    model = randomized(seed=3)
    tokens = torch.tensor([4, 9, 22, 1, 17, 6])
    ov = C.full_ov_circuit(model.W_E.detach(), model.W_V[0].detach(), model.W_O[0].detach(), model.W_U.detach())
    for head, src, ref in [(0, 1, 4), (2, 0, 3), (1, 5, 2)]:
        diff = C.forced_attention_logit_difference(model, tokens, head, src, ref)
        expected = (ov.A[head, tokens[src]] - ov.A[head, tokens[ref]]) @ ov.B[head]
        torch.testing.assert_close(diff, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="positions"):
        C.forced_attention_logit_difference(model, tokens, 0, 6, 0)


def test_ov_from_activations_ignores_positions_and_equals_the_circuit_rows():
    model = randomized(seed=4)
    tokens = torch.tensor([[2, 8, 8, 19], [0, 27, 3, 3]])
    _, cache = model.run_with_cache(tokens)
    w = weights(model)
    out = torch.tensor([5, 0, 28])
    W_U = model.W_U.detach()
    got = C.ov_from_activations(cache["hook_embed"], cache["hook_pos_embed"], w["W_V"], w["W_O"], W_U, out)
    ov = C.full_ov_circuit(model.W_E.detach(), w["W_V"], w["W_O"], model.W_U.detach())
    assert got.shape == (2, 4, 3, 3)
    for b in range(2):
        for p in range(4):
            for h in range(3):
                torch.testing.assert_close(got[b, p, h], ov.AB[h, tokens[b, p], out], rtol=1e-4, atol=1e-5)
    # the result does not depend on pos_embed at all (shortformer)
    again = C.ov_from_activations(cache["hook_embed"], torch.randn_like(cache["hook_pos_embed"]), w["W_V"], w["W_O"],
                                  model.W_U.detach(), out)
    torch.testing.assert_close(got, again)


def test_source_centred_and_slices():
    g = torch.Generator().manual_seed(0)
    fm = C.FactoredMatrix(torch.randn(2, 9, 3, generator=g), torch.randn(2, 3, 11, generator=g))
    dense = fm.AB
    torch.testing.assert_close(C.source_centred(fm).AB, dense - dense.mean(-1, keepdim=True), rtol=1e-5, atol=1e-5)
    rows, cols = [8, 0, 3], [10, 2]
    torch.testing.assert_close(C.circuit_slice(fm, rows, cols), dense[:, rows][:, :, cols], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cols"):
        C.circuit_slice(fm, rows, [11])
    with pytest.raises(TypeError, match="FactoredMatrix"):
        C.circuit_slice(dense, rows, cols)


# --------------------------------------------------------------------------- 2. positions


def test_positional_pattern_is_the_models_pattern_when_tokens_carry_nothing():
    """With W_E = 0 only W_pos and the biases reach the queries and keys; b_K shifts whole rows,
    which the softmax ignores, so the model's pattern is the positional pattern with b_Q."""
    model = randomized(seed=5)
    with torch.no_grad():
        model.embed.W_E.zero_()
    n = SHORT.n_ctx
    _, cache = model.run_with_cache(torch.zeros(1, n, dtype=torch.long))
    w = weights(model)
    expected = C.positional_qk_pattern(model.W_pos.detach(), w["W_Q"], w["W_K"], b_Q=w["b_Q"])
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][0], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.blocks[0].attn.b_Q.zero_()
    _, cache = model.run_with_cache(torch.zeros(1, n, dtype=torch.long))
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][0],
                               C.positional_qk_pattern(model.W_pos.detach(), w["W_Q"], w["W_K"]), rtol=1e-5, atol=1e-6)


def test_positional_scores_loop():
    g = torch.Generator().manual_seed(1)
    W_pos = torch.randn(5, 6, generator=g)
    W_Q, W_K = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    scores = C.positional_qk_scores(W_pos, W_Q, W_K)
    for h in range(2):
        for i in range(5):
            for j in range(5):
                expected = sum(float((W_pos[i] @ W_Q[h])[a] * (W_pos[j] @ W_K[h])[a]) for a in range(3))
                assert abs(float(scores[h, i, j]) - expected) < 1e-4


def loop_head_scores(A):
    n = A.shape[-1]
    prev = sum(float(A[i, i - 1]) for i in range(1, n)) / (n - 1)
    first = sum(float(A[i, 0]) for i in range(1, n)) / (n - 1)
    ratio = sum(sum(float(A[i, j]) * (i - j) for j in range(i + 1)) / (i / 2) for i in range(1, n)) / (n - 1)
    return [prev, first, ratio]


def test_positional_head_scores_and_classification():
    n = 12
    previous = torch.eye(n).roll(-1, dims=1).tril()
    previous[0, 0] = 1
    first = torch.zeros(n, n)
    first[:, 0] = 1
    uniform = torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None]
    distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).clamp(min=0).float()
    recent = (-distance).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf).softmax(-1)
    g = torch.Generator().manual_seed(2)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    random = torch.randn(n, n, generator=g).masked_fill(~causal, -math.inf).softmax(-1)
    patterns = torch.stack([previous, first, uniform, recent, random])
    scores = C.positional_head_scores(patterns)
    for h in range(5):
        assert scores[h].tolist() == pytest.approx(loop_head_scores(patterns[h]), abs=1e-5)
    # query 1 looks one back, which is also the first token
    assert scores[0].tolist() == pytest.approx([1, 1 / (n - 1), sum(2 / i for i in range(1, n)) / (n - 1)], abs=1e-6)
    assert scores[1].tolist() == pytest.approx([1 / (n - 1), 1, 2], abs=1e-6)
    assert scores[2, 2] == pytest.approx(1, abs=1e-6)
    assert C.classify_heads(scores[:4]) == ["previous-token", "first-token", "content", "recent-tokens"]
    with pytest.raises(ValueError, match="scores"):
        C.classify_heads(torch.zeros(2, 2))


def test_bundled_heads_are_two_recent_token_and_two_content_heads(bundled):
    w = weights(bundled)
    with_bias = C.positional_qk_pattern(bundled.W_pos.detach(), w["W_Q"], w["W_K"], b_Q=w["b_Q"])
    assert C.classify_heads(C.positional_head_scores(with_bias)) == ["recent-tokens", "content", "content",
                                                                      "recent-tokens"]


# --------------------------------------------------------------------------- 3. skip-trigrams


def dense_top(qk_dense, ov_dense, source, k, allowed):
    """Brute force on materialised matrices with Python sorting."""
    centred = [float(qk_dense[d, source]) - float(qk_dense[d].mean()) for d in range(qk_dense.shape[0])]
    dests = sorted((d for d in range(len(centred)) if allowed[d]), key=lambda d: -centred[d])[:k]
    outs = sorted((c for c in range(ov_dense.shape[1]) if allowed[c]), key=lambda c: -float(ov_dense[source, c]))[:k]
    return dests, outs


def test_top_for_source_against_brute_force():
    g = torch.Generator().manual_seed(3)
    V, r = 30, 4
    qk = C.FactoredMatrix(torch.randn(V, r, generator=g) * torch.rand(V, 1, generator=g) * 3,
                          torch.randn(r, V, generator=g) + 2)
    ov = C.FactoredMatrix(torch.randn(V, r, generator=g), torch.randn(r, V, generator=g))
    allowed = torch.rand(V, generator=g) < 0.7
    for source in (0, 7, 29):
        dests, outs = C.top_for_source(qk.A, qk.B, ov.A, ov.B, source, 5, allowed)
        want_d, want_o = dense_top(qk.AB, ov.AB, source, 5, allowed)
        assert dests.tolist() == want_d and outs.tolist() == want_o
    d_all, _ = C.top_for_source(qk.A, qk.B, ov.A, ov.B, 3, V)
    assert sorted(d_all.tolist()) == list(range(V))
    with pytest.raises(ValueError, match="k must be"):
        C.top_for_source(qk.A, qk.B, ov.A, ov.B, 0, int(allowed.sum()) + 1, allowed)
    with pytest.raises(ValueError, match="source"):
        C.top_for_source(qk.A, qk.B, ov.A, ov.B, V, 2)
    with pytest.raises(ValueError, match="bool mask"):
        C.top_for_source(qk.A, qk.B, ov.A, ov.B, 0, 2, allowed.long())


def test_skip_trigrams_match_dense_circuits_and_top_for_source():
    model = randomized(seed=6)
    g = torch.Generator().manual_seed(0)
    allowed = torch.rand(SHORT.d_vocab, generator=g) < 0.8
    tri = C.skip_trigrams(model, allowed, k=3, chunk=5, context_len=8)
    n_allowed = int(allowed.sum())
    assert len(tri) == SHORT.n_heads * n_allowed
    W_E, W_U, w = model.W_E.detach(), model.W_U.detach(), weights(model)
    for row in [0, 7, len(tri) - 1]:
        h, s = int(tri.heads[row]), int(tri.sources[row])
        qk = C.full_qk_circuit(W_E, w["W_Q"][h], w["W_K"][h])
        ov = C.full_ov_circuit(W_E, w["W_V"][h], w["W_O"][h], W_U)
        want_d, want_o = dense_top(qk.AB, ov.AB, s, 3, allowed)
        assert tri.destinations[row].tolist() == want_d and tri.outs[row].tolist() == want_o
        dense_qk, dense_ov = qk.AB, ov.AB
        d0, c0 = want_d[0], want_o[0]
        dest_score = (dense_qk[d0, s] - dense_qk[d0].mean()) / math.sqrt(SHORT.d_head)
        out_score = dense_ov[s, c0] - dense_ov[s].mean()
        assert float(tri.dest_scores[row, 0]) == pytest.approx(float(dest_score), abs=1e-4)
        assert float(tri.out_scores[row, 0]) == pytest.approx(float(out_score), abs=1e-4)
        expected = float(out_score) / (1 + math.exp(-(float(dest_score) - math.log(8))))
        assert float(tri.score[row]) == pytest.approx(expected, abs=1e-4)
    top = tri.top(5)
    assert (top.score[:-1] >= top.score[1:]).all() and float(top.score[0]) == float(tri.score.max())
    per_head = tri.top_per_head(2)
    assert per_head.heads.tolist() == [0, 0, 1, 1, 2, 2]
    best = tri.for_sources([int(tri.sources[0])])
    assert len(best) == 1 and float(best.score[0]) == float(tri.score[tri.sources == tri.sources[0]].max())
    assert tri.triples().shape == (len(tri), 3)


def test_skip_trigram_table_format():
    model = randomized(seed=7)
    tri = C.skip_trigrams(model, k=4).top(3)
    names = {i: f"t{i}\n<x>" for i in range(SHORT.d_vocab)}
    table = C.skip_trigram_table(tri, lambda i: names[i], n_dest=3, n_out=2, n_examples=2, title="T")
    assert table.columns[:4] == ["head", "source token", "destination tokens", "out tokens"]
    assert len(table.rows) == 3
    row = table.rows[0]
    a, b, c = (int(tri.sources[0]), int(tri.destinations[0, 0]), int(tri.outs[0, 0]))
    assert row[1] == f'"t{a}\\n<x>"' and row[2].count('", "') == 2 and row[3].count('", "') == 1
    assert row[4].startswith(f'"t{a}\\n<x> ... t{b}\\n<x>t{c}\\n<x>"')
    html = table._repr_html_()
    assert "&lt;x&gt;" in html and "<x>" not in html and "<caption" in html
    assert "head" in str(table).splitlines()[1]
    assert C.show_token("a\tb\n") == '"a\\tb\\n"'
    assert C.trigram_string(" try", ":", "except") == '" try ... :except"'


# --------------------------------------------------------------------------- 4. confirmation


def test_confirmation_effect_by_hand():
    g = torch.Generator().manual_seed(4)
    lw, lo = torch.randn(3, 4, 9, generator=g), torch.randn(3, 4, 9, generator=g)
    out = torch.tensor([2, 0, 8])
    logit_gain, logprob_gain = C.confirmation_effect(lw, lo, out)
    for b in range(3):
        c = int(out[b])
        assert float(logit_gain[b]) == pytest.approx(float(lw[b, -1, c] - lo[b, -1, c]), abs=1e-6)
        lse = lambda v: math.log(sum(math.exp(float(x)) for x in v))
        want = (float(lw[b, -1, c]) - lse(lw[b, -1])) - (float(lo[b, -1, c]) - lse(lo[b, -1]))
        assert float(logprob_gain[b]) == pytest.approx(want, abs=1e-5)
    # a shift shared by all logits changes the logit gain but not the log-prob gain
    shifted = C.confirmation_effect(lw + 5.0, lo, out)
    torch.testing.assert_close(shifted[1], logprob_gain)
    with pytest.raises(ValueError, match="one out token"):
        C.confirmation_effect(lw, lo, out[:2])


def test_confirmation_prompts_layout():
    contexts = torch.arange(40).view(2, 20)
    contexts[:, 0] = 0
    w, wo = C.confirmation_prompts(a=97, b=98, contexts=contexts, neutral=99, prefix_len=5, gap=3)
    assert w.shape == wo.shape == (2, 1 + 5 + 1 + 3 + 1)
    assert w[0].tolist() == [0, 1, 2, 3, 4, 5, 97, 6, 7, 8, 98]
    assert (w != wo).nonzero().tolist() == [[0, 6], [1, 6]] and (wo[:, 6] == 99).all()
    with pytest.raises(ValueError, match="at least"):
        C.confirmation_prompts(1, 2, contexts[:, :8], 3, prefix_len=5, gap=3)


@torch.no_grad()
def test_confirm_skip_trigrams_equals_running_each_prompt():
    model = randomized(seed=8)
    contexts = torch.randint(1, SHORT.d_vocab, (3, 8), generator=torch.Generator().manual_seed(5))
    contexts[:, 0] = 0
    triples = torch.tensor([[3, 4, 5], [6, 6, 1], [2, 7, 7]])
    neutral = [6, 9]  # the second triple contains 6, so it must use 9
    result = C.confirm_skip_trigrams(model, triples, contexts, neutral, prefix_len=3, gap=2, batch_size=4)
    assert result.neutral.tolist() == [6, 9, 6]
    for t, (a, b, c) in enumerate(triples.tolist()):
        gains, probs = [], []
        for row in contexts:
            prompt = [0, *row[1:4].tolist(), a, *row[4:6].tolist(), b]
            base = list(prompt)
            base[4] = int(result.neutral[t])
            lw = model(torch.tensor([prompt]))[0, -1].log_softmax(-1)
            lo = model(torch.tensor([base]))[0, -1].log_softmax(-1)
            gains.append(float(lw[c] - lo[c]))
            probs.append(float(lw[c].exp()))
        assert float(result.logprob_gain[t]) == pytest.approx(sum(gains) / 3, abs=1e-4)
        assert float(result.prob_with[t]) == pytest.approx(sum(probs) / 3, abs=1e-5)
    assert result.confirmed.tolist() == (result.logprob_gain >= math.log(2)).tolist()
    with pytest.raises(ValueError, match="neutral"):
        C.confirm_skip_trigrams(model, torch.tensor([[6, 9, 1]]), contexts, [6, 9], prefix_len=3, gap=2)


def test_neutral_tokens_have_the_smallest_ov_rows():
    model = randomized(seed=9)
    allowed = torch.ones(SHORT.d_vocab, dtype=torch.bool)
    allowed[[0, 1]] = False
    total = torch.zeros(SHORT.d_vocab)
    for h in range(SHORT.n_heads):
        ov = (model.W_E @ model.W_V[0, h] @ model.W_O[0, h] @ model.W_U).detach()
        total += (ov - ov.mean(1, keepdim=True)).norm(dim=1)
    expected = [t for t in total.argsort().tolist() if t not in (0, 1)][:3]
    assert C.neutral_tokens(model, allowed, n=3) == expected


def test_random_triples_are_allowed_and_seeded():
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[[3, 7, 11]] = True
    t = C.random_triples(allowed, 20, seed=1)
    assert set(t.flatten().tolist()) <= {3, 7, 11} and torch.equal(t, C.random_triples(allowed, 20, seed=1))


# --------------------------------------------------------------------------- 5. bigrams and rank correlation


def loop_ranks(values):
    values = [float(v) for v in values]
    ranks = []
    for v in values:
        below = sum(1 for u in values if u < v)
        ties = sum(1 for u in values if u == v)
        ranks.append(below + (ties - 1) / 2)  # 0-based, ties get the mean of their places
    return ranks


def loop_spearman(x, y):
    rx, ry = loop_ranks(x), loop_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


@pytest.mark.parametrize("seed", range(6))
def test_spearman_against_a_loop_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    n = 7 + 5 * seed
    x = torch.randint(0, 4, (n,), generator=g).float() if seed % 2 else torch.randn(n, generator=g)
    y = torch.randint(0, 3, (n,), generator=g).double() + 0.1 * x.double()
    assert C.average_ranks(x).tolist() == pytest.approx(loop_ranks(x))
    assert C.spearman(x, y) == pytest.approx(loop_spearman(x, y), abs=1e-9)


def test_spearman_properties_and_scipy():
    x = torch.tensor([1.0, 5.0, 2.0, 2.0, 9.0])
    assert C.spearman(x, x ** 3) == pytest.approx(1.0)
    assert C.spearman(x, -x) == pytest.approx(-1.0)
    assert C.average_ranks(torch.tensor([3, 1, 3, 3])).tolist() == [2.0, 0.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="constant"):
        C.spearman(x, torch.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        C.spearman(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="same length"):
        C.spearman(x, x[:3])
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(9)
    a, b = torch.randint(0, 5, (300,), generator=g).float(), torch.randn(300, generator=g)
    assert C.spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-10)


def test_bigram_counts_against_a_counter():
    g = torch.Generator().manual_seed(10)
    tokens = torch.randint(0, 6, (4, 9), generator=g)
    counts = C.bigram_counts(tokens, 6)
    expected = Counter((int(r[i]), int(r[i + 1])) for r in tokens for i in range(8))  # never across rows
    dense = counts.dense()
    for a in range(6):
        for b in range(6):
            assert dense[a, b] == expected[(a, b)]
        torch.testing.assert_close(counts.row(a), dense[a])
    assert counts.prev_counts().tolist() == [sum(expected[(a, b)] for b in range(6)) for a in range(6)]
    with pytest.raises(ValueError, match="token ids"):
        C.bigram_counts(tokens, 5)
    with pytest.raises(TypeError, match="integer"):
        C.bigram_counts(tokens.float(), 6)


def test_direct_path_vs_bigrams_per_source():
    g = torch.Generator().manual_seed(11)
    V, d = 12, 5
    W_E, W_U = torch.randn(V, d, generator=g), torch.randn(d, V, generator=g)
    tokens = torch.randint(0, V, (30, 40), generator=g)
    counts = C.bigram_counts(tokens, V)
    result = C.direct_path_vs_bigrams(W_E, W_U, counts, min_count=10, min_next=3, exclude=(0,))
    assert 0 not in result.sources.tolist() and len(result.sources) > 5
    for i, a in enumerate(result.sources.tolist()):
        row = counts.row(a)
        seen = (row > 0).nonzero()[:, 0].tolist()
        direct = (W_E[a] @ W_U).tolist()
        assert float(result.rho_observed[i]) == pytest.approx(loop_spearman([direct[j] for j in seen],
                                                                            [float(row[j]) for j in seen]), abs=1e-6)
        assert float(result.rho_all[i]) == pytest.approx(loop_spearman(direct, row.tolist()), abs=1e-6)
        assert bool(result.top1_observed[i]) == (row[max(range(V), key=lambda j: direct[j])] > 0)
    assert set(result.summary()) == {"sources", "rho_observed", "rho_all", "top1_observed", "unigram_rho_observed",
                                     "shuffled_rho_observed"}


# --------------------------------------------------------------------------- 6. the explorer


def test_explorer_html_and_widget(bundled, frequent):
    text = C.explorer_html(bundled, 2, "try", k=4, allowed=frequent)
    assert "head 2" in text and "except" in text and text.count("<tr>") == 2 * (1 + 4)
    assert "single token" in C.explorer_html(bundled, 0, "not one token at all")
    assert "head must be" in C.explorer_html(bundled, 9, " def")
    widget = C.circuit_explorer(bundled, frequent, source=" try", k=3)
    controls, view = widget.children
    head, source, top = controls.children
    first = view.value
    assert "head 0" in first
    head.value = 1
    assert "head 1" in view.value and view.value != first
    source.value = " except"
    top.value = 5
    assert "except" in view.value and view.value.count("<tr>") == 2 * (1 + 5)


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    W_E = torch.randn(10, 6)
    with pytest.raises(ValueError, match="d_model"):
        C.full_ov_circuit(W_E, torch.randn(2, 5, 3), torch.randn(2, 3, 6), torch.randn(6, 10))
    with pytest.raises(ValueError, match="same shape"):
        C.full_qk_circuit(W_E, torch.randn(2, 6, 3), torch.randn(2, 6, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        C.full_qk_circuit(W_E.numpy(), torch.randn(2, 6, 3), torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="same shape"):
        C.ov_from_activations(torch.randn(1, 3, 6), torch.randn(1, 4, 6), torch.randn(2, 6, 3), torch.randn(2, 3, 6),
                              torch.randn(6, 10), torch.tensor([1]))
    with pytest.raises(ValueError, match="two positions"):
        C.positional_head_scores(torch.ones(2, 1, 1))
    with pytest.raises(TypeError, match="FactoredMatrix"):
        C.source_centred(torch.randn(3, 3))
    with pytest.raises(ValueError, match="excludes every token"):
        C.skip_trigrams(randomized(), torch.zeros(SHORT.d_vocab, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        C.confirm_skip_trigrams(randomized(), torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long),
                                [1])


def test_plot_relative_attention_returns_a_figure():
    import matplotlib.pyplot as plt

    model = randomized(seed=12)
    w = weights(model)
    pattern = C.positional_qk_pattern(model.W_pos.detach(), w["W_Q"], w["W_K"])
    fig = C.plot_relative_attention({"a": pattern, "b": pattern}, n=8)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2 * SHORT.n_heads + 1
    plt.close("all")


# --------------------------------------------------------------------------- the bundled model, measured


@pytest.fixture(scope="module")
def bundled_trigrams(bundled, frequent):
    return C.skip_trigrams(bundled, frequent, k=5)


def test_skip_trigram_extraction_never_builds_vocab_squared(bundled, frequent, bundled_trigrams):
    assert len(bundled_trigrams) == bundled.cfg.n_heads * int(frequent.sum())
    assert frequent[bundled_trigrams.destinations].all() and frequent[bundled_trigrams.outs].all()
    try_row = bundled_trigrams.find(2, bundled.to_single_token("try"))
    assert bundled.to_single_token("except") == int(try_row.outs[0, 0])
    assert bundled.to_single_token(":") in try_row.destinations[0].tolist()


def test_top_50_skip_trigrams_are_confirmed_by_running_the_model(bundled, frequent, bundled_trigrams):
    """The issue's target: at least 70% of the top 50 confirmed. Confirmed means inserting A into
    "... A ... B" at least doubles p(C) at B (mean log-prob gain >= log 2 over 8 held-out filler
    snippets), against a baseline with A replaced by the most neutral frequent token. Measured:
    50 of 50. Random triples almost never pass (measured 4%), and the gain depends on B."""
    top = bundled_trigrams.top(50)
    neutral = C.neutral_tokens(bundled, frequent)
    contexts = C.filler_contexts(n=8, length=15, seed=0)
    result = C.confirm_skip_trigrams(bundled, top.triples(), contexts, neutral)
    assert result.fraction >= 0.7, f"only {result.fraction:.0%} of the top 50 confirmed"
    control = C.confirm_skip_trigrams(bundled, C.random_triples(frequent, 100, seed=1), contexts, neutral)
    assert control.fraction <= 0.15
    swapped = top.triples().clone()
    swapped[:, 1] = neutral[0]
    elsewhere = C.confirm_skip_trigrams(bundled, swapped, contexts, neutral[1:])
    assert (result.logprob_gain > elsewhere.logprob_gain).float().mean() >= 0.8


def test_direct_path_tracks_bigram_counts_beyond_frequency(bundled):
    from utils.data import analysis_tokens

    counts = C.bigram_counts(analysis_tokens(seq_len=128), bundled.cfg.d_vocab)
    result = C.direct_path_vs_bigrams(bundled.W_E.detach(), bundled.W_U.detach(), counts, min_count=100)
    summary = result.summary()  # measured: rho 0.40 observed / 0.17 all, unigram 0.30, shuffled 0.03
    assert summary["sources"] > 500
    assert summary["rho_observed"] > summary["unigram_rho_observed"] + 0.05
    assert summary["rho_observed"] > summary["shuffled_rho_observed"] + 0.25
    assert summary["top1_observed"] > 0.6


# --------------------------------------------------------------------------- the package's layout


def test_the_checks_grade_against_exercises():
    import inspect
    import types

    from utils.checks import ch02
    from utils.checks.core import Exercise
    from utils.circuits import exercises

    for name in (n for n in ch02.EXERCISES if not n.endswith("_question")):
        assert isinstance(getattr(exercises, name), types.FunctionType), f"exercises.{name} is missing"
        (check,) = [v for v in vars(ch02).values() if isinstance(v, Exercise) and v.name == name]
        reference = check.reference
        if getattr(reference, "densified", False) or getattr(reference, "as_ids", False):
            reference = inspect.getclosurevars(reference).nonlocals["fn"]  # wrapped to compare as tensors
        if reference.__name__ == "<lambda>":  # a lambda that calls ref.<name> with fewer arguments
            assert inspect.getclosurevars(reference).globals["ref"] is exercises, name
        else:
            assert reference is getattr(exercises, name), f"check {name} does not grade against exercises.{name}"
