"""Train a sparse autoencoder on a model's activations: ``train_sae(preset("cpu"))``.

One step, as in Bricken et al. (2023):

    x            = next shuffled batch of activations            (ActivationStore)
    x̂, f, loss  = sae(x, λ_t)                                    (λ warms up linearly from 0)
    loss.backward()                                               (opt-in, ``fast_cpu``: utils.sae.cpu_step)
    remove each decoder row's gradient component along the row
    clip the gradient's norm (if ``grad_clip_norm`` is set)
    Adam step at lr_t                                            (linear warm-up, optional linear decay)
    renormalise decoder rows (feature directions) to unit norm

(a TopK SAE with ``aux_k`` set adds the AuxK loss of the latents that have not fired for
``aux_dead_steps`` steps, ``SparseAutoencoder.aux_loss``), and at the configured steps, features
that did not fire during the last ``resample_window`` steps are resampled (``utils.sae.resampling``).
Everything per step is whole-tensor work; statistics are accumulated on the device and read back
(``.item()``, a GPU sync) once per logged interval.

    python -m utils.sae cpu --out /tmp/my_sae     # train a preset from the shell, evaluate, save
    python -m utils.sae cpu --out /tmp/my_sae --fast-cpu   # ... through the hand-written CPU step
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from utils.sae import cpu_step
from utils.sae.activations import ActivationStore
from utils.sae.config import PRESETS, SAEConfig, preset
from utils.sae.model import SparseAutoencoder
from utils.sae.resampling import resample_dead_features_
from utils.sae.saving import save_sae


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: cuda if available, else mps, else cpu; anything else is taken as given."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_at(step: int, cfg: SAEConfig) -> float:
    """Linear warm-up over ``lr_warmup_steps``, flat, then linear decay to 0 over the last
    ``lr_decay_fraction`` of training (0: no decay)."""
    lr = cfg.lr
    if step < cfg.lr_warmup_steps:
        lr *= (step + 1) / cfg.lr_warmup_steps
    decay_steps = int(cfg.lr_decay_fraction * cfg.steps)
    if decay_steps and step >= cfg.steps - decay_steps:
        lr *= (cfg.steps - step) / decay_steps
    return lr


def sparsity_coeff_at(step: int, cfg: SAEConfig) -> float:
    """λ rises linearly from 0 over ``l1_warmup_steps`` (the features form before they are squeezed)."""
    if step < cfg.l1_warmup_steps:
        return cfg.sparsity_coeff * (step + 1) / cfg.l1_warmup_steps
    return cfg.sparsity_coeff


def make_store(cfg: SAEConfig, model=None, device: Optional[torch.device] = None) -> ActivationStore:
    """The activation store a config asks for (loading the model by name if none is given)."""
    device = device or pick_device(cfg.device)
    if model is None:
        from utils.models import load_model

        model = load_model(cfg.model_name, device=str(device))
    return ActivationStore(model, cfg.hook_name, batch_size=cfg.batch_size, buffer_size=cfg.buffer_size,
                           seq_len=cfg.seq_len, model_batch_size=cfg.model_batch_size, device=device,
                           seed=cfg.seed)


def train_sae(cfg: SAEConfig, model=None, store=None, progress: bool = True) -> tuple[SparseAutoencoder, dict]:
    """Train an SAE as configured; returns ``(sae, log)``.

    ``store`` may be any object with ``next_batch()``, ``sample(n)`` and ``d_in`` (an
    ``ActivationStore``, or synthetic data in tests); by default one is built from ``model``, which
    is loaded by ``cfg.model_name`` if not given. ``log["history"]`` has one record per
    ``cfg.log_every`` steps: mean loss, mse, sparsity penalty, L0, fraction of variance explained
    (on the training batches), the fraction of features dead over the last ``resample_window``
    steps, lr, λ, and tokens/s of the interval (activation generation included).
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    if store is None:
        store = make_store(cfg, model, device)
    if store.d_in != cfg.d_in:
        raise ValueError(f"the store serves {store.d_in}-dimensional activations, but cfg.d_in = {cfg.d_in}")
    if getattr(store, "batch_size", cfg.batch_size) != cfg.batch_size:
        raise ValueError(f"the store serves batches of {store.batch_size}, but cfg.batch_size = {cfg.batch_size}")

    sae = SparseAutoencoder(cfg).to(device)
    sae.init_b_dec_(store.sample(cfg.b_dec_init_samples).to(device))
    # The fused Adam (one kernel for all four parameters) takes a sixth of the time of the
    # per-tensor loop on a CPU (2.5 vs 16 ms a step at d_sae 2048); MPS keeps the default.
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                 fused=device.type in ("cpu", "cuda"))
    use_cpu_step = cfg.fast_cpu and cpu_step.applies(sae, device)  # opt-in; autograd is the reference
    workspace: dict = {}  # cpu_step's buffers, reused every step
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # resampling draws
    resample_at = set(cfg.resample_steps)

    steps_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
    # Running sums over a logged interval: loss, mse, sparsity, active count, residual, variance.
    # Kept on the device so a step never waits for the GPU; float64 except on MPS, which lacks it.
    stats_dtype = torch.float32 if device.type == "mps" else torch.float64
    stats = torch.zeros(6, dtype=stats_dtype, device=device)
    history, resampled = [], []
    interval_start, interval_steps = time.perf_counter(), 0
    bar = tqdm(range(cfg.steps), disable=not progress, desc=f"SAE {cfg.architecture}", unit="step")
    for step in bar:
        x = store.next_batch()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        coeff = sparsity_coeff_at(step, cfg)

        if use_cpu_step:  # the same gradients as below, by hand (see utils.sae.cpu_step)
            losses, n_active, fired = cpu_step.step_gradients_(sae, x, coeff, workspace)
        elif cfg.aux_k is not None:  # AuxK: the latents silent for aux_dead_steps reconstruct the error
            x_hat, f, losses = sae(x, sparsity_coeff=coeff, dead=steps_since_fired >= cfg.aux_dead_steps)
            losses["loss"].backward()
            with torch.no_grad():
                active = f != 0
                n_active, fired = active.sum(), active.any(0)
        else:
            x_hat, f, losses = sae(x, sparsity_coeff=coeff)
            losses["loss"].backward()
            with torch.no_grad():
                active = f != 0
                n_active, fired = active.sum(), active.any(0)
        sae.remove_parallel_decoder_grad_()
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()

        with torch.no_grad():
            steps_since_fired += 1
            steps_since_fired.masked_fill_(fired, 0)
            stats += torch.stack([losses["loss"].detach(), losses["mse"].detach(), losses["sparsity"].detach(),
                                  n_active / len(x), losses["mse"].detach() * len(x),
                                  (x - x.mean(0)).pow(2).sum()]).to(stats_dtype)
        interval_steps += 1

        if step + 1 in resample_at:
            dead = steps_since_fired >= cfg.resample_window
            n = resample_dead_features_(sae, dead, store.sample(cfg.resample_inputs).to(device), optimizer,
                                        sparsity_coeff=coeff, generator=generator)
            steps_since_fired[dead] = 0  # a fresh window to prove themselves
            resampled.append({"step": step + 1, "n_resampled": n})
            bar.write(f"step {step + 1}: resampled {n} dead features ({n / cfg.d_sae:.1%})")

        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            loss, mse, sparsity, active_mean, residual, variance = stats.tolist()
            loss, mse, sparsity, active_mean = (v / interval_steps for v in (loss, mse, sparsity, active_mean))
            seconds = time.perf_counter() - interval_start
            window = min(cfg.resample_window, step + 1)
            record = {
                "step": step + 1, "tokens": (step + 1) * cfg.batch_size,
                "loss": loss, "mse": mse, "sparsity": sparsity, "l0": active_mean,
                "fve": 1 - residual / variance,
                "dead_fraction": (steps_since_fired >= window).float().mean().item(),
                "lr": lr_at(step, cfg), "sparsity_coeff": coeff,
                "tokens_per_s": interval_steps * cfg.batch_size / seconds,
            }
            history.append(record)
            bar.set_postfix(l0=f"{active_mean:.1f}", fve=f"{record['fve']:.3f}", dead=f"{record['dead_fraction']:.2f}")
            stats.zero_()
            interval_start, interval_steps = time.perf_counter(), 0

    seconds = time.perf_counter() - start
    tokens = cfg.steps * cfg.batch_size
    log = {
        "config": cfg.to_dict(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "steps": cfg.steps,
        "tokens": tokens,
        "model_activations": getattr(store, "tokens_processed", None),
        "seconds": seconds,  # store construction (first buffer fill) included
        "tokens_per_second": tokens / seconds,
        "history": history,
        "resampled": resampled,
    }
    return sae.eval(), log


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.sae",
                                     description="Train an SAE preset on its model's activations, evaluate, save.")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, help="path stem for STEM.safetensors + STEM.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--fast-cpu", action="store_true",
                        help="on a CPU, the hand-written training step of utils/sae/cpu_step.py (opt-in)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from utils.models import load_model
    from utils.sae.metrics import evaluate_sae

    cfg = preset(args.preset, device=args.device, fast_cpu=args.fast_cpu)
    model = load_model(cfg.model_name, device=str(pick_device(cfg.device)))
    sae, log = train_sae(cfg, model=model)
    metrics = {k: v for k, v in evaluate_sae(sae, model, n_tokens=args.eval_tokens).items() if k != "density"}
    metrics.update(train_seconds=round(log["seconds"], 1), tokens_per_second=round(log["tokens_per_second"]),
                   device=log["device"], torch_threads=log["torch_threads"])
    save_sae(sae, args.out, metrics=metrics)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
