"""An ipywidgets explorer of one head's skip-trigrams (chapter 02): pick a head, type a source token,
see its top destinations (a QK column) and top outs (an OV row). ``explorer_html`` is the same
view as plain HTML, for places without widgets."""
from __future__ import annotations

import html
import math
from functools import lru_cache
from typing import Optional

import torch
from jaxtyping import Bool
from transformer_lens import FactoredMatrix

from utils.circuits.exercises import check_token_mask, full_ov_circuit, full_qk_circuit, top_for_source
from utils.circuits.tables import show_token, trigram_string


@lru_cache(maxsize=8)
def _head_circuits(model, layer: int, head: int) -> tuple[FactoredMatrix, FactoredMatrix]:
    W_E, W_U = model.W_E.detach(), model.W_U.detach()
    qk = full_qk_circuit(W_E, model.W_Q[layer, head].detach(), model.W_K[layer, head].detach())
    ov = full_ov_circuit(W_E, model.W_V[layer, head].detach(), model.W_O[layer, head].detach(), W_U)
    return qk, ov


def _source_token(model, source) -> int:
    if isinstance(source, int):
        if not 0 <= source < model.cfg.d_vocab:
            raise ValueError(f"token id {source} is not in [0, {model.cfg.d_vocab})")
        return source
    return model.to_single_token(source)


@torch.no_grad()
def explorer_html(model, head: int, source, k: int = 8, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None,
                  layer: int = 0) -> str:
    """HTML for one (head, source token): top destinations with their centred attention scores
    and top out tokens with their logit boosts. ``source`` is a string of one token or an id; a
    string that is not exactly one token yields a message, not an exception."""
    if not 0 <= head < model.cfg.n_heads:
        return f"<p>head must be in [0, {model.cfg.n_heads})</p>"
    try:
        s = _source_token(model, source)
    except ValueError as e:
        return f"<p style='color:#a00'>{html.escape(str(e))}: type a single token, e.g. ' def'.</p>"
    qk, ov = _head_circuits(model, layer, head)
    allowed = check_token_mask(allowed, model.cfg.d_vocab)
    k = min(k, model.cfg.d_vocab if allowed is None else int(allowed.sum()))
    dests, outs = top_for_source(qk.A, qk.B, ov.A, ov.B, s, k, allowed)
    dest_scores = (qk.A[dests] @ (qk.B[:, s] - qk.B.mean(-1))) / math.sqrt(model.cfg.d_head)
    out_row = ov.A[s] @ ov.B
    out_scores = out_row[outs] - out_row.mean()
    name = lambda t: html.escape(show_token(model.to_string(torch.tensor([int(t)]))))
    table = lambda title, ids, vals, unit: (
        f"<table><thead><tr><th style='text-align:left'>{title}</th><th>{unit}</th></tr></thead><tbody>"
        + "".join(f"<tr><td style='font-family:monospace'>{name(t)}</td><td>{v:+.2f}</td></tr>"
                  for t, v in zip(ids.tolist(), vals.tolist())) + "</tbody></table>")
    a = name(s)
    examples = ", ".join(html.escape(trigram_string(model.to_string(torch.tensor([s])),
                                                    model.to_string(torch.tensor([int(b)])),
                                                    model.to_string(torch.tensor([int(c)]))))
                         for b, c in zip(dests[:3].tolist(), outs[:3].tolist()))
    return (f"<p><b>head {head}</b>, source {a}: skip-trigrams {examples}</p>"
            "<div style='display:flex;gap:2em'>"
            + table("destinations (QK column)", dests, dest_scores, "attention log-odds vs average")
            + table("outs (OV row)", outs, out_scores, "logit boost vs average")
            + "</div>")


def circuit_explorer(model, allowed: Optional[Bool[torch.Tensor, "d_vocab"]] = None, source: str = " def",
                     k: int = 8, layer: int = 0):
    """An ipywidgets panel: pick a head and type a source token; shows its top destinations (QK)
    and top outputs (OV). Returns the widget (display it, or just leave it last in a cell)."""
    import ipywidgets as widgets

    head = widgets.Dropdown(options=[(f"head {h}", h) for h in range(model.cfg.n_heads)], value=0,
                            description="head")
    text = widgets.Text(value=source, description="source", continuous_update=False)
    top = widgets.IntSlider(value=k, min=1, max=20, description="top k")
    view = widgets.HTML()

    def update(*_):
        view.value = explorer_html(model, head.value, text.value, top.value, allowed, layer)

    for w in (head, text, top):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([head, text, top]), view])
