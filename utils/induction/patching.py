"""Activation patching and direct logit attribution on repeated random tokens.

Chapter 03's graded references for its causal sections. The experiment:

    clean       BOS, r_1 .. r_n, r_1 .. r_n     the second copy is predictable by induction
    corrupted   BOS, s_1 .. s_n, r_1 .. r_n     same second copy, but the first copy is fresh tokens

At second-copy position n + j (token r_j, j = 1 .. n-1) induction predicts r_(j+1) in the clean
run; in the corrupted run the token after the earlier r_j does not exist, and the token an
induction head would copy from the same place is s_(j+1). The logit difference
logit(r_(j+1)) - logit(s_(j+1)), averaged over those positions, measures "the model is copying
from the clean first copy". Patching one activation from the clean run into the corrupted run and
normalising the metric to 0 (corrupted) .. 1 (clean) says how much of the behaviour that activation
carries.

The graded functions take and return plain tensors (so they can be graded in a sandbox). Making
the corrupted tokens (``corrupted_first_copy``), folding the final LayerNorm into W_U
(``folded_unembed``) and the ``*_table`` sweeps that run the model with them are in
``utils.induction.experiments``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from jaxtyping import Float, Int

from utils.tensors import require_ndim


def induction_logit_diff(
    logits: Float[torch.Tensor, "batch pos d_vocab"],
    clean_tokens: Int[torch.Tensor, "batch pos"],
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    seq_len: int,
) -> float:
    """Mean over the batch and the second-copy positions n + j (j = 1 .. n-1) of
    logits[n + j, r_(j+1)] - logits[n + j, s_(j+1)], where r_(j+1) = clean_tokens[n + j + 1] (what
    the clean first copy says comes next) and s_(j+1) = corrupted_tokens[j + 1] (what the corrupted
    first copy has in the same place)."""
    require_ndim(logits, "logits", 3)
    n = seq_len
    if logits.shape[1] != 1 + 2 * n or clean_tokens.shape != corrupted_tokens.shape \
            or clean_tokens.shape != logits.shape[:2]:
        raise ValueError(f"logits [batch, 1 + 2 * seq_len, vocab] and both token tensors [batch, 1 + 2 * seq_len] "
                         f"with seq_len={n}; got {tuple(logits.shape)}, {tuple(clean_tokens.shape)}, "
                         f"{tuple(corrupted_tokens.shape)}")
    queries = logits[:, n + 1:2 * n]  # positions n+1 .. 2n-1 hold r_1 .. r_(n-1)
    right = clean_tokens[:, n + 2:2 * n + 1]  # r_2 .. r_n, read from the clean second copy
    wrong = corrupted_tokens[:, 2:n + 1]  # s_2 .. s_n
    diff = queries.gather(-1, right[..., None]) - queries.gather(-1, wrong[..., None])
    return float(diff.mean())


def normalised_patching_metric(patched: float, clean: float, corrupted: float) -> float:
    """(patched - corrupted) / (clean - corrupted): 0 when patching changed nothing, 1 when it
    restored the clean behaviour completely (it can leave [0, 1] either way)."""
    if clean == corrupted:
        raise ValueError("the clean and corrupted runs give the same metric: there is nothing to restore")
    return (patched - corrupted) / (clean - corrupted)


def patched_head_outputs(
    clean_cache: Mapping[str, torch.Tensor],
    corrupted_cache: Mapping[str, torch.Tensor],
    layer: int,
) -> Float[torch.Tensor, "head batch pos head d_head"]:
    """For each head h of ``layer``: the corrupted run's ``blocks.{layer}.attn.hook_z`` with head h's
    slice replaced by the clean run's. Entry [h] is what a hook returns to patch head h alone; the
    caches are left untouched."""
    name = f"blocks.{layer}.attn.hook_z"
    clean, corrupted = clean_cache[name], corrupted_cache[name]
    require_ndim(clean, name, 4)
    if clean.shape != corrupted.shape:
        raise ValueError(f"{name}: clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} differ")
    n_heads = clean.shape[2]
    out = corrupted.unsqueeze(0).repeat(n_heads, 1, 1, 1, 1)
    for h in range(n_heads):
        out[h, :, :, h] = clean[:, :, h]
    return out


def patched_residual_positions(
    clean_cache: Mapping[str, torch.Tensor],
    corrupted_cache: Mapping[str, torch.Tensor],
    hook_name: str,
) -> Float[torch.Tensor, "pos batch pos d_model"]:
    """For each position p: the corrupted run's residual stream at ``hook_name`` with position p
    (every row of the batch) replaced by the clean run's. The caches are left untouched."""
    clean, corrupted = clean_cache[hook_name], corrupted_cache[hook_name]
    require_ndim(clean, hook_name, 3)
    if clean.shape != corrupted.shape:
        raise ValueError(f"{hook_name}: clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} differ")
    n_pos = clean.shape[1]
    out = corrupted.unsqueeze(0).repeat(n_pos, 1, 1, 1)
    for p in range(n_pos):
        out[p, :, p] = clean[:, p]
    return out


def head_logit_attribution(
    results: Float[torch.Tensor, "batch pos component d_model"],
    final_scale: Float[torch.Tensor, "batch pos 1"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    seq_len: int,
) -> Float[torch.Tensor, "component"]:
    """Direct logit attribution on BOS, r, r: each component's (e.g. each head's ``hook_result``)
    contribution to the logit of the correct next token, averaged over the second-copy predictions
    (positions n + 1 .. 2n - 1, predicting r_2 .. r_n).

    The final LayerNorm is linear once its scale is known: it subtracts the mean over d_model and
    divides by ``final_scale`` (``ln_final.hook_scale`` of the same run), so each component's
    contribution is centre(result) / scale @ W_U[:, next token]. ``W_U`` must have the LayerNorm's
    weight folded in (``folded_unembed``); its bias and b_U are the same for every component and
    are left out.
    """
    require_ndim(results, "results", 4)
    n = seq_len
    if results.shape[1] != 1 + 2 * n or tokens.shape != results.shape[:2]:
        raise ValueError(f"results [batch, 1 + 2 * seq_len, component, d_model] and tokens [batch, 1 + 2 * seq_len] "
                         f"with seq_len={n}; got {tuple(results.shape)}, {tuple(tokens.shape)}")
    centred = results - results.mean(dim=-1, keepdim=True)
    normed = centred / final_scale[:, :, None]  # [batch, pos, component, d_model]
    queries = normed[:, n + 1:2 * n]  # positions n+1 .. 2n-1
    directions = W_U.T[tokens[:, n + 2:2 * n + 1]]  # [batch, n-1, d_model]: unembedding of r_2 .. r_n
    return torch.einsum("bqcd,bqd->c", queries, directions) / (queries.shape[0] * queries.shape[1])
