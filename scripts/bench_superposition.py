"""Time the chapter-04 workload: 10 instances of the n=20, m=5 toy model, 10k steps at batch 1024.

    python scripts/bench_superposition.py                 # torch threads 2 and 1
    python scripts/bench_superposition.py --threads 1 --steps 2000
    python scripts/bench_superposition.py --fast          # the opt-in hand-written gradients

Target (issue 6, set for the hand-written gradients, now opt-in as ``--fast``): <= 15 s on a
2-core CPU; the default, plain autograd (the reference), costs about 1.4x that. Prints wall-clock and
process CPU time per thread count; CPU time above wall time means the threads ran in parallel, wall
time well above CPU time means the machine was busy with something else. Seeded: the trained weights, and so the
features-represented line, are the same on every run with the same thread count.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from utils import superposition as sp


def run(threads: int, steps: int, batch_size: int, seed: int, fast: bool = False) -> dict:
    torch.set_num_threads(threads)
    model = sp.ToyModel(sp.ToyConfig(n_features=20, d_hidden=5, n_instances=10),
                        feature_probability=sp.sweep_probabilities(10, 1e-3)[:, None],
                        importance=sp.decaying_importance(20, 0.7), seed=seed)
    sp.train(model, steps=20, batch_size=batch_size, seed=seed, fast=fast)  # warm-up: allocator, thread pool
    model = sp.ToyModel(model.cfg, model.feature_probability, model.importance, seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    history = sp.train(model, steps=steps, batch_size=batch_size, seed=seed, fast=fast)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"threads": threads, "wall_s": wall, "cpu_s": cpu, "ms_per_step": 1e3 * wall / steps,
            "represented": sp.n_represented(model.W).tolist(), "final_loss": history[-1].sum().item()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="hand-written gradients (utils/superposition/fast.py)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads by default")
    print(f"10 instances x (n=20, m=5), {args.steps} steps, batch {args.batch_size}, seed {args.seed}, "
          f"{'hand-written gradients' if args.fast else 'autograd'}")
    for threads in args.threads:
        r = run(threads, args.steps, args.batch_size, args.seed, args.fast)
        print(f"threads={r['threads']}: {r['wall_s']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU, "
              f"{r['ms_per_step']:.3f} ms/step; features represented per instance {r['represented']}, "
              f"final loss {r['final_loss']:.5f}")


if __name__ == "__main__":
    main()
