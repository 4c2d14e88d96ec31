"""Time the LM trainer's plain step and its fast step (``train(..., fast=True)``) beside torch.mm.

    OMP_NUM_THREADS=1 python scripts/bench_lm_step.py              # every configuration, one thread
    python scripts/bench_lm_step.py --presets gelu-1l --rounds 20

The configurations: the four presets, and ``ch03-induction``, chapter 03's "train your own induction
heads" run (``utils.induction.training``: d_model 64, 256 tokens, batch 32 x 64 synthetic rows).

For each preset, at its training shape (batch 32 x 128 tokens, float32), the two steps of
``utils.models.train.training_step`` (forward, backward, gradient clipping, AdamW) run in
alternation on the same batches, each on its own copy of the model, and between them torch.mm runs
on two references: 1024 x 1024 squares (the rate the trainer logs as ``torch_mm_gflops``) and the
unembedding's shape, [rows, d_model] @ [d_model, d_vocab] (the product that dominates a step).
Alternating makes the steps and the references share whatever else the machine is doing. The
step's FLOPs are ``step_flops`` (the plain model's matrix products, counted by torch), the same
number for both steps, so GFLOP/s = step_flops / median step time. Times are CPU time of this
thread (``time.thread_time``: on a shared machine it leaves out the time other processes hold the
core) and, beside it, wall time.

Measured 2026-12-04 on the course's CPU machine (AMD EPYC, 2 cores, nearly idle: load average
0.8-1.4; torch 2.13.0+cpu, one thread, float32):

    preset         GFLOP/step  plain s  fast s  plain  fast  mm1024  mm_unemb  speed-up  plain/mm  fast/mm
    attn-only-1l        15.20    0.410   0.211   37.1  72.0    98.1      56.2      1.94      0.38     0.73
    attn-only-2l        22.45    0.584   0.330   38.4  68.1    97.6      56.7      1.77      0.39     0.70
    gelu-1l             18.42    0.447   0.243   41.2  75.7   100.4      56.7      1.84      0.41     0.75
    gelu-2l             24.06    0.560   0.332   42.9  72.5    98.5      57.2      1.69      0.44     0.74
    ch03-induction       0.80    0.026   0.019   30.3  42.1    99.2      96.1      1.39      0.31     0.42

Under heavy load (load average 10-12, wall time 3-4x the CPU time) the fast step's ratio to torch.mm
was 0.68-0.74 for the presets. ch03-induction's products are 64 wide: a step is 19 ms, mostly
per-operation overhead rather than arithmetic, so its ratio to a 1024-wide torch.mm is lower; 2000
steps take about 40 s.

(GFLOP/s columns: plain step, fast step, torch.mm on 1024 squares and on the unembedding's shape;
the issue's 41 against 188 GFLOP/s was a whole training run, evals included, on two threads.)
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from utils.data.dataset import batches
from utils.induction.training import induction_schedule, schedule_config
from utils.models.train import PRESETS, make_optimizer, step_flops, synthetic_rows, training_step
from utils.models.transformer import HookedTinyTransformer

CONFIGS = {**PRESETS, "ch03-induction": schedule_config(induction_schedule())}


def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def bench_preset(name: str, rounds: int, warmup: int) -> dict:
    cfg = copy.deepcopy(CONFIGS[name])
    torch.manual_seed(cfg.seed)
    models = {"plain": HookedTinyTransformer(cfg.model)}
    models["fast"] = copy.deepcopy(models["plain"])
    optims = {kind: make_optimizer(model, cfg) for kind, model in models.items()}
    for optim in optims.values():
        for group in optim.param_groups:
            group["lr"] = cfg.lr * 0.1
    flops = step_flops(models["plain"], cfg.batch_size, cfg.seq_len)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.synthetic_only:
        data = [synthetic_rows(cfg.batch_size, cfg.seq_len, cfg, generator) for _ in range(4)]
    else:
        stream = batches("train", cfg.batch_size, cfg.seq_len, generator)
        data = [next(stream) for _ in range(4)]
    rows, d, v = cfg.batch_size * (cfg.seq_len - 1), cfg.model.d_model, cfg.model.d_vocab
    square = torch.randn(1024, 1024), torch.randn(1024, 1024)
    unembed = torch.randn(rows, d), torch.randn(d, v)
    calls = {
        "plain": lambda i: training_step(models["plain"], optims["plain"], data[i % len(data)], fast=False),
        "fast": lambda i: training_step(models["fast"], optims["fast"], data[i % len(data)], fast=True),
        "mm_square": lambda i: torch.mm(*square),
        "mm_unembed": lambda i: torch.mm(*unembed),
    }
    work = {"plain": flops, "fast": flops, "mm_square": 2 * 1024 ** 3, "mm_unembed": 2 * rows * d * v}
    times = {key: [] for key in calls}
    for i in range(warmup + rounds):
        for key, call in calls.items():
            repeats = 1 if key in ("plain", "fast") else 5
            cpu, wall = zip(*(timed(lambda: call(i)) for _ in range(repeats)))
            if i >= warmup:
                times[key].append((statistics.median(cpu), statistics.median(wall)))
    out = {"preset": name, "step_gflop": flops / 1e9}
    for key, pairs in times.items():
        cpu = statistics.median(p[0] for p in pairs)
        out[key] = {"cpu_s": cpu, "wall_s": statistics.median(p[1] for p in pairs), "gflops": work[key] / cpu / 1e9}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps of each kind per preset")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU; "
          f"median of {args.rounds} alternating rounds; GFLOP/s from CPU time (wall time beside it); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = (f"{'preset':14s} {'GFLOP/step':>10s} {'plain s':>8s} {'(wall)':>7s} {'fast s':>7s} {'(wall)':>7s} "
              f"{'plain':>6s} {'fast':>6s} {'mm1024':>6s} {'mm_unemb':>8s} {'speed-up':>8s} "
              f"{'plain/mm':>8s} {'fast/mm':>7s} {'fast/mm_unemb':>13s}")
    print(header + "\n" + " " * 45 + "(GFLOP/s)")
    for name in args.presets:
        r = bench_preset(name, args.rounds, args.warmup)
        plain, fast, sq, un = r["plain"], r["fast"], r["mm_square"], r["mm_unembed"]
        print(f"{name:14s} {r['step_gflop']:10.2f} {plain['cpu_s']:8.3f} {plain['wall_s']:7.3f} {fast['cpu_s']:7.3f} "
              f"{fast['wall_s']:7.3f} {plain['gflops']:6.1f} {fast['gflops']:6.1f} {sq['gflops']:6.1f} "
              f"{un['gflops']:8.1f} {plain['cpu_s'] / fast['cpu_s']:8.2f} {plain['gflops'] / sq['gflops']:8.2f} "
              f"{fast['gflops'] / sq['gflops']:7.2f} {fast['gflops'] / un['gflops']:13.2f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
