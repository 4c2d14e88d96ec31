"""What chapter 01's exercises need, read from a model: a head's inputs, weights and cached
outputs, and the keyword arguments of ``path_logits`` (with the labels of its paths axis)."""
from __future__ import annotations

import torch
from jaxtyping import Int


def path_names(n_heads: int) -> list[str]:
    """Labels for the paths axis of ``path_logits``."""
    return ["direct"] + [f"head {h}" for h in range(n_heads)] + ["biases"]


def path_inputs(model, tokens: Int[torch.Tensor, "batch pos"]) -> dict:
    """Keyword arguments for ``path_logits`` read from ``model`` (patterns from its cache).

    Only a 1-layer, attention-only, LayerNorm-free model with shortformer positions expands into
    exactly these paths; anything else raises ValueError.
    """
    cfg = model.cfg
    if cfg.n_layers != 1 or not cfg.attn_only or cfg.normalization_type is not None:
        raise ValueError("the path expansion here is for 1-layer attention-only models without LayerNorm")
    if cfg.positional_embedding_type != "shortformer":
        raise ValueError("with standard positions W_pos sits in the residual stream and adds paths; "
                         "use a shortformer model")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return dict(tokens=tokens, A=cache["blocks.0.attn.hook_pattern"], W_E=model.W_E.detach(),
                W_V=model.W_V[0].detach(), W_O=model.W_O[0].detach(), W_U=model.W_U.detach(),
                b_V=model.b_V[0].detach(), b_O=model.b_O[0].detach(), b_U=model.b_U.detach())


def head_inputs(model, tokens: Int[torch.Tensor, "batch pos"], head: int, layer: int = 0) -> dict:
    """What one head of ``model`` sees and holds on ``tokens``: its query/key input (the residual
    stream, plus W_pos for shortformer models), its value input, its weights, and the model's own
    ``pattern``, ``z`` and ``result`` for that head (from the cache)."""
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head must be in [0, {model.cfg.n_heads}), got {head}")
    if model.cfg.normalization_type is not None:
        raise ValueError("head_inputs reads hook_resid_pre, which a LayerNorm model normalises first")
    pre = f"blocks.{layer}."
    previous = model.blocks[layer].attn.use_attn_result
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(previous)
    v_input = cache[pre + "hook_resid_pre"]
    qk_input = v_input + cache["hook_pos_embed"] if model.cfg.positional_embedding_type == "shortformer" else v_input
    weights = {m: getattr(model, m)[layer, head].detach() for m in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
    return dict(qk_input=qk_input, v_input=v_input, **weights,
                pattern=cache[pre + "attn.hook_pattern"][:, head], z=cache[pre + "attn.hook_z"][:, :, head],
                result=cache[pre + "attn.hook_result"][:, :, head])
