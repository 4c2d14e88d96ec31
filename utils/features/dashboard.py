"""Offline views of a feature (Towards Monosemanticity's dashboards), as matplotlib figures and
self-contained HTML (inline styles only: no scripts, no CDN), so they render in Jupyter, Colab and
a saved notebook alike.

- ``feature_figure``: the activation histogram coloured by a hypothesis's proxy log-likelihood
  ratio, and the logit-weight distribution with its top and bottom tokens.
- ``examples_html``: text windows with each token's background set by the feature's activation.
- ``prompt_html``: for one prompt, the features that fire most on each token.
- ``effect_html``: tokens coloured by how much an intervention changed their log-probability.
"""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from utils.features import exercises as ex


def _show(text: str) -> str:
    """A token's text made visible in HTML: spaces as a middle dot, newlines and tabs named."""
    return html.escape(text.replace(" ", "\u00b7").replace("\n", "\u21b5").replace("\t", "\u21e5"))


def _span(text: str, background: str, title: str) -> str:
    return (f'<span title="{html.escape(title)}" style="background:{background};font-family:monospace;'
            f'white-space:pre;padding:0 1px;border-radius:2px">{_show(text)}</span>')


def _orange(strength: float) -> str:
    return f"rgba(255,140,0,{max(0.0, min(1.0, strength)):.3f})"


def _signed(value: float, scale: float) -> str:
    """Red for a decrease, blue for an increase (Anthropic's convention for ablations)."""
    a = max(0.0, min(1.0, abs(value) / scale)) if scale > 0 else 0.0
    return f"rgba(220,40,40,{a:.3f})" if value < 0 else f"rgba(40,90,220,{a:.3f})"


def examples_html(corpus, acts: Tensor, seqs, positions, window: int = 12, title: str = "") -> str:
    """One line per (seq, position): the tokens around it, each shaded by the feature's activation
    relative to the largest of ``acts``; the example's own token is underlined."""
    top = float(acts.max()) or 1.0
    lines = [f"<div style='font-weight:bold;margin:4px 0'>{html.escape(title)}</div>"] if title else []
    for s, p in zip(list(map(int, seqs)), list(map(int, positions))):
        text = corpus.str_tokens(s)
        lo, hi = max(1, p - window), min(len(text), p + 4)
        spans = []
        for q in range(lo, hi):
            span = _span(text[q], _orange(float(acts[s, q]) / top), f"{float(acts[s, q]):.3f}")
            spans.append(f"<u>{span}</u>" if q == p else span)
        lines.append(f"<div style='margin:2px 0'><span style='color:#888;font-family:monospace'>"
                     f"{float(acts[s, p]):6.2f} </span>{''.join(spans)}</div>")
    return "\n".join(lines)


def quantile_examples(acts: Tensor, n_quantiles: int = 4, per_quantile: int = 3, seed: int = 0):
    """Random examples from equal slices of the activation range (above 0): what the feature does
    at weak activations, not only at its peak. Returns [(low, high, seqs, positions)]."""
    nonzero = acts > 0
    values = acts[nonzero]
    if values.numel() == 0:
        return []
    edges = torch.linspace(0, float(values.max()), n_quantiles + 1)
    g = torch.Generator().manual_seed(seed)
    where = nonzero.nonzero()
    out = []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inside = (values > lo) & (values <= hi)
        idx = inside.nonzero()[:, 0]
        pick = idx[torch.randperm(len(idx), generator=g)[:per_quantile]]
        out.append((lo, hi, where[pick, 0], where[pick, 1]))
    return out


