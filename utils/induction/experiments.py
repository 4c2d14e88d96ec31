"""Chapter 03's experiments: the graded references run on a model.

1. copying: ``ov_weights`` (the arguments of the eigenvalue exercises), ``random_init_copy`` (the
   untrained baseline), ``copying_summary``
2. induction: ``ablated_induction_loss_drop`` (the loss drop with heads ablated through hooks);
   where attn-only-2l's induction heads came from: ``training_report`` (its training log),
   ``synthetic_share``, ``TEXT_ONLY_RUNS`` (what text-only runs did, measured) and
   ``plot_training_trajectory`` (the log, every synthetic window shaded)
3. composition: ``attn_weights``, ``ln_folded_attn_weights``, ``random_composition_scores``,
   ``random_composition_baseline``
4. patching: ``corrupted_first_copy`` (the corrupted run's tokens), ``folded_unembed`` (W_U with the
   final LayerNorm's weight folded in, also used by chapter 06), ``head_patching_table``,
   ``residual_patching_table``, ``residual_hook_names``
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import FactoredMatrix

from utils.induction.copying import (
    ablate_heads,
    composition_score,
    copying_score,
    full_ov_circuit_eigenvalues,
    induction_loss_drop,
    per_token_loss,
    self_top_k_fraction,
)
from utils.induction.patching import patched_head_outputs, patched_residual_positions
from utils.models.evaluation import induction_report, repeated_random_tokens
from utils.tensors import require_ndim

# --------------------------------------------------------------------------- 1. copying


def ov_weights(model, layer: int = 0) -> dict:
    """{W_E, W_V, W_O, W_U} of one layer, detached: the arguments of the functions above, e.g.
    ``full_ov_circuit_eigenvalues(**ov_weights(model, 0))``. W_V and W_O are [n_heads, ...].

    For layer 0 of an attention-only shortformer model this is exactly the OV circuit the model
    runs (its values read the token embedding alone). For a later layer it is the circuit of the
    DIRECT path, token embedding -> head -> unembedding, ignoring what earlier layers add."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers})")
    return dict(W_E=model.W_E.detach(), W_V=model.W_V.detach()[layer], W_O=model.W_O.detach()[layer],
                W_U=model.W_U.detach())


def random_init_copy(model, seed: int = 0):
    """A freshly initialised model of the same configuration (same shapes, init scale, device,
    dtype and tokenizer): the baseline that says what "no training" looks like."""
    from utils.models import HookedTinyTransformer

    cfg = dataclasses.replace(model.cfg, seed=seed)
    fresh = HookedTinyTransformer(cfg, tokenizer=getattr(model, "tokenizer", None))
    return fresh.to(device=model.W_E.device, dtype=model.W_E.dtype).eval()


@torch.no_grad()
def copying_summary(model, layer: int = 0, k: int = 5) -> dict:
    """Per head of one layer: the eigenvalue copying score and the self-top-k fraction."""
    w = ov_weights(model, layer)
    return {"copying_score": copying_score(full_ov_circuit_eigenvalues(**w)).tolist(),
            f"self_top_{k}": self_top_k_fraction(**w, k=k).tolist()}


# --------------------------------------------------------------------------- 2. induction


