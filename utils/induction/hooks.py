"""Chapter 03's hook exercises: functions a forward pass calls on ``blocks.L.attn.hook_z``, and the
in-context-learning score of held-out text with heads ablated through them.

A hook is called as ``hook_fn(z, hook=...)`` by ``model.run_with_hooks(tokens, fwd_hooks=[(name,
hook_fn)])``; extra arguments are bound beforehand (``functools.partial(zero_ablation_hook,
heads=[1, 3])``). ``z`` is ``[batch, pos, head, d_head]``: each head's attention-weighted values,
before ``W_O``. Every hook here returns a NEW tensor and leaves ``z`` alone: the forward pass goes
on with what the hook returns, and an edit in place would also change any cached copy of ``z`` and
the tensor autograd saved for the backward pass.

Graded references: ``zero_ablation_hook``, ``mean_ablation_hook``, ``patch_head_position_hook``
and ``ablated_icl_score`` (the last needs a model; the notebook's version uses its ``model2``).
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from jaxtyping import Float, Int

from utils.induction.copying import per_token_loss
from utils.models.evaluation import in_context_learning_score
from utils.tensors import require_ndim


def zero_ablation_hook(z: Float[torch.Tensor, "batch pos head d_head"], hook, heads: Sequence[int],
                       ) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``z`` with the listed heads set to 0 at every position: they add nothing to the residual stream."""
    require_ndim(z, "z", 4)
    out = z.clone()
    out[:, :, list(heads)] = 0.0
    return out


def mean_ablation_hook(z: Float[torch.Tensor, "batch pos head d_head"], hook, heads: Sequence[int],
                       ) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``z`` with each listed head replaced by its own mean over the batch and the positions (one
    [d_head] vector per head): the head keeps adding its average output and moves no information."""
    require_ndim(z, "z", 4)
    heads = list(heads)
    out = z.clone()
    out[:, :, heads] = z[:, :, heads].mean(dim=(0, 1), keepdim=True)
    return out


def patch_head_position_hook(z: Float[torch.Tensor, "batch pos head d_head"], hook,
                             clean_z: Float[torch.Tensor, "batch pos head d_head"], head: int, pos: int,
                             ) -> Float[torch.Tensor, "batch pos head d_head"]:
    """The corrupted run's ``z`` with ONE head at ONE position (every row of the batch) taken from
    the clean run's ``clean_z``: activation patching at its finest grain."""
    require_ndim(z, "z", 4)
    if clean_z.shape != z.shape:
        raise ValueError(f"clean_z {tuple(clean_z.shape)} and z {tuple(z.shape)} differ")
    out = z.clone()
    out[:, pos, head] = clean_z[:, pos, head]
    return out


def heads_by_layer(heads: Sequence[Sequence[int]], n_layers: int, n_heads: int) -> dict[int, list[int]]:
    """{layer: [head, ...]} from (layer, head) pairs, refusing a head the model does not have."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"no head ({layer}, {head}) in a model with {n_layers} layers of {n_heads} heads")
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


@torch.no_grad()
def ablated_icl_score(model, tokens: Int[torch.Tensor, "batch 128"], heads: Sequence[Sequence[int]],
                      mean: bool = True) -> float:
    """The in-context-learning score (``in_context_learning_score``: loss at positions 100-127
    minus 5-15) of ``model`` on ``tokens`` with the listed (layer, head) pairs mean-ablated (or,
    ``mean=False``, zero-ablated) through hooks on ``blocks.L.attn.hook_z``. No heads: the model's
    own score."""
    hook = mean_ablation_hook if mean else zero_ablation_hook
    hooks = [(f"blocks.{layer}.attn.hook_z", functools.partial(hook, heads=hs))
             for layer, hs in sorted(heads_by_layer(heads, model.cfg.n_layers, model.cfg.n_heads).items())]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return in_context_learning_score(per_token_loss(logits, tokens))
