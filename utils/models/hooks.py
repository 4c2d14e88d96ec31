"""Hook functions for TransformerLens-style hook points: chapter 00's reference hooks.

A hook is called as ``hook_fn(activation, hook=hook_point)`` while the model runs; ``hook.name`` is
the hook point's dotted name (``blocks.0.attn.hook_z``). Returning None keeps the activation (with
any in-place edit the hook made); returning a tensor replaces it for the rest of the forward pass.
Extra arguments are bound with ``functools.partial``:

    cache = {}
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", partial(cache_hook, cache=cache))])
"""
from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint


def cache_hook(activation: torch.Tensor, hook: HookPoint, cache: dict) -> None:
    """Store a copy of ``activation`` in ``cache`` under the hook's name. ``detach`` drops the
    autograd graph; ``clone`` gives the copy its own memory, so a later hook that edits the
    activation in place (an ablation) cannot change what was stored."""
    cache[hook.name] = activation.detach().clone()


def zero_head_hook(z: Float[torch.Tensor, "batch pos head d_head"], hook: HookPoint,
                   head: int) -> Float[torch.Tensor, "batch pos head d_head"]:
    """Zero-ablate one head at ``blocks.L.attn.hook_z``: its output z (and so its contribution
    z @ W_O to the residual stream) is zero at every position; the other heads are untouched."""
    z = z.clone()
    z[:, :, head] = 0.0
    return z


def zero_in_place(activation: torch.Tensor, hook: HookPoint) -> None:
    """An intervention that edits the activation in place and returns nothing (TransformerLens then
    carries on with the edited tensor). Chapter 00 runs it after a caching hook at the same hook
    point, which shows whether the cache kept its own copy."""
    activation.zero_()
