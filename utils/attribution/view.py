"""An offline, interactive view of an attribution graph: one self-contained HTML string (inline SVG
and a few lines of our own JavaScript; no CDN, no library), so it renders in JupyterLab, Colab and
a saved HTML file alike.

Layout: one column per token position, one row per layer (input tokens at the bottom, then each
layer's features and error nodes, the logits at the top). Edges are lines, blue for positive and
red for negative, as thick as their weight. Hovering a node highlights its edges and shows, in the
side panel, its label and (for a feature) its top-activating contexts, computed with chapter 06's
dashboard functions (``feature_contexts``). Without JavaScript (an untrusted notebook) the SVG still
shows, with each node's label as its tooltip.
"""
from __future__ import annotations

import html
import json
import secrets
from typing import Optional

import torch

from utils.attribution.graph import Graph


def feature_contexts(model, transcoders, graph: Graph, nodes, n_seqs: int = 128, k: int = 5) -> dict:
    """{node: HTML of its top-activating contexts} for the feature nodes in ``nodes``, on held-out
    text: chapter 06's ``collect`` / ``feature_acts`` / ``top_activating`` / ``examples_html``."""
    from utils.features import collect, examples_html, feature_acts
    from utils.features.exercises import top_activating

    corpora, out = {}, {}
    for node in nodes:
        if graph.kinds[node] != "feature":
            continue
        layer, _, index = graph.features[node].tolist()
        tc = transcoders[layer]
        if layer not in corpora:
            corpora[layer] = collect(model, n_seqs=n_seqs, hook_name=tc.cfg.hook_in)
        acts = feature_acts(tc, corpora[layer], index)
        if acts.max() <= 0:
            out[node] = "<i>never fires on the held-out rows</i>"
            continue
        seqs, positions, _ = top_activating(acts, k)
        out[node] = examples_html(corpora[layer], acts, seqs, positions, window=8)
    return out


def _rows(graph: Graph) -> torch.Tensor:
    """Row of each node from the bottom: tokens 0, layer L's features and errors L + 1, logits last."""
    return graph.layers + 1


