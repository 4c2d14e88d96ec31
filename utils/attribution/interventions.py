"""Testing what a graph claims, in the REAL model: suppress or steer one feature and compare the
change of a logit with the graph's prediction.

In the real model (attention patterns and LayerNorm scales NOT frozen, the real MLPs running),
"suppressing" feature i of layer L at position p means subtracting its write a * W_dec[i] from
``blocks.L.hook_mlp_out`` at p; steering by a factor m adds (m - 1) * a * W_dec[i]. Everything
downstream is recomputed: layer L+1's real MLP, every attention pattern, every LayerNorm scale.

The graph's prediction is linear: a change Δa of the feature moves each later feature's
pre-activation by A[t, s] / a * Δa (an edge is per the source's value), each later feature passes
it on one for one (it is active: its ReLU has slope 1 and TopK keeps it, to first order), and the
logit moves by the sum over paths. Error nodes are held fixed. Where the two disagree, something
the linear picture freezes has moved: an attention pattern, a LayerNorm scale, a later feature
switching off or on, or the real MLP responding to the change unlike its transcoder.
"""
from __future__ import annotations

import torch
from torch import Tensor

from utils.attribution.graph import Graph
from utils.attribution.replacement import FrozenPrompt


@torch.no_grad()
def real_logit_change(fp: FrozenPrompt, node: tuple[int, int, int], factor: float, tokens: Tensor) -> Tensor:
    """Change of the last position's logits of ``tokens`` when feature ``node = (layer, position,
    index)`` is scaled by ``factor`` (0: suppressed) in the real model's forward pass."""
    layer, position, index = node
    model, tc = fp.model, fp.transcoders[layer]
    a = fp.acts[layer][position, index]
    delta = (factor - 1) * a * tc.W_dec[index].to(fp.logits.dtype)

    def edit(y, hook):
        y = y.clone()
        y[:, position] += delta
        return y

    logits = model.run_with_hooks(fp.tokens[None], fwd_hooks=[(tc.cfg.hook_out, edit)])[0, -1]
    return (logits - fp.logits[-1])[tokens]


def predicted_logit_change(graph: Graph, node: int, factor: float, direct_only: bool = False) -> Tensor:
    """The graph's linear prediction for the logit nodes when feature node ``node`` is scaled by
    ``factor``: direct edge only, or every path through later features (errors held)."""
    A = graph.adjacency.double()
    per_unit = A / graph.activations.double()[None, :]  # edge per unit of the source's value
    features = graph.mask("feature")
    logits = graph.mask("logit")
    change = torch.zeros(len(A), dtype=torch.float64)
    change[node] = (factor - 1) * graph.activations[node].double()
    if not direct_only:  # features respond in layer order: one pass per layer is exact for a DAG
        F = per_unit[features][:, features]
        dv = change[features]
        for _ in range(int(graph.layers[features].max()) + 1):
            dv = change[features] + F @ dv
        change[features] = dv
    return per_unit[logits][:, features] @ change[features]


def intervention_agreement(fp: FrozenPrompt, graph: Graph, nodes, factor: float = 0.0) -> dict:
    """For feature nodes ``nodes``: the real change of the graph's first logit against the direct
    and the full linear predictions; their Pearson correlations, and the slope of real on predicted
    (least squares through 0: 1 when the sizes agree, below 1 when the graph overstates them)."""
    target = graph.logit_tokens[:1]
    real, full, direct = [], [], []
    for n in nodes:
        layer, position, index = graph.features[n].tolist()
        real.append(float(real_logit_change(fp, (layer, position, index), factor, target)[0]))
        full.append(float(predicted_logit_change(graph, n, factor)[0]))
        direct.append(float(predicted_logit_change(graph, n, factor, direct_only=True)[0]))
    real_t, full_t, direct_t = (torch.tensor(v, dtype=torch.float64) for v in (real, full, direct))

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float(a @ b / (a.norm() * b.norm()))

    return {"real": real_t, "predicted": full_t, "direct": direct_t, "pearson": pearson(real_t, full_t),
            "pearson_direct": pearson(real_t, direct_t),
            "slope": float(real_t @ full_t / (full_t @ full_t))}


@torch.no_grad()
def frozen_quantities_shift(fp: FrozenPrompt, node: tuple[int, int, int], factor: float = 0.0) -> dict:
    """What the graph froze, and how much it moves in the real model when feature ``node`` is scaled:
    the largest change of any attention probability after the feature's layer, the largest relative
    change of any LayerNorm scale there, and how many later transcoder features switch on or off."""
    layer, position, index = node
    model, tc = fp.model, fp.transcoders[layer]
    delta = (factor - 1) * fp.acts[layer][position, index] * tc.W_dec[index].to(fp.logits.dtype)

    def edit(y, hook):
        y = y.clone()
        y[:, position] += delta
        return y

    with model.hooks(fwd_hooks=[(tc.cfg.hook_out, edit)]):
        _, cache = model.run_with_cache(fp.tokens[None])
    later = range(layer + 1, fp.n_layers)
    pattern = max((float((cache[f"blocks.{la}.attn.hook_pattern"][0] - fp.patterns[la]).abs().max()) for la in later),
                  default=0.0)
    scales = [(cache[f"blocks.{la}.ln1.hook_scale"][0, :, 0], fp.ln1_scale[la]) for la in later]
    scales += [(cache[f"blocks.{la}.ln2.hook_scale"][0, :, 0], fp.ln2_scale[la]) for la in later]
    scales += [(cache["ln_final.hook_scale"][0, :, 0], fp.lnf_scale)]
    scale = max(float(((new - old) / old).abs().max()) for new, old in scales)
    flips = 0
    for la in later:
        tc_later = fp.transcoders[la]
        acts = tc_later.encode(cache[tc_later.cfg.hook_in][0].to(tc_later.W_enc.dtype))
        flips += int(((acts > 0) != (fp.acts[la] > 0)).sum())
    return {"max_pattern_change": pattern, "max_scale_change": scale, "features_switched": flips}
