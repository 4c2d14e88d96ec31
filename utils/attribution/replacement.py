"""The replacement model of one prompt: the model with its MLPs swapped for transcoders, its
attention patterns and LayerNorm scales frozen at their values on that prompt, and one error node
per (layer, position) holding what the transcoder misses.

    embed[p]      = W_E[t_p] + W_pos[p]                                 (token node p)
    LN(x)[p]      = (x[p] - mean(x[p])) / scale[p] * w + b              (scale FROZEN: linear in x)
    attn_L(x)[q]  = sum_h sum_k P_L[h, q, k] (LN1_L(x)[k] W_V + b_V) W_O + b_O   (P FROZEN: linear)
    mlp_L[p]      = f_L[p] @ W_dec + b_dec + error_L[p]                 (feature and error NODES)
    pre_L[p]      = LN2_L(resid_mid_L)[p] @ W_enc + b_enc               (what an edge into a feature ends at)
    logits[p]     = LN_final(resid_final)[p] @ W_U + b_U

The nodes' values (feature activations f, errors, embeddings) are inputs of this model, not
computed from the residual stream: given them, every pre-activation and logit is an affine
function of them. With the values the real forward pass produced, error_L = mlp_out - transcoder
out, so the MLP outputs are the real ones, every later activation is the real one, and the logits
are the real logits EXACTLY (``frozen_forward`` on ``freeze``'s values; tests/test_ch07_attribution.py).

``freeze`` runs the real model once and records everything; ``frozen_forward`` is the linear
model, run with any node values (an intervention changes one of them).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class FrozenPrompt:
    """One prompt's frozen quantities and node values (per-layer lists; positions include BOS)."""

    tokens: Int[Tensor, "pos"]
    embed: Float[Tensor, "pos d_model"]  # token nodes' values: W_E[t] + W_pos
    patterns: list  # [n_heads, pos, pos] per layer (query, key)
    ln1_scale: list  # [pos] per layer
    ln2_scale: list  # [pos] per layer
    lnf_scale: Tensor  # [pos]
    acts: list  # [pos, d_trans] per layer: transcoder activations (feature nodes' values)
    errors: list  # [pos, d_model] per layer: real MLP out - transcoder out (error nodes' values)
    logits: Tensor  # [pos, d_vocab] of the real model
    model: object
    transcoders: Sequence

    @property
    def n_layers(self) -> int:
        return len(self.patterns)

    def with_nodes(self, acts=None, errors=None, embed=None) -> "FrozenPrompt":
        """A copy with other node values (for interventions in the linear model)."""
        return replace(self, acts=acts if acts is not None else self.acts,
                       errors=errors if errors is not None else self.errors,
                       embed=embed if embed is not None else self.embed)

    def to(self, dtype: torch.dtype) -> "FrozenPrompt":
        cast = lambda v: v.to(dtype) if v.is_floating_point() else v  # noqa: E731
        return replace(self, embed=cast(self.embed), patterns=[cast(p) for p in self.patterns],
                       ln1_scale=[cast(s) for s in self.ln1_scale], ln2_scale=[cast(s) for s in self.ln2_scale],
                       lnf_scale=cast(self.lnf_scale), acts=[cast(a) for a in self.acts],
                       errors=[cast(e) for e in self.errors], logits=cast(self.logits))


@torch.no_grad()
def freeze(model, transcoders: Sequence, tokens) -> FrozenPrompt:
    """Run ``model`` on one prompt (a string or token ids [pos]) and record the replacement model's
    frozen quantities and node values."""
    if model.cfg.normalization_type != "LN" or model.cfg.positional_embedding_type != "standard":
        raise ValueError("the replacement model here expects LayerNorm and standard positions (gelu-2l)")
    if [tc.cfg.layer for tc in transcoders] != list(range(model.cfg.n_layers)):
        raise ValueError("pass one transcoder per MLP layer, in layer order")
    tokens = model.to_tokens(tokens)[0] if isinstance(tokens, str) else torch.as_tensor(tokens).reshape(-1)
    logits, cache = model.run_with_cache(tokens[None])
    L = model.cfg.n_layers
    acts, errors = [], []
    for tc in transcoders:
        x, y = cache[tc.cfg.hook_in][0], cache[tc.cfg.hook_out][0]
        y_hat, f = tc(x.to(tc.W_enc.dtype))
        acts.append(f.to(x.dtype))
        errors.append(y - y_hat.to(x.dtype))
    return FrozenPrompt(
        tokens=tokens.cpu(), embed=(cache["hook_embed"] + cache["hook_pos_embed"])[0],
        patterns=[cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(L)],
        ln1_scale=[cache[f"blocks.{layer}.ln1.hook_scale"][0, :, 0] for layer in range(L)],
        ln2_scale=[cache[f"blocks.{layer}.ln2.hook_scale"][0, :, 0] for layer in range(L)],
        lnf_scale=cache["ln_final.hook_scale"][0, :, 0], acts=acts, errors=errors, logits=logits[0],
        model=model, transcoders=list(transcoders))


def frozen_layernorm(x: Float[Tensor, "pos d"], scale: Float[Tensor, "pos"], w: Tensor, b: Optional[Tensor] = None
                     ) -> Float[Tensor, "pos d"]:
    """LayerNorm with its scale fixed: centre each row, divide by the frozen scale, then w (and b)."""
    out = (x - x.mean(-1, keepdim=True)) / scale[:, None] * w
    return out if b is None else out + b


def frozen_attention(x: Float[Tensor, "pos d"], block, pattern: Float[Tensor, "head pos pos"],
                     ln1_scale: Tensor, dtype=None) -> Float[Tensor, "pos d"]:
    """One attention layer with its patterns (and its LayerNorm's scales) frozen."""
    a, ln = block.attn, block.ln1
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    v = torch.einsum("kd,hde->khe", frozen_layernorm(x, ln1_scale, cast(ln.w), cast(ln.b)), cast(a.W_V)) + cast(a.b_V)
    z = torch.einsum("hqk,khe->qhe", pattern, v)
    return torch.einsum("qhe,hed->qd", z, cast(a.W_O)) + cast(a.b_O)


@torch.no_grad()
def frozen_forward(fp: FrozenPrompt) -> dict:
    """The replacement model on ``fp``'s node values: {"pre": [pos, d_trans] per layer (transcoder
    pre-activations), "resid_mid": per layer, "logits": [pos, d_vocab]}. Runs in ``fp``'s dtype."""
    model, dtype = fp.model, fp.embed.dtype
    cast = lambda t: t.to(dtype)  # noqa: E731
    resid, pre, mids = fp.embed, [], []
    for layer, (block, tc) in enumerate(zip(model.blocks, fp.transcoders)):
        resid = resid + frozen_attention(resid, block, fp.patterns[layer], fp.ln1_scale[layer], dtype)
        mids.append(resid)
        x = frozen_layernorm(resid, fp.ln2_scale[layer], cast(block.ln2.w), cast(block.ln2.b))
        pre.append(x @ cast(tc.W_enc) + cast(tc.b_enc))
        resid = resid + fp.acts[layer] @ cast(tc.W_dec) + cast(tc.b_dec) + fp.errors[layer]
    final = frozen_layernorm(resid, fp.lnf_scale, cast(model.ln_final.w), cast(model.ln_final.b))
    return {"pre": pre, "resid_mid": mids, "logits": final @ cast(model.W_U) + cast(model.b_U)}