@torch.no_grad()
def ablated_induction_loss_drop(model, heads: Sequence[tuple[int, int]] = (), seq_len: int = 50, batch: int = 32,
                                seed: int = 0, mean: bool = False) -> float:
    """The induction loss drop (``induction_loss_drop``) on ``repeated_random_tokens`` with the
    listed (layer, head) pairs ablated through hooks on ``blocks.L.attn.hook_z``.

    With no heads this is ``utils.induction.induction_report(...)["loss_drop"]``; with every head
    of an attention-only model ablated it is exactly 0 (each prediction then depends on the current
    token alone, and both halves predict the same tokens from the same tokens).
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"no head ({layer}, {head}) in a model with {model.cfg.n_layers} layers of "
                             f"{model.cfg.n_heads} heads")
        by_layer.setdefault(int(layer), []).append(int(head))

    def hook_for(layer_heads):
        return lambda z, hook: ablate_heads(z, layer_heads, mean=mean)

    tokens = repeated_random_tokens(model, seq_len, batch, seed).to(model.W_E.device)
    hooks = [(f"blocks.{layer}.attn.hook_z", hook_for(hs)) for layer, hs in sorted(by_layer.items())]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return induction_loss_drop(per_token_loss(logits, tokens), seq_len)


# Runs of attn-only-2l's preset on the course's text with no synthetic rows. They are not the bundled
# model's history (that is in attn-only-2l.train.json); they are recorded here, as measured, because
# they say why the bundled model needed synthetic rows. Both ran the course trainer, so their scores
# are the training log's (utils.models.evaluation.trajectory_point): held-out loss and
# in-context-learning score on 256 held-out rows, the second-copy loss on BOS, r, r filling the
# context (n = 63), and the best layer-0 previous-token and layer-1 induction scores on such rows.
TEXT_ONLY_RUNS = (
    {"name": "CPU, text only",
     "source": "utils/models/train.py, the attn-only-2l preset's comment (a CPU run, batch 32)",
     "batch_size": 32, "seq_len": 128,
     "trajectory": [{"step": 4750, "best_previous_token_score": 0.16, "best_induction_score": 0.01}]},
    {"name": "GPU, text only, 10x the tokens",
     "source": "2026-12-04 on an NVIDIA H200: python -m utils.models.train attn-only-2l --device cuda --no-save "
               "--steps 40000 --set 'synthetic_schedule=[]' --set decay_steps=null --set lr=0.002 "
               "--set batch_size=64 --set eval_every=2000 (stopped by a time limit after step 24000)",
     "batch_size": 64, "seq_len": 128,
     "trajectory": [
         {"step": 2000, "val_loss": 3.307, "icl_score": -0.498, "second_copy_loss": 14.4,
          "best_previous_token_score": 0.139, "best_induction_score": None},
         {"step": 8000, "val_loss": 3.163, "icl_score": -0.465, "second_copy_loss": 17.9,
          "best_previous_token_score": 0.198, "best_induction_score": 0.009},
         {"step": 16000, "val_loss": 3.177, "icl_score": -0.428, "second_copy_loss": 20.2,
          "best_previous_token_score": 0.222, "best_induction_score": 0.013},
         {"step": 24000, "val_loss": 3.190, "icl_score": -0.403, "second_copy_loss": 21.3,
          "best_previous_token_score": 0.228, "best_induction_score": 0.015},
     ]},
)


def training_report(name: str = "attn-only-2l", model_dir=None) -> dict:
    """The training report a bundled model ships with (``NAME.train.json``): ``train_config``
    (``synthetic_schedule`` included), ``tokens_seen`` (text tokens), ``synthetic_tokens`` and the
    logged ``history``."""
    from utils.models.loading import MODEL_DIR

    path = (model_dir or MODEL_DIR) / f"{name}.train.json"
    return json.loads(path.read_text())


def induction_summary(model, seq_len: int = 50, batch: int = 32) -> dict:
    """Repeated random tokens (BOS, r, r; r of ``seq_len`` ids drawn from the model's own
    vocabulary): mean loss on each copy, and the best previous-token head of layer 0 and the best
    induction head of the last layer. Works for any tokenizer: only token ids are used."""
    report = induction_report(model, seq_len=seq_len, batch=batch)
    last = model.cfg.n_layers - 1
    return {"d_vocab": model.cfg.d_vocab, "loss_first_copy": report["loss_first_half"],
            "loss_second_copy": report["loss_second_half"],
            "best_previous_token_score": max(report["layers"][0]["previous_token_score"]),
            "best_induction_score": max(report["layers"][last]["induction_score"])}


def research_model_comparison(model, name: str = "attn-only-2l", local_dir=None) -> dict:
    """``induction_summary`` of ``model`` and of Neel Nanda's research checkpoint ``name`` (trained
    on natural text and code only). Offline, ``load_pretrained`` raises ConnectionError at once;
    ``local_dir`` reads a downloaded copy instead."""
    from utils.models.loading import load_pretrained

    research = load_pretrained(name, local_dir=local_dir, device="cpu")
    return {"course": induction_summary(model), "research": induction_summary(research)}


def synthetic_share(report: dict) -> float:
    """The fraction of all training tokens that were synthetic rows (0 for a text-only run)."""
    synthetic = report.get("synthetic_tokens", 0)
    return synthetic / (synthetic + report["tokens_seen"])


def plot_training_trajectory(report: dict, baseline_icl: Optional[float] = None,
                             highlight: Optional[tuple[int, int, str]] = None):
    """Four panels of a run's logged ``history`` against the training step: the best previous-token
    and induction scores, the second-copy loss on repeated random tokens, the held-out text loss and
    the held-out in-context-learning score. Every window of the ``synthetic_schedule`` is shaded
    (darker where every row is synthetic); ``highlight`` = (first, last, label) marks one more
    stretch; a dotted line marks where the learning rate drops. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    history, cfg = report["history"], report["train_config"]
    steps = [p["step"] for p in history]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), sharex=True)
    axes[0].plot(steps, [p["best_previous_token_score"] for p in history], marker=".", label="best previous-token")
    axes[0].plot(steps, [p["best_induction_score"] for p in history], marker=".", label="best induction")
    axes[0].legend(fontsize=8)
    panels = (("second_copy_loss", "second-copy loss, random tokens (nats)"),
              ("val_loss", "held-out text loss (nats)"), ("icl_score", "held-out text ICL score (nats)"))
    for ax, (key, title) in zip(axes[1:], panels):
        ax.plot(steps, [p[key] for p in history], marker=".", color="black")
        ax.set_title(title, fontsize=10)
    axes[0].set_title("head scores", fontsize=10)
    if baseline_icl is not None:
        axes[3].axhline(baseline_icl, color="tab:red", linestyle="--", label="attn-only-1l, final")
        axes[3].legend(fontsize=8)
    drop = next((p["step"] for p, q in zip(history, history[1:]) if q["lr"] < 0.5 * p["lr"]), None)
    legend = []
    for first, end, rows in cfg.get("synthetic_schedule") or ():
        full = rows >= cfg["batch_size"]
        for ax in axes:
            ax.axvspan(first, end, color="gray", alpha=0.35 if full else 0.15, linewidth=0)
        label = "all rows synthetic" if full else f"{rows} of {cfg['batch_size']} rows synthetic"
        if label not in [patch.get_label() for patch in legend]:
            legend.append(Patch(color="gray", alpha=0.35 if full else 0.15, label=label))
    if highlight is not None:
        first, last, label = highlight
        for ax in axes:
            ax.axvspan(first, last, color="tab:orange", alpha=0.2, linewidth=0)
        legend.append(Patch(color="tab:orange", alpha=0.2, label=label))
    if drop is not None:
        for ax in axes:
            ax.axvline(drop, color="gray", linestyle=":", linewidth=1)
        legend.append(plt.Line2D([], [], color="gray", linestyle=":", label=f"learning rate drops (step {drop})"))
    for ax in axes:
        ax.set_xlabel("training step")
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# --------------------------------------------------------------------------- 3. composition


