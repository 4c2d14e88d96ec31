"""The attribution graph of one prompt: nodes, and the adjacency matrix of direct linear effects.

Nodes, in this order (circuit-tracer's): active features (layer, position, feature index), error
nodes (layer, position), token nodes (position), logit nodes (token ids at the last position).
``A[target, source]`` is the DIRECT effect of the source's value on the target, in the replacement
model of ``utils.attribution.replacement``, along every path that meets no other node (through the
residual stream and through any number of frozen attention layers; never through an MLP, whose
place is taken by feature and error nodes):

    target feature (L, q, j): the part of its pre-activation x_L[q] @ W_enc[:, j] that the source adds;
    target logit t:           the part of the logit at the last position that the source adds.

Sources are features (their value: the activation a, written as a * W_dec[i]), error nodes (their
value: the error vector) and token nodes (W_E[t] + W_pos[p]). Since everything between nodes is
linear, an edge equals the change in the target when the source's value is set to 0 with every
other node held: the definition the chapter's checks test by intervention.

How it is computed: every target is a linear read-out ``r . resid`` of the residual stream at one
position (the frozen LayerNorm folded in: r = centre(w * W_enc[:, j]) / scale). Pulling r back
through the frozen attention layers (their transposes) gives, for each residual-stream stage, the
vector an injection there is read with; an edge is the source's write dotted with it. All
targets go back together, as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from utils.attribution.replacement import FrozenPrompt


@dataclass
class Graph:
    """Nodes and ``adjacency[target, source]``; ``kinds[n]`` is "feature", "error", "token" or "logit"."""

    adjacency: Tensor
    kinds: list
    features: Tensor  # [n_features, 3]: (layer, position, index) of each feature node
    logit_tokens: Tensor  # token ids of the logit nodes
    logit_weights: Tensor  # [n_nodes]: the logits' probabilities at their nodes, 0 elsewhere
    activations: Tensor  # [n_nodes]: a feature's activation (1 for other nodes)
    labels: list = field(default_factory=list)
    str_tokens: list = field(default_factory=list)
    positions: Tensor = None  # [n_nodes]
    layers: Tensor = None  # [n_nodes]: feature/error layer; -1 tokens; n_layers logits

    def mask(self, kind: str) -> Tensor:
        return torch.tensor([k == kind for k in self.kinds])


def centre(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def _attention_transpose(G: Tensor, block, pattern: Tensor, ln1_scale: Tensor) -> Tensor:
    """The transpose of one frozen attention layer's linear part, on a batch of read vectors G
    [targets, pos(query), d]: what an injection at each key position is read with."""
    dtype = G.dtype
    W_V, W_O, w = block.attn.W_V.to(dtype), block.attn.W_O.to(dtype), block.ln1.w.to(dtype)
    y = torch.einsum("hqk,tqd->thkd", pattern, G)
    y = torch.einsum("thkd,hed->thke", y, W_O)  # W_O^T
    y = torch.einsum("thke,hce->tkc", y, W_V)  # W_V^T, summed over heads
    return centre(y * w) / ln1_scale[None, :, None]  # LN1's transpose: centre(w * g) / scale


def top_logits(fp: FrozenPrompt, max_n: int = 10, cumulative: float = 0.95) -> tuple[Tensor, Tensor]:
    """The most likely next tokens at the last position, until their probabilities add up to
    ``cumulative`` (at most ``max_n``): (token ids, probabilities)."""
    probs = fp.logits[-1].double().softmax(-1)
    values, ids = probs.sort(descending=True)
    n = int((values.cumsum(0) < cumulative).sum()) + 1
    n = max(1, min(n, max_n))
    return ids[:n], values[:n]


@torch.no_grad()
def build_graph(fp: FrozenPrompt, logit_tokens: Optional[Sequence[int]] = None,
                dtype: torch.dtype = torch.float32) -> Graph:
    """Every node of the prompt and the full adjacency matrix. ``logit_tokens``: the logit nodes
    (default: ``top_logits``); their weights are their probabilities."""
    model, L = fp.model, fp.n_layers
    fp = fp.to(dtype)
    n = len(fp.tokens)
    if logit_tokens is None:
        logit_tokens, probs = top_logits(fp)
    else:
        logit_tokens = torch.as_tensor(list(logit_tokens))
        probs = fp.logits[-1].double().softmax(-1)[logit_tokens]
    feats = torch.cat([torch.cat([torch.full((len(nz), 1), layer), nz], 1)
                       for layer, nz in ((layer, (fp.acts[layer] > 0).nonzero()) for layer in range(L))])
    n_f, n_e, n_t, n_l = len(feats), L * n, n, len(logit_tokens)
    N = n_f + n_e + n_t + n_l
    err0, tok0, log0 = n_f, n_f + n_e, n_f + n_e + n_t

    # read vectors of every target at its read point, grouped by the layer it reads after
    # (a feature of layer L reads resid_mid_L; the logits read the final residual, "layer" L)
    A = torch.zeros(N, N, dtype=dtype)
    groups = []
    for layer in range(L):
        rows = (feats[:, 0] == layer).nonzero()[:, 0]
        tc, ln2 = fp.transcoders[layer], model.blocks[layer].ln2
        pos, idx = feats[rows, 1], feats[rows, 2]
        r = centre(ln2.w.to(dtype) * tc.W_enc.to(dtype)[:, idx].T) / fp.ln2_scale[layer][pos][:, None]
        groups.append((layer, rows, pos, r))
    W_U, wf = model.W_U.to(dtype), model.ln_final.w.to(dtype)
    r = centre(wf * W_U[:, logit_tokens].T) / fp.lnf_scale[-1]
    groups.append((L, torch.arange(log0, N), torch.full((n_l,), n - 1), r))

    for read_layer, rows, pos, r in groups:
        G = torch.zeros(len(rows), n, r.shape[-1], dtype=dtype)
        G[torch.arange(len(rows)), pos] = r
        # stage s = the residual stream before attention s (stage L: after the last MLP). A feature
        # of layer s reads after attention s, so its read vector is first pulled back through it.
        if read_layer == L:
            _collect(A, rows, G, L, fp, feats, err0, tok0)
        for s in range(min(read_layer, L - 1), -1, -1):
            G = G + _attention_transpose(G, model.blocks[s], fp.patterns[s], fp.ln1_scale[s])
            _collect(A, rows, G, s, fp, feats, err0, tok0)
    kinds = ["feature"] * n_f + ["error"] * n_e + ["token"] * n_t + ["logit"] * n_l
    weights = torch.zeros(N, dtype=dtype)
    weights[log0:] = probs.to(dtype)
    activations = torch.ones(N, dtype=dtype)
    activations[:n_f] = torch.stack([fp.acts[int(la)][int(p), int(i)] for la, p, i in feats]) if n_f else 0
    str_tokens = model.to_str_tokens(fp.tokens) if model.tokenizer is not None else [str(int(t)) for t in fp.tokens]
    positions = torch.cat([feats[:, 1], torch.arange(n).repeat(L), torch.arange(n), torch.full((n_l,), n - 1)])
    layers = torch.cat([feats[:, 0], torch.arange(L).repeat_interleave(n), torch.full((n,), -1), torch.full((n_l,), L)])
    labels = ([f"L{la} F{i} @{p}" for la, p, i in feats.tolist()]
              + [f"L{la} error @{p}" for la in range(L) for p in range(n)]
              + [f"token {str_tokens[p]!r} @{p}" for p in range(n)]
              + [f"logit {model.to_string(t) if model.tokenizer is not None else int(t)!r}" for t in logit_tokens])
    return Graph(A, kinds, feats, logit_tokens, weights, activations, labels, str_tokens, positions, layers)


def _collect(A: Tensor, rows: Tensor, G: Tensor, stage: int, fp: FrozenPrompt, feats: Tensor, err0: int,
             tok0: int) -> None:
    """Edges into ``rows`` from every source that writes into residual stage ``stage`` (tokens at
    stage 0; the features and error of layer stage - 1 otherwise), read with G [targets, pos, d]."""
    n = G.shape[1]
    if stage == 0:
        A[rows, tok0:tok0 + n] = torch.einsum("tpd,pd->tp", G, fp.embed)
        return
    layer = stage - 1
    A[rows, err0 + layer * n: err0 + (layer + 1) * n] = torch.einsum("tpd,pd->tp", G, fp.errors[layer])
    cols = (feats[:, 0] == layer).nonzero()[:, 0]
    W_dec = fp.transcoders[layer].W_dec.to(G.dtype)
    for p in feats[cols, 1].unique().tolist():
        here = cols[feats[cols, 1] == p]
        idx = feats[here, 2]
        a = fp.acts[layer][p, idx]
        A[rows[:, None], here[None, :]] = (G[:, p] @ W_dec[idx].T) * a