def feature_figure(acts: Tensor, token_ids: Tensor, weights: Tensor, vocab: list, llr: Tensor | None = None,
                   title: str = "", n_tokens: int = 8):
    """Left: histogram of the feature's non-zero activations, each bar split by the proxy
    log-likelihood ratio of the tokens it counts (blue: unlike the hypothesis, red: like it).
    Right: the logit weights over the vocabulary with the top and bottom tokens named."""
    fig, (ax_h, ax_l) = plt.subplots(1, 2, figsize=(13, 3.6))
    on = acts > 0
    values, ids = acts[on].float(), token_ids[on]
    if values.numel():
        bins = torch.linspace(0, float(values.max()), 41)
        if llr is None:
            ax_h.hist(values.numpy(), bins=bins.numpy(), color="C1")
        else:
            ratio = llr[ids].clamp(-5, 5)
            groups = [(ratio < -1, "#3b6fd0", "LLR < -1"), ((ratio >= -1) & (ratio <= 1), "#bbbbbb", "|LLR| <= 1"),
                      (ratio > 1, "#d0413b", "LLR > 1")]
            ax_h.hist([values[m].numpy() for m, _, _ in groups], bins=bins.numpy(), stacked=True,
                      color=[c for _, c, _ in groups], label=[lab for _, _, lab in groups])
            ax_h.legend(fontsize=8)
    ax_h.set_yscale("log")
    ax_h.set_xlabel("activation (tokens where it fires)")
    ax_h.set_ylabel("tokens")
    ax_h.set_title(f"{title}: fires on {int(on.sum()):,} of {acts.numel():,} tokens ({on.float().mean():.2%})")
    ax_l.hist(weights.float().numpy(), bins=60, color="0.5")
    ax_l.set_xlabel("logit weight (W_dec[f] @ W_out @ W_U)")
    order = weights.argsort(descending=True)
    top = ", ".join(repr(vocab[i]) for i in order[:n_tokens].tolist())
    bottom = ", ".join(repr(vocab[i]) for i in order[-n_tokens:].flip(0).tolist())
    ax_l.set_title("logit weights", fontsize=10)
    ax_l.text(0.01, -0.3, f"top: {top}\nbottom: {bottom}", transform=ax_l.transAxes, fontsize=8, va="top",
              family="monospace")
    fig.tight_layout()
    return fig


@torch.no_grad()
def prompt_html(model, sae, prompt: str, n_features: int = 3) -> str:
    """A table: each token of ``prompt`` with the ``n_features`` features most active on it."""
    tokens = model.to_tokens(prompt)
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.hook_name, return_type=None)
    f = sae.encode(cache[sae.cfg.hook_name][0].to(sae.W_enc.dtype)).float()
    strs = model.to_str_tokens(tokens[0])
    rows = []
    for p in range(1, len(strs)):
        vals, idx = f[p].topk(n_features)
        cells = " ".join(f"<b>#{i}</b>&nbsp;{v:.2f}" for v, i in zip(vals.tolist(), idx.tolist()) if v > 0)
        rows.append(f"<tr><td style='font-family:monospace;white-space:pre'>{_show(strs[p])}</td>"
                    f"<td>{cells or '(none)'}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def effect_html(str_tokens: list, delta: Tensor, title: str = "") -> str:
    """Tokens 1.. of a row coloured by ``delta[p - 1]``, the change in log P(token p): red if the
    intervention made it less likely, blue if more."""
    scale = float(delta.abs().max()) or 1.0
    spans = [_span(str_tokens[p], _signed(float(delta[p - 1]), scale), f"{float(delta[p - 1]):+.3f}")
             for p in range(1, len(str_tokens))]
    head = f"<div style='font-weight:bold'>{html.escape(title)}</div>" if title else ""
    return head + "<div style='line-height:1.6'>" + "".join(spans) + "</div>"


def top_tokens(weights: Tensor, vocab: list, n: int = 10, largest: bool = True) -> list[tuple[str, float]]:
    vals, idx = weights.topk(n, largest=largest)
    return [(vocab[i], v) for i, v in zip(idx.tolist(), vals.tolist())]


def feature_logit_weights(sae, model, feature: int) -> Tensor:
    """The feature's logit weights on ``model`` (see ``exercises.logit_weights``)."""
    return ex.logit_weights(sae.W_dec.detach().float(), model.W_out[0].detach().float(),
                            model.W_U.detach().float(), feature)
