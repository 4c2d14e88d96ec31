"""Which features made the model predict a token: direct logit attribution through the SAE.

The MLP's output at one position splits exactly into the SAE's pieces:

    mlp_out = x @ W_out + b_out,  x = sum_i f_i W_dec[i] + b_dec + error   (x = hook_post)

and the final LayerNorm, with its scale read from the same run, is linear, so the MLP's direct
contribution to one logit is the sum of each piece's (``exercises.feature_logit_attribution`` for
the features, the same formula for the error and the biases). ``tests/test_ch06_features.py`` checks that
the pieces add up to the contribution of ``hook_mlp_out`` and that every component's direct
contribution, with the LayerNorm's bias and b_U, adds up to the logit itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.features import exercises as ex
from utils.induction import folded_unembed


@dataclass
class MLPLogitAttribution:
    """The MLP's direct contribution to ``logit(target)`` at ``position``, split through the SAE."""

    position: int
    target: int  # tokens[position + 1]
    features: Float[Tensor, "d_sae"]  # one entry per feature; 0 where it is off
    error: float  # the part of hook_post the SAE does not reconstruct, carried through W_out
    bias: float  # b_dec @ W_out + b_out: the same at every position
    total: float  # centre(hook_mlp_out) / scale @ W_U[:, target]
    logit: float  # the model's actual logit for target


def _direct(vector: Tensor, scale: Tensor, W_U_target: Tensor) -> Tensor:
    """A residual-stream vector's direct contribution to one logit, through the final LayerNorm."""
    return ((vector - vector.mean(-1, keepdim=True)) / scale) @ W_U_target


@torch.no_grad()
def mlp_logit_attribution(model, sae, tokens: Int[Tensor, "pos"], position: int) -> MLPLogitAttribution:
    """Split the MLP's direct contribution to the logit of ``tokens[position + 1]`` at ``position``
    into the SAE's features, its error term and the biases (``tokens``: one row, BOS first)."""
    if not 1 <= position < len(tokens) - 1:
        raise ValueError(f"position must be in [1, {len(tokens) - 1}): the SAE never saw BOS, and the last "
                         f"position has no next token")
    names = (sae.cfg.hook_name, "blocks.0.hook_mlp_out", "ln_final.hook_scale")
    logits, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    x = cache[sae.cfg.hook_name][0].float()
    scale = cache["ln_final.hook_scale"][0, :, 0].float()
    W_dec, b_dec = sae.W_dec.detach().float(), sae.b_dec.detach().float()
    W_out, b_out = model.W_out[0].detach().float(), model.blocks[0].mlp.b_out.detach().float()
    W_U = folded_unembed(model).detach().float()
    f = sae.encode(x.to(sae.W_enc.dtype)).float()
    target = int(tokens[position + 1])
    features = ex.feature_logit_attribution(f, W_dec, W_out, W_U, scale, tokens, position)
    error = x[position] - (f[position] @ W_dec + b_dec)
    s, u = scale[position], W_U[:, target]
    return MLPLogitAttribution(
        position=position, target=target, features=features,
        error=float(_direct(error @ W_out, s, u)), bias=float(_direct(b_dec @ W_out + b_out, s, u)),
        total=float(_direct(cache["blocks.0.hook_mlp_out"][0, position].float(), s, u)),
        logit=float(logits[0, position, target]))