def attn_weights(model) -> dict:
    """{W_Q, W_K, W_V, W_O} stacked over layers, detached: ``composition_scores(**attn_weights(m), kind="K")``."""
    return {name: getattr(model, name).detach() for name in ("W_Q", "W_K", "W_V", "W_O")}


def ln_folded_attn_weights(model) -> dict:
    """``attn_weights`` with each layer's LayerNorm weight folded into the matrices that read its
    output: W_Q, W_K and W_V of layer l become diag(w_l) W (w_l: ``blocks.l.ln1.w``). What LayerNorm
    does besides (centring, dividing by each position's scale, its bias) is left out. Without
    LayerNorm this is ``attn_weights`` itself."""
    weights = attn_weights(model)
    if model.cfg.normalization_type != "LN":
        return weights
    w = torch.stack([block.ln1.w.detach() for block in model.blocks])[:, None, :, None]  # [layer, 1, d_model, 1]
    return {**weights, **{name: w * weights[name] for name in ("W_Q", "W_K", "W_V")}}


def random_composition_scores(d_model: int, d_head: int, n_samples: int = 1000, seed: int = 0,
                              ) -> Float[torch.Tensor, "n_samples"]:
    """Composition scores of pairs of independent random rank-d_head matrices, each a Gaussian
    [d_model, d_head] times a Gaussian [d_head, d_model] (the shape of an OV or QK matrix).

    What "no relation" looks like: such a W_A is invariant in distribution under W_A -> W_A R for
    any rotation R, and averaging ||W_A R W_B||^2 over rotations gives ||W_A||^2 ||W_B||^2 / d_model,
    so E[score^2] = 1 / d_model exactly: unrelated heads still score about 1/sqrt(d_model) (0.09
    for d_model = 128), not 0.
    """
    if min(d_model, d_head, n_samples) < 1:
        raise ValueError("d_model, d_head and n_samples must be positive")
    g = torch.Generator().manual_seed(seed)
    factors = [torch.randn(n_samples, *shape, generator=g, dtype=torch.float64)
               for shape in ((d_model, d_head), (d_head, d_model)) * 2]
    W_A = FactoredMatrix(factors[0], factors[1])
    W_B = FactoredMatrix(factors[2], factors[3])
    return composition_score(W_A, W_B).float()


