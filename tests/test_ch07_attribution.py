"""Chapter 07's reference package (utils.attribution) against independent computations: the
replacement model reproduces the real logits exactly (the error-node identity); every edge of the
graph equals a finite intervention on its source in the frozen model; influence equals the path
series; the references in exercises.py equal the package's modules; the graph's linear prediction
equals the frozen model's response; the view is self-contained; a short training run learns."""
import random

import pytest
import torch
from random_models import randomized

from utils.attribution import (
    Transcoder,
    TranscoderConfig,
    build_graph,
    exercises,
    freeze,
    frozen_forward,
    graph_scores,
    influence_matrix,
    output_influence,
    predicted_logit_change,
    prune_mask,
)
from utils.attribution.view import graph_html
from utils.models.train import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_setup(seed: int = 0, n: int = 10, dtype=torch.float32):
    """A gelu-2l-shaped model and transcoders with every parameter random, and one prompt."""
    model = randomized(PRESETS["gelu-2l"].model, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    tcs = []
    for layer in range(2):
        tc = Transcoder(TranscoderConfig(layer=layer, d_trans=96, k=6, seed=seed + layer))
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        tcs.append(tc.to(dtype))
    tokens = torch.randint(1, model.cfg.d_vocab, (n,), generator=g)
    tokens[0] = 0
    return model, tcs, tokens


def target_value(graph, out, node):
    kind = graph.kinds[node]
    if kind == "feature":
        layer, p, i = graph.features[node].tolist()
        return out["pre"][layer][p, i]
    j = node - (len(graph.kinds) - len(graph.logit_tokens))
    return out["logits"][-1, graph.logit_tokens[j]]


def ablate(fp, graph, node):
    acts, errors, embed = [a.clone() for a in fp.acts], [e.clone() for e in fp.errors], fp.embed.clone()
    kind, p = graph.kinds[node], int(graph.positions[node])
    if kind == "feature":
        layer, _, i = graph.features[node].tolist()
        acts[layer][p, i] = 0
    elif kind == "error":
        errors[int(graph.layers[node])][p] = 0
    else:
        embed[p] = 0
    return fp.with_nodes(acts, errors, embed)


def test_replacement_model_reproduces_the_real_logits_exactly():
    """Error nodes + frozen attention and LayerNorm scales: the logits of the real forward pass."""
    model, tcs, tokens = random_setup(dtype=torch.float64)
    fp = freeze(model, tcs, tokens)
    out = frozen_forward(fp)
    assert torch.allclose(out["logits"], fp.logits, atol=1e-10)
    assert not torch.allclose(fp.errors[0], torch.zeros_like(fp.errors[0]))  # the transcoders are imperfect
    # and the pre-activations are the transcoders' own on the real MLP inputs
    _, cache = model.run_with_cache(tokens[None])
    for layer, tc in enumerate(tcs):
        assert torch.allclose(out["pre"][layer], tc.pre_activation(cache[tc.cfg.hook_in][0]), atol=1e-10)


def test_every_edge_equals_a_finite_intervention():
    """A[t, s] = target t's value minus its value with source s set to 0, in the frozen model (float64)."""
    model, tcs, tokens = random_setup(seed=1, dtype=torch.float64)
    fp = freeze(model, tcs, tokens)
    graph = build_graph(fp, dtype=torch.float64)
    base = frozen_forward(fp)
    targets = [t for t, k in enumerate(graph.kinds) if k in ("feature", "logit")]
    sources = [s for s, k in enumerate(graph.kinds) if k != "logit"]
    checked = 0
    for s in random.Random(0).sample(sources, 30):
        out = frozen_forward(ablate(fp, graph, s))
        effects = torch.stack([target_value(graph, base, t) - target_value(graph, out, t) for t in targets])
        assert torch.allclose(graph.adjacency[targets, s], effects, atol=1e-9), graph.labels[s]
        checked += int((effects.abs() > 1e-6).sum())
    assert checked > 100  # most of them are not zero
    assert (graph.adjacency[graph.mask("token") | graph.mask("error")] == 0).all()  # no inputs


def test_reference_edges_equal_the_graphs_block():
    """exercises.feature_edges on a prompt's frozen quantities = the graph's layer-0 -> layer-1 block."""
    model, tcs, tokens = random_setup(seed=2, dtype=torch.float64)
    fp = freeze(model, tcs, tokens)
    graph = build_graph(fp, dtype=torch.float64)
    block = model.blocks[1]
    src, tgt = fp.acts[0].sum(0).nonzero()[:, 0], fp.acts[1].sum(0).nonzero()[:, 0]
    with torch.no_grad():
        edges = exercises.feature_edges(fp.acts[0][:, src], tcs[0].W_dec[src], fp.patterns[1], block.attn.W_V,
                                        block.attn.W_O, block.ln1.w, fp.ln1_scale[1], block.ln2.w, fp.ln2_scale[1],
                                        tcs[1].W_enc[:, tgt])
    where = {tuple(f): n for n, f in enumerate(graph.features.tolist())}
    for (k, i), (q, j) in [((k, i), (q, j)) for k in range(len(tokens)) for i in range(len(src))
                           for q in range(len(tokens)) for j in range(len(tgt))]:
        s, t = where.get((0, k, int(src[i]))), where.get((1, q, int(tgt[j])))
        if s is not None and t is not None:
            assert abs(float(graph.adjacency[t, s] - edges[k, i, q, j])) < 1e-9


def test_influence_is_the_path_series_and_references_agree():
    model, tcs, tokens = random_setup(seed=3, dtype=torch.float64)
    graph = build_graph(freeze(model, tcs, tokens), dtype=torch.float64)
    A = graph.adjacency
    B = influence_matrix(A)
    M = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-300)
    series, power = torch.zeros_like(M), M.clone()
    for _ in range(6):  # the longest path: token -> L0 -> L1 -> logit, 3 edges
        series += power
        power = power @ M
    assert torch.allclose(B, series, atol=1e-10) and power.abs().max() < 1e-12
    assert torch.allclose(B, exercises.influence_matrix(A), atol=1e-10)
    w = graph.logit_weights
    assert torch.allclose(output_influence(A, w), w @ B, atol=1e-10)
    scores = graph_scores(A, graph.mask("error"), graph.mask("token"), w)
    assert scores == pytest.approx(exercises.graph_scores(A, graph.mask("error"), graph.mask("token"), w), abs=1e-10)
    assert 0 < scores[0] < 1 and 0 < scores[1] < 1


