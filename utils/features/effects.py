"""What a feature DOES: ablate it or clamp it inside the model's forward pass, through a hook on
the activation the SAE was trained on, and read the change in the model's predictions.

Only the feature's own term f_i(x) W_dec[i] is edited; the rest of the activation, including
the part the SAE fails to reconstruct, passes through unchanged, so the effect measured is the
feature's alone. Position 0 (BOS) is left untouched: the SAE never saw it.
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def _edit_hook(sae, feature: int, target):
    """A hook that sets feature ``feature`` to ``target(f)`` (f: its current value) at positions 1.."""
    if not 0 <= feature < sae.d_sae:
        raise ValueError(f"feature must be in [0, {sae.d_sae}), got {feature}")
    direction = sae.W_dec[feature].detach()

    def hook(activation, hook):
        x = activation[:, 1:]
        f = sae.encode(x.to(direction.dtype))[..., feature]
        out = activation.clone()
        out[:, 1:] = x + ((target(f) - f)[..., None] * direction).to(x.dtype)
        return out
    return hook


def ablation_hook(sae, feature: int):
    """Remove the feature: its activation set to 0."""
    return _edit_hook(sae, feature, torch.zeros_like)


def steering_hook(sae, feature: int, value: float):
    """Clamp the feature to ``value`` at every position (where it was off, too)."""
    return _edit_hook(sae, feature, lambda f: torch.full_like(f, float(value)))


@torch.no_grad()
def next_token_logprobs(model, tokens: Int[Tensor, "batch pos"], fwd_hooks=()) -> Float[Tensor, "batch pos-1"]:
    """log P(actual next token) at every position but the last."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def ablation_effect(model, sae, tokens: Int[Tensor, "batch pos"], feature: int,
                    hook_name: str | None = None) -> Float[Tensor, "batch pos-1"]:
    """Change in log P(next token) when the feature is ablated (negative: the feature was helping
    predict that token). Entry [b, p] is about predicting tokens[b, p + 1] from position p."""
    hook_name = hook_name or sae.cfg.hook_name
    clean = next_token_logprobs(model, tokens)
    ablated = next_token_logprobs(model, tokens, [(hook_name, ablation_hook(sae, feature))])
    return ablated - clean


@torch.no_grad()
def logit_effect(model, sae, tokens: Int[Tensor, "batch pos"], feature: int, value: float,
                 hook_name: str | None = None) -> Float[Tensor, "d_vocab"]:
    """Mean change of every token's log-probability over the positions of ``tokens`` when the
    feature is clamped to ``value``: which next tokens steering promotes."""
    hook_name = hook_name or sae.cfg.hook_name
    clean = model(tokens)[:, 1:].float().log_softmax(-1)
    steered = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, steering_hook(sae, feature, value))])
    return (steered[:, 1:].float().log_softmax(-1) - clean).mean((0, 1))


def steered_generate(model, sae, prompt: str, feature: int, value: float, hook_name: str | None = None,
                     **generate_kwargs) -> str:
    """Sample a continuation with the feature clamped to ``value`` at every position."""
    hook_name = hook_name or sae.cfg.hook_name
    return model.generate(prompt, fwd_hooks=[(hook_name, steering_hook(sae, feature, value))], **generate_kwargs)