def graph_html(graph: Graph, keep: Optional[torch.Tensor] = None, contexts: Optional[dict] = None,
               max_edges: int = 400, title: str = "", width: int = 1100) -> str:
    """The view of ``graph`` restricted to the nodes in ``keep`` (default: all), with its
    ``max_edges`` strongest edges among them."""
    contexts = contexts or {}
    keep = torch.ones(len(graph.kinds), dtype=torch.bool) if keep is None else keep
    nodes = keep.nonzero()[:, 0].tolist()
    n_pos, n_rows = len(graph.str_tokens), int(_rows(graph).max()) + 1
    col_w, row_h, margin = max(40, (width - 120) // max(n_pos, 1)), 110, 60
    height = n_rows * row_h + 2 * margin
    rows = _rows(graph)
    # place the nodes of one (row, position) cell side by side inside its column
    cells: dict = {}
    for n in nodes:
        cells.setdefault((int(rows[n]), int(graph.positions[n])), []).append(n)
    xy = {}
    for (row, p), members in cells.items():
        for j, n in enumerate(members):
            offset = (j - (len(members) - 1) / 2) * min(10, (col_w - 8) / max(len(members), 1))
            xy[n] = (margin + p * col_w + col_w / 2 + offset, height - margin - row * row_h - (j % 3) * 12)
    A = graph.adjacency[keep][:, keep].abs()
    sub = keep.nonzero()[:, 0]
    strongest = A.flatten().topk(min(max_edges, int((A > 0).sum()))).indices
    top = float(A.max()) if A.numel() and A.max() > 0 else 1.0
    edges = []
    for flat in strongest.tolist():
        t, s = int(sub[flat // len(sub)]), int(sub[flat % len(sub)])
        w = float(graph.adjacency[t, s])
        edges.append((s, t, w))
    colours = {"feature": "#f0a030", "error": "#999999", "token": "#4a7fd0", "logit": "#30a060"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'style="background:#fff;font-family:sans-serif">']
    for r in range(n_rows):
        name = "tokens" if r == 0 else ("logits" if r == n_rows - 1 else f"layer {r - 1}")
        svg.append(f'<text x="4" y="{height - margin - r * row_h + 4}" font-size="11" fill="#666">{name}</text>')
    for p, tok in enumerate(graph.str_tokens):
        label = html.escape(tok.replace("\n", "\u21b5").replace(" ", "\u00b7"))
        svg.append(f'<text x="{margin + p * col_w + col_w / 2}" y="{height - 20}" font-size="11" '
                   f'text-anchor="middle" font-family="monospace">{label}</text>')
    for i, (s, t, w) in enumerate(edges):
        (x1, y1), (x2, y2) = xy[s], xy[t]
        colour = "#2a5ad8" if w > 0 else "#d83a3a"
        svg.append(f'<line class="e" data-s="{s}" data-t="{t}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" '
                   f'y2="{y2:.1f}" stroke="{colour}" stroke-width="{0.3 + 3 * abs(w) / top:.2f}" '
                   f'stroke-opacity="0.35"/>')
    for n in nodes:
        x, y = xy[n]
        kind = graph.kinds[n]
        shape = (f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10"' if kind == "error"
                 else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if kind in ("token", "logit") else 5}"')
        svg.append(f'{shape} class="n" data-n="{n}" fill="{colours[kind]}" stroke="#333" stroke-width="0.5">'
                   f'<title>{html.escape(graph.labels[n])}</title></{"rect" if kind == "error" else "circle"}>')
        if kind == "logit":
            svg.append(f'<text x="{x:.1f}" y="{y - 11:.1f}" font-size="11" text-anchor="middle">'
                       f'{html.escape(graph.labels[n].removeprefix("logit "))}</text>')
    svg.append("</svg>")
    uid = "ag" + secrets.token_hex(4)
    info = {str(n): {"label": graph.labels[n], "context": contexts.get(n, ""),
                     "value": float(graph.activations[n]) if graph.kinds[n] == "feature" else None}
            for n in nodes}
    script = """
(function () {
  var root = document.getElementById("%(uid)s");
  var info = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var panel = root.querySelector(".ag-panel");
  var edges = root.querySelectorAll("line.e");
  root.querySelectorAll(".n").forEach(function (node) {
    node.style.cursor = "pointer";
    node.addEventListener("mouseenter", function () {
      var n = node.getAttribute("data-n"), d = info[n];
      var head = "<b>" + d.label.replace(/</g, "&lt;") + "</b>";
      if (d.value !== null) head += " &nbsp;activation " + d.value.toFixed(2);
      var more = d.context ? "<div style='margin-top:6px'>top-activating contexts:</div>" + d.context : "";
      panel.innerHTML = head + more;
      edges.forEach(function (e) {
        var on = e.getAttribute("data-s") === n || e.getAttribute("data-t") === n;
        e.setAttribute("stroke-opacity", on ? "0.9" : "0.05");
      });
    });
    node.addEventListener("mouseleave", function () {
      edges.forEach(function (e) { e.setAttribute("stroke-opacity", "0.35"); });
    });
  });
})();
""" % {"uid": uid}
    data = json.dumps(info).replace("</", "<\\/")
    heading = f"<div style='font-weight:bold;margin:4px 0'>{html.escape(title)}</div>" if title else ""
    return (f'<div id="{uid}" class="attribution-graph">{heading}<div style="display:flex;gap:8px;'
            f'align-items:flex-start"><div style="overflow-x:auto">{"".join(svg)}</div>'
            f'<div class="ag-panel" style="min-width:320px;max-width:420px;font-size:12px;border:1px solid #ddd;'
            f'padding:6px">hover over a node</div></div>'
            f'<script type="application/json">{data}</script><script>{script}</script></div>')
