"""Checks for chapter 07, exercise 2: edges from layer-0 features to layer-1 features.

The expected edges do NOT come from the reference's formula: ``edges_by_intervention`` builds the
frozen-attention model the inputs describe (layer-0 features writing into the residual stream,
layer 1's attention with its patterns and LayerNorm scales frozen, layer 1's LayerNorm and
transcoder encoder), runs it, sets one source's activation to 0, runs it again, and takes the
change of every target's pre-activation: a finite intervention per source, in float64, with an
arbitrary residual stream and arbitrary biases underneath (an edge must not depend on them).
tests/test_ch07_checks.py shows the reference formula agrees with it to 1e-10.

Inputs: random small ones (every dimension different after the first case, causal patterns,
LayerNorm scales far from 1) and one prompt of the real gelu-2l with its bundled transcoders, its
sources and targets the features active there. The notebook reaches these checks through
``utils.checks.ch07``.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check, square_case
from utils.checks.toolkit import randint, random_pattern, rng, unit_rows

CHAPTER = "07"
REAL_PROMPT = "import os\nos.path"


def edge_inputs(seed: int) -> dict:
    g = rng(seed)
    square = square_case("feature_edges", seed)
    pos, heads, d_head = randint(g, 4, 6), randint(g, 2, 3), randint(g, 2, 4)
    d = randint(g, 6, 8)
    n_src, n_tgt = (randint(g, 3, 5),) * 2 if square else (randint(g, 3, 4), randint(g, 5, 6))
    acts = torch.relu(torch.randn(pos, n_src, generator=g) + 0.3) * 2
    acts[0, 0] = 0.0  # a source that is off: its edges are all 0
    return {
        "acts": acts.double(), "W_dec": unit_rows(torch.randn(n_src, d, generator=g)).double(),
        "pattern": random_pattern(g, heads, pos).double(),
        "W_V": (torch.randn(heads, d, d_head, generator=g) / d ** 0.5).double(),
        "W_O": (torch.randn(heads, d_head, d, generator=g) / d_head ** 0.5).double(),
        "ln1_w": (1 + 0.3 * torch.randn(d, generator=g)).double(),
        "ln1_scale": (0.3 + 2 * torch.rand(pos, generator=g)).double(),
        "ln2_w": (1 + 0.3 * torch.randn(d, generator=g)).double(),
        "ln2_scale": (0.3 + 2 * torch.rand(pos, generator=g)).double(),
        "W_enc": (torch.randn(d, n_tgt, generator=g) / d ** 0.5).double(),
    }


@lru_cache(maxsize=1)
def _real_edge_inputs() -> dict:
    from utils.attribution.replacement import freeze
    from utils.attribution.saving import load_transcoders
    from utils.models import load_model

    model = load_model("gelu-2l", device="cpu")
    fp = freeze(model, load_transcoders(), REAL_PROMPT).to(torch.float64)
    # sources: the two strongest layer-0 features at each position; targets: likewise in layer 1
    src = fp.acts[0].topk(2, dim=-1).indices.flatten().unique()
    tgt = fp.acts[1].topk(2, dim=-1).indices.flatten().unique()
    block, tc0, tc1 = model.blocks[1], fp.transcoders[0], fp.transcoders[1]
    return {"acts": fp.acts[0][:, src], "W_dec": tc0.W_dec.detach()[src].double(), "pattern": fp.patterns[1],
            "W_V": block.attn.W_V.detach().double(), "W_O": block.attn.W_O.detach().double(),
            "ln1_w": block.ln1.w.detach().double(), "ln1_scale": fp.ln1_scale[1],
            "ln2_w": block.ln2.w.detach().double(), "ln2_scale": fp.ln2_scale[1],
            "W_enc": tc1.W_enc.detach()[:, tgt].double()}


def real_edge_inputs() -> dict:
    return {k: v.clone() for k, v in _real_edge_inputs().items()}


@torch.no_grad()
def edges_by_intervention(acts, W_dec, pattern, W_V, W_O, ln1_w, ln1_scale, ln2_w, ln2_scale, W_enc):
    """edge[k, i, q, j]: how much target j's pre-activation at q drops when source i at k is set to 0."""
    acts, W_dec, W_V, W_O, W_enc = (t.double() for t in (acts, W_dec, W_V, W_O, W_enc))
    pattern, ln1_w, ln1_scale, ln2_w, ln2_scale = (t.double() for t in (pattern, ln1_w, ln1_scale, ln2_w, ln2_scale))
    pos, d = acts.shape[0], W_dec.shape[1]
    g = rng(12345)  # whatever else is in the residual stream, and the biases
    base = torch.randn(pos, d, generator=g).double()
    b_V = torch.randn(W_V.shape[0], W_V.shape[2], generator=g).double()
    b_O, ln1_b, ln2_b = (torch.randn(d, generator=g).double() for _ in range(3))
    b_enc = torch.randn(W_enc.shape[1], generator=g).double()

    def frozen_ln(x, scale, w, b):
        return (x - x.mean(-1, keepdim=True)) / scale[:, None] * w + b

    def pre_activations(a):
        resid = base + a @ W_dec  # each position's layer-0 features write into its residual stream
        v = torch.einsum("kd,hde->hke", frozen_ln(resid, ln1_scale, ln1_w, ln1_b), W_V) + b_V[:, None]
        z = torch.einsum("hqk,hke->hqe", pattern, v)
        resid_mid = resid + torch.einsum("hqe,hed->qd", z, W_O) + b_O
        return frozen_ln(resid_mid, ln2_scale, ln2_w, ln2_b) @ W_enc + b_enc

    clean = pre_activations(acts)
    out = torch.zeros(pos, acts.shape[1], pos, W_enc.shape[1], dtype=torch.float64)
    for k in range(pos):
        for i in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[k, i] = 0.0
            out[k, i] = clean - pre_activations(ablated)
    return out


