"""Time utils.sae's DENSE training step on any device, against that device's measured matmul rate.

    python scripts/bench_sae_step.py --device cuda                 # d_in 512, d_sae 8192, batch 8192
    python scripts/bench_sae_step.py --device cpu --d-sae 2048 --batch 1024 --threads 1

A step costs ~10·B·D·F FLOP (encoder and decoder forward, the decoder's two backward matmuls, the
encoder's weight gradient). This script runs ``train_sae`` itself on random non-negative
activations kept on the device (no model runs, so only the step is timed), with lambda = 0 so that
about half of f stays non-zero and the CPU step keeps its dense path. Each logged interval's
tokens/s is read from the training log (the log reads a statistic back from the device, so a GPU
interval ends synchronised); the first interval (warm-up, kernel selection) is dropped and the
median of the rest is reported as tokens/s and as GFLOP/s = 10·B·D·F·steps/s, beside the median
rate of ``torch.mm([B, D], [D, F])`` in fp32 on the same device (2·B·D·F FLOP per call).

Measured 2026-12-04 on an NVIDIA H200 (torch 2.11.0+cu130, fp32, TF32 off), the defaults:

    device  d_in  d_sae  batch   tokens/s   GFLOP/s   torch.mm   fraction
    cuda    512   8192   8192    976,125    40,942    47,697     0.86

Measured 2026-11-22 on the CPU (AMD EPYC, 2 cores, idle; no GPU has been lent to this work
yet, so the default GPU sizes have not been timed):

    device  threads  d_in  d_sae  batch   tokens/s   GFLOP/s   torch.mm   fraction   f non-zero
    cpu     1        512   2048   1024    6,300      66.1      72.3       0.91       >= 61%
    (5,552 tok/s, 0.85, before cpu_step reused its buffers between steps)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from utils.sae import SAEConfig, train_sae


class RandomStore:
    """Random non-negative activations already on the device, served in a cycle of ``pool`` batches."""

    def __init__(self, d_in: int, batch_size: int, device: torch.device, pool: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [torch.randn(batch_size, d_in, generator=g).relu().to(device) for _ in range(pool)]
        self.d_in, self.batch_size, self._i = d_in, batch_size, 0
        self.tokens_processed = None

    def next_batch(self) -> torch.Tensor:
        self._i += 1
        return self.batches[self._i % len(self.batches)]

    def sample(self, n: int) -> torch.Tensor:
        return torch.cat(self.batches)[:n]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(b: int, d: int, f: int, device: torch.device, repeats: int = 20) -> float:
    """Median GFLOP/s of torch.mm([b, d], [d, f]) in fp32 on ``device`` (after 3 warm-up calls)."""
    x, w = torch.randn(b, d, device=device), torch.randn(d, f, device=device)
    for _ in range(3):
        torch.mm(x, w)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        torch.mm(x, w)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * b * d * f / statistics.median(times) / 1e9


def measure(d_in: int, d_sae: int, batch: int, device: str, intervals: int = 6, steps_per_interval: int = 10) -> dict:
    """tokens/s and GFLOP/s of the dense step, and torch.mm's GFLOP/s, at these sizes on ``device``."""
    dev = torch.device(device)
    if intervals < 2:
        raise ValueError("need at least 2 intervals: the first is a warm-up and is dropped")
    steps = intervals * steps_per_interval
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=batch, training_tokens=batch * steps, l1_coeff=0.0,
                    lr_warmup_steps=0, buffer_size=2 * batch, b_dec_init="mean", b_dec_init_samples=batch,
                    resample_inputs=batch, log_every=steps_per_interval, device=device,
                    fast_cpu=True)  # on a CPU, the course's hand-written step (opt-in); ignored on a GPU
    mm_before = matmul_gflops(batch, d_in, d_sae, dev)
    _, log = train_sae(cfg, store=RandomStore(d_in, batch, dev), progress=False)
    mm_after = matmul_gflops(batch, d_in, d_sae, dev)
    timed = log["history"][1:]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in timed)
    step_gflop = 10 * batch * d_in * d_sae / 1e9
    gflops = tokens_per_s / batch * step_gflop
    mm = statistics.mean([mm_before, mm_after])
    return {"device": str(dev), "threads": torch.get_num_threads(), "d_in": d_in, "d_sae": d_sae, "batch": batch,
            "tokens_per_s": tokens_per_s, "gflops": gflops, "matmul_gflops": mm, "fraction": gflops / mm,
            "l0_fraction": min(r["l0"] for r in timed) / d_sae, "timed_steps": len(timed) * steps_per_interval}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--intervals", type=int, default=6, help="logged intervals; the first is dropped")
    parser.add_argument("--steps-per-interval", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.d_in, args.d_sae, args.batch, args.device, args.intervals, args.steps_per_interval)
    if r["device"].startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}, TF32 matmuls allowed: {torch.backends.cuda.matmul.allow_tf32}")
    print(f"dense SAE step on {r['device']} ({r['threads']} CPU threads), d_in {r['d_in']}, d_sae {r['d_sae']}, "
          f"batch {r['batch']}; median over {r['timed_steps']} steps, f >= {r['l0_fraction']:.0%} non-zero")
    print(f"  {r['tokens_per_s']:,.0f} tokens/s = {r['gflops']:.1f} GFLOP/s (10·B·D·F per step); "
          f"torch.mm {r['matmul_gflops']:.1f} GFLOP/s; fraction {r['fraction']:.2f}")
    return r


if __name__ == "__main__":
    main()