def test_prune_mask_by_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        influence = torch.rand(12, generator=g).double() ** 2
        share = float(torch.rand((), generator=g)) * 0.9 + 0.05
        mask = prune_mask(influence, share)
        assert torch.equal(mask, exercises.prune_mask(influence, share))
        # brute force: the smallest k such that the k largest reach the share
        best = next(k for k in range(1, 13) if influence.topk(k).values.sum() >= share * influence.sum())
        assert int(mask.sum()) == best and (mask.all() or influence[mask].min() >= influence[~mask].max())


def test_transcoder_module_equals_the_reference():
    tc = Transcoder(TranscoderConfig(d_in=8, d_trans=20, d_out=6, k=4))
    x = torch.randn(5, 8)
    y_hat, f = tc(x)
    ref = exercises.transcoder_forward(x, tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec, 4)
    assert torch.allclose(y_hat, ref[0]) and torch.equal(f, ref[1]) and ((f > 0).sum(-1) <= 4).all()
    with pytest.raises(ValueError, match="k=30 cannot exceed"):
        TranscoderConfig(d_trans=20, k=30)


def test_graph_prediction_equals_the_frozen_models_response():
    """With attention and LayerNorms frozen, errors held and the layer-1 features responding one for
    one, scaling a layer-0 feature moves the logit exactly as the graph's path sum says."""
    model, tcs, tokens = random_setup(seed=4, dtype=torch.float64)
    fp = freeze(model, tcs, tokens)
    graph = build_graph(fp, dtype=torch.float64)
    node = int((graph.layers == 0).nonzero()[0, 0])
    layer, p, i = graph.features[node].tolist()
    acts = [a.clone() for a in fp.acts]
    acts[0][p, i] *= 0.5
    first = frozen_forward(fp.with_nodes(acts))
    on = fp.acts[1] > 0
    acts[1] = fp.acts[1] + (first["pre"][1] - frozen_forward(fp)["pre"][1]) * on  # active layer-1 features follow
    out = frozen_forward(fp.with_nodes(acts))
    real = out["logits"][-1, graph.logit_tokens] - fp.logits[-1, graph.logit_tokens]
    assert torch.allclose(predicted_logit_change(graph, node, 0.5), real, atol=1e-9)


def test_graph_view_is_self_contained():
    model, tcs, tokens = random_setup(seed=5)
    graph = build_graph(freeze(model, tcs, tokens))
    keep = graph.mask("logit") | graph.mask("token") | (torch.arange(len(graph.kinds)) < 5)
    page = graph_html(graph, keep, contexts={0: "<span>ctx</span>"}, title="t")
    assert page.count('class="n"') == int(keep.sum())
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<span>ctx<\\/span>" in page  # contexts travel inside the JSON, escaped for the script tag


@pytest.mark.slow  # about 6 s of training
def test_a_short_training_run_learns():
    """A few dozen steps on gelu-2l's layer-1 pairs: the prediction's FVE rises from where the mean
    output leaves it, every row has exactly k features, and the decoder rows stay unit vectors."""
    from utils.attribution import train_transcoder
    from utils.models import load_model

    model = load_model("gelu-2l", device="cpu")
    tc, log = train_transcoder(TranscoderConfig(layer=1, d_trans=128, k=8), model, steps=60, batch_size=128,
                               lr=1e-2, pool_size=4096, progress=False, log_every=20)
    fves = [record["fve"] for record in log["history"]]
    assert fves[-1] > 0.4 and fves[-1] > fves[0] + 0.1, fves
    assert all(record["l0"] == 8 for record in log["history"])
    assert torch.allclose(tc.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)  # unit decoder rows


@pytest.mark.slow  # about 7 s: three passes of the model over the evaluation rows
def test_bundled_transcoder_cards_match_a_fresh_evaluation():
    """The cards' metrics (FVE, L0, dead fraction, the losses) are what evaluate_transcoders measures
    on the fp16 files as shipped, and replacing both MLPs costs a small fraction of removing them."""
    from utils.attribution import evaluate_transcoders, load_transcoders
    from utils.models import load_model

    model, transcoders = load_model("gelu-2l", device="cpu"), load_transcoders()
    fresh = evaluate_transcoders(model, transcoders, n_seqs=transcoders[0].metrics["eval_tokens"] // 127)
    for tc, record in zip(transcoders, fresh):
        for key in ("fve", "l0", "dead_fraction", "ce_clean", "ce_replaced_all", "ce_zero_ablated_all"):
            assert record[key] == pytest.approx(tc.metrics[key], abs=5e-3), (tc.cfg.layer, key)
        assert record["fve"] > 0.9 and record["l0"] <= tc.cfg.k
    clean, replaced, zero = (fresh[0][k] for k in ("ce_clean", "ce_replaced_all", "ce_zero_ablated_all"))
    assert replaced - clean < 0.1 * (zero - clean)