def _edges(acts, W_dec, pattern, W_V, W_O, ln1_w, ln1_scale, ln2_w, ln2_scale, W_enc, *, heads=True, direct=True,
           times_acts=True, scales=True, centred=True, transpose_pattern=False, ln1_at_query=False,
           ln2_at_source=False, ln_weights=True):
    """feature_edges with one step changed (the catalogued mistakes)."""
    n = acts.shape[0]
    centre = (lambda x: x - x.mean(-1, keepdim=True)) if centred else (lambda x: x)
    one = torch.ones_like(ln1_scale)
    s1, s2 = (ln1_scale, ln2_scale) if scales else (one, one)
    w1, w2 = (ln1_w, ln2_w) if ln_weights else (torch.ones_like(ln1_w), torch.ones_like(ln2_w))
    P = pattern.transpose(1, 2) if transpose_pattern else pattern
    ov = torch.einsum("hde,hef->hdf", W_V, W_O)
    if ln1_at_query:
        via = torch.einsum("hqk,id,q,hdf->kiqf", P, centre(W_dec) * w1, 1 / s1, ov)
    else:
        via = torch.einsum("hqk,id,k,hdf->kiqf", P, centre(W_dec) * w1, 1 / s1, ov)
    written = torch.zeros_like(via)
    if heads:
        written = written + via
    if direct:
        written = written + torch.einsum("kq,id->kiqd", torch.eye(n, dtype=acts.dtype), W_dec)
    if ln2_at_source:
        read = torch.einsum("kiqd,k->kiqd", centre(written) * w2, 1 / s2)
    else:
        read = torch.einsum("kiqd,q->kiqd", centre(written) * w2, 1 / s2)
    out = read @ W_enc
    return acts[:, :, None, None] * out if times_acts else out.expand(n, -1, -1, -1).clone()


EDGES = Exercise(
    chapter=CHAPTER,
    name="feature_edges",
    reference=edges_by_intervention,
    make_inputs=edge_inputs,
    extra_inputs=(real_edge_inputs,),
    rtol=1e-4, atol=1e-4,
    misconceptions=(
        Misconception(
            "attention path left out",
            "A layer-0 feature reaches a layer-1 feature at ANOTHER position only through layer 1's attention: "
            "with the patterns frozen, add sum_h pattern[h, q, k] * LN1(v at k) @ W_V[h] @ W_O[h] to the direct "
            "path (your edges are zero off the diagonal k == q).",
            lambda **kw: _edges(**kw, heads=False)),
        Misconception(
            "residual path left out",
            "The source's write also stays in the residual stream at its own position (resid_mid = resid + attn): "
            "add it directly to what the target reads at q == k, beside the attention path.",
            lambda **kw: _edges(**kw, direct=False)),
        Misconception(
            "activation not multiplied",
            "An edge is the effect of the source NODE, whose value is its activation: multiply by acts[k, i] "
            "(what you computed is the effect of one unit of the feature, a virtual weight; an inactive source "
            "must have zero edges).",
            lambda **kw: _edges(**kw, times_acts=False)),
        Misconception(
            "LayerNorm scales ignored",
            "Frozen LayerNorms still divide: LN1 divides the source's write by ln1_scale at the key position k, "
            "and LN2 divides what the target reads by ln2_scale at q. Freezing a scale makes it a constant, not 1.",
            lambda **kw: _edges(**kw, scales=False)),
        Misconception(
            "not centred",
            "A LayerNorm's linear part first subtracts the mean over d_model: centre the write before LN1's "
            "division and centre resid_mid's change before LN2's.",
            lambda **kw: _edges(**kw, centred=False)),
        Misconception(
            "pattern transposed",
            "pattern[h, q, k] is how much the QUERY position q attends to the KEY position k: information moves "
            "from k (the source's position) to q (the target's), so use pattern[h, q, k], not pattern[h, k, q] "
            "(which would move it backwards in time).",
            lambda **kw: _edges(**kw, transpose_pattern=True)),
        Misconception(
            "LN1 scale at the query position",
            "LN1 normalises the residual stream at the position the VALUE is read from, the key position k "
            "(where the source is); you divided by ln1_scale[q], the target's position.",
            lambda **kw: _edges(**kw, ln1_at_query=True)),
        Misconception(
            "LN2 scale at the source position",
            "LN2 normalises the residual stream where the TARGET reads it, at q: divide by ln2_scale[q], not "
            "ln2_scale[k].",
            lambda **kw: _edges(**kw, ln2_at_source=True)),
        Misconception(
            "LayerNorm weights ignored",
            "After dividing by its scale, a LayerNorm multiplies by its weight w (ln1_w, ln2_w): both are part of "
            "its linear map (only its bias b adds no edge).",
            lambda **kw: _edges(**kw, ln_weights=False)),
    ),
)


def feature_edges(fn, cases: Cases = None) -> None:
    """Check ``fn(acts, W_dec, pattern, W_V, W_O, ln1_w, ln1_scale, ln2_w, ln2_scale, W_enc) ->
    edges [pos, n_src, pos, n_tgt]`` against finite interventions in the frozen model."""
    run_check(EDGES, fn, cases)