def random_composition_baseline(d_model: int, d_head: int, n_samples: int = 1000, seed: int = 0,
                                ) -> tuple[float, float]:
    """(mean, standard deviation) of ``random_composition_scores``: compare a head pair's score
    with mean + a few std before calling it composition."""
    scores = random_composition_scores(d_model, d_head, n_samples, seed)
    return float(scores.mean()), float(scores.std()) if n_samples > 1 else 0.0


# --------------------------------------------------------------------------- 4. patching


def corrupted_first_copy(tokens: Int[torch.Tensor, "batch pos"], seq_len: int, d_vocab: int,
                         seed: int = 0) -> Int[torch.Tensor, "batch pos"]:
    """``tokens`` (BOS, r, r) with the first copy replaced by fresh uniformly random tokens s.
    No s_i is BOS or any token of the row's r, so no r_j occurs twice."""
    require_ndim(tokens, "tokens", 2)
    if tokens.shape[1] != 1 + 2 * seq_len:
        raise ValueError(f"tokens must be BOS + 2 x seq_len = {1 + 2 * seq_len} long; got {tokens.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        used = set(tokens[b].tolist())  # BOS included
        fresh = [t for t in torch.randperm(d_vocab, generator=g).tolist() if t not in used][:seq_len]
        out[b, 1:seq_len + 1] = torch.tensor(fresh, dtype=tokens.dtype)
    return out


def folded_unembed(model) -> Float[torch.Tensor, "d_model d_vocab"]:
    """W_U with the final LayerNorm's weight folded in (diag(w) W_U); W_U itself without one."""
    ln = getattr(model, "ln_final", None)
    return model.W_U if ln is None else ln.w[:, None] * model.W_U


def _run_patched(model, tokens, hook_name: str, value: torch.Tensor) -> torch.Tensor:
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: value)])


@torch.no_grad()
def head_patching_table(model, clean_cache, corrupted_cache, corrupted_tokens,
                        metric: Callable[[torch.Tensor], float]) -> Float[torch.Tensor, "layer head"]:
    """metric(logits of the corrupted run with one head's output patched from the clean run), for
    every head; ``metric`` is normalised (0 corrupted, 1 clean)."""
    table = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        patched = patched_head_outputs(clean_cache, corrupted_cache, layer)
        for h in range(model.cfg.n_heads):
            table[layer, h] = metric(_run_patched(model, corrupted_tokens, f"blocks.{layer}.attn.hook_z", patched[h]))
    return table


@torch.no_grad()
def residual_patching_table(model, clean_cache, corrupted_cache, corrupted_tokens, metric,
                            hook_names: Sequence[str]) -> Float[torch.Tensor, "hook pos"]:
    """metric(logits with the residual stream at one hook and one position patched from the clean
    run), for every hook in ``hook_names`` and every position."""
    n_pos = corrupted_tokens.shape[1]
    table = torch.zeros(len(hook_names), n_pos)
    for i, name in enumerate(hook_names):
        patched = patched_residual_positions(clean_cache, corrupted_cache, name)
        for p in range(n_pos):
            table[i, p] = metric(_run_patched(model, corrupted_tokens, name, patched[p]))
    return table


def residual_hook_names(model) -> list[str]:
    """The residual stream before each layer and after the last: where position patching looks."""
    last = model.cfg.n_layers - 1
    pre = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    return pre + [f"blocks.{last}.hook_resid_post"]
