"""Train our SAE (utils.sae) and SAELens's on the same activations; print tokens/s, FVE, L0, GFLOP/s.

    python scripts/bench_saelens.py --saelens-python /tmp/saelens-venv/bin/python        # L1, 409,600 tokens
    export SAELENS_PYTHON=/tmp/saelens-venv/bin/python                                  # or pass it each time
    python scripts/bench_saelens.py --architecture topk                                 # TopK, k = 32
    python scripts/bench_saelens.py --quick                                             # 51,200 tokens: smoke test
    SAELENS_PYTHON=V/bin/python python scripts/bench_saelens.py --tokens 1200000 --threads 2

SAELens (6.x) needs transformer-lens < 4, so it cannot share the course's environment: give it a
venv of its own, torch first so that pip takes the CPU wheel instead of a CUDA one:

    python -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install sae-lens==6.54.12

and pass V/bin/python as --saelens-python (default: $SAELENS_PYTHON).

What runs:
1. Here: gelu-1l's ``blocks.0.mlp.hook_post`` activations, ``--tokens`` of them (rounded down to
   whole batches) from our shuffled ActivationStore on the TRAINING split, plus ``--eval-tokens``
   held-out ones from the validation split (``analysis_tokens``: fixed consecutive windows, BOS
   dropped, as ``evaluate_sae`` uses), all written to one temporary .safetensors file (float32).
   Generation is not timed.
2. Ours: ``train_sae`` on the preset ("cpu" or "cpu-topk") with training_tokens = N and
   resampling OFF (``resample_steps=()``: SAELens 6.x has no resampling), fed those activations
   in file order, 1024 at a time. Timed: the whole ``train_sae`` call (weight init, b_dec
   geometric median on 8192 training rows, the loop and its logging).
3. SAELens: ``scripts/_saelens_child.py`` under the other python, reading the same file and
   feeding the same batches in the same order to SAELens's own ``SAETrainer`` with its
   ``StandardTrainingSAE`` (or ``TopKTrainingSAE``). Timed: SAE construction + ``fit()``.
4. Both SAEs are scored here with the same code (``fraction_variance_explained``, L0, features
   that never fire) on the same held-out activations; the child sends its reconstructions back.
5. GFLOP/s: our L1 step costs ~10·B·D·F FLOP (encoder and decoder forward, the decoder's two
   backward matmuls and the encoder's weight gradient; no gradient w.r.t. the input), so achieved
   GFLOP/s = 10·B·D·F·steps / our training seconds; set beside the measured GFLOP/s of
   ``torch.mm([B, D], [D, F])`` fp32 on this machine (median of 20 after 3 warm-ups, 2·B·D·F FLOP
   each), measured before and after the training runs; the ratio printed is against their mean.
   For TopK the same count is printed, though its step also does a top-k over [B, F].

Same in both: data and order, d_in 512, d_sae 2048, batch 1024, Adam lr 1e-3 betas (0.9, 0.999),
50-step linear lr warm-up then constant, no lr decay; gradient norm clipped to 1.0; L1: lambda 2.0
with a 150-step linear warm-up, squared error summed over d_in and averaged over the batch; TopK:
k = 32; encoder initialised as the decoder's transpose with columns of norm 0.1; no activation
normalisation; fp32; same threads; no resampling of dead features.
Differences left as each library's standard (not removed, not tuned):
- sparsity penalty: ours lambda·Σ f_i with decoder rows held at unit norm (gradient projected,
  rows renormalised every step); SAELens lambda·Σ f_i·||W_dec,i|| with the decoder norms free.
  The two are the same penalty up to how the norm constraint is imposed.
- b_dec: ours starts at the geometric median of 8192 training activations; SAELens's at zero.
- initial decoder: ours Gaussian directions at unit norm; SAELens kaiming-uniform directions at
  norm 0.1 (its encoder is their transpose; ours is 0.1 x the transpose of the unit decoder).
- TopK: SAELens adds its AuxK loss for features dead over 1000 steps (its default window; a run of
  fewer steps never triggers it) and scales pre-activations by decoder norms; ours has no aux loss.
- per-step bookkeeping: ours sums loss/L0/FVE statistics on the device and reads them every 25
  steps; SAELens counts firing features per step (dead-feature mask, frequency scores).

Measured 2026-11-22, idle machine, 1 thread, with utils/sae/cpu_step.py (the step's gradients by
hand into buffers reused every step, fused Adam, the sparse path below 10% non-zeros) and our
gradient clipped to 1.0 as SAELens's is. At EQUAL FVE (L1: 0.867 vs 0.869, at L0 31.5 vs 33.2)
ours is 1.97x SAELens's tokens/s, and our dense step runs at 0.93 of torch.mm:

    arch  implementation  tokens/s   FVE    L0    dead   seconds
    l1    ours            8960       0.867  31.5  0.007   45.7
    l1    SAELens         4540       0.869  33.2  0.008   90.2     ours/SAELens 1.97x
    topk  ours           12233       0.915  32.0  0.153   33.5
    topk  SAELens         4561       0.803  32.0  0.876   89.8     ours/SAELens 2.68x

    our DENSE step (L1, steps 1-100, f 17-49% non-zero): 68.7 GFLOP/s = 0.93 of torch.mm (73.1 / 74.0)
    whole L1 run, dense-equivalent (10·B·D·F per step): 94.0 GFLOP/s = 1.28 of torch.mm
    (Before the reused buffers, same day: L1 8869 tok/s, 1.99x, dense step 0.88; TopK 12051, 2.74x.
    The SAELens side moves by a few % between runs.)

Clipping was the whole FVE gap of the runs below: without it ours reached 0.833 at L0 38.7 (and
0.813 at L0 30.9 with lambda 2.5), with it 0.867 at L0 31.5; SAELens clips by default.

Measured in the session before (same machine), ours WITHOUT gradient clipping, through autograd
with the sparse autograd kernels that utils/sae/model.py had then (below 5% non-zeros; since
replaced by cpu_step), 1 thread, the machine otherwise idle (1-minute load ~1.0 after, which is
this run; the script flags that as contended because it counts the run itself):

    arch  implementation  tokens/s   FVE    L0    dead   seconds
    l1    ours            6522       0.833  38.7  0.008   62.8
    l1    SAELens         4532       0.869  33.2  0.008   90.4     ours/SAELens 1.44x
    topk  ours            8195       0.896  32.0  0.178   50.0
    topk  SAELens         4799       0.803  32.0  0.876   85.4     ours/SAELens 1.71x

    dense-equivalent rate (10·B·D·F per step): L1 68.4 GFLOP/s, 0.89 of torch.mm's 76.7 (83.6 / 69.7);
    TopK 85.9 GFLOP/s, 1.03 of 83.0 (the sparse kernels do less arithmetic than the count assumes).
    The L1 run is dense for its first ~200 steps (L0 falls below 5% of 2048 only then), half of
    this 400-step run; TopK is sparse from the first step.
    Before the sparse kernels (same day, idle): L1 ours 5454 tok/s vs SAELens 4642 (1.18x), 57.2
    GFLOP/s = 0.77 of torch.mm.

Measured 2026-11-21 (AMD EPYC, 2 cores, torch 2.13 CPU, sae-lens 6.54.12), niced, 1 thread,
409,600 tokens (400 steps), 32,768 held-out activations. ALL CONTENDED: another job kept the
1-minute load at 2.9-4.0 on the 2 cores, and ours and SAELens's runs are sequential, so each saw
a different share of the CPU (the matmul rate moved by up to 25% within one run). Read the
tokens/s ratio as rough, not as a measurement to two digits.

    arch  implementation  tokens/s   FVE    L0    dead   seconds   load before/after
    l1    ours            3767       0.833  38.7  0.007  108.7     2.86 / 3.88
    l1    SAELens         2825       0.869  33.2  0.008  145.0       (ours/SAELens 1.33x)
    topk  ours            4118       0.896  32.0  0.173   99.5     3.97 / 4.00
    topk  SAELens         2649       0.803  32.0  0.876  154.6       (ours/SAELens 1.55x)

    our L1 step: achieved 39.5 GFLOP/s; torch.mm 66.7 (before) / 49.1 (after) GFLOP/s -> 0.68
    our TopK step (L1 FLOP count): 43.2 GFLOP/s; torch.mm 49.1 / 45.6 GFLOP/s -> 0.91

At equal tokens SAELens's L1 SAE reached the higher FVE at a lower L0 (0.869 at 33 vs 0.833 at
39); its TopK SAE had 88% of its features dead on the held-out set (its AuxK loss waits for
1000-step-dead features, more steps than this run has), ours 17% (without resampling, which is
off here). Not tuned on either side; the differences listed above are the candidates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from utils.models import load_model
from utils.sae import cpu_step, preset, train_sae
from utils.sae.metrics import fraction_variance_explained
from utils.sae.training import make_store

CHILD = Path(__file__).with_name("_saelens_child.py")


class ReplayStore:
    """Serves fixed activations in order, one batch per ``next_batch()`` (what train_sae asks of a store)."""

    def __init__(self, acts: torch.Tensor, batch_size: int):
        self.acts, self.batch_size, self.d_in = acts, batch_size, acts.shape[1]
        self._position = 0
        self.tokens_processed = None  # no model runs here

    def next_batch(self) -> torch.Tensor:
        batch = self.acts[self._position:self._position + self.batch_size]
        if len(batch) < self.batch_size:
            raise RuntimeError("ReplayStore ran out of activations")
        self._position += self.batch_size
        return batch

    def sample(self, n: int) -> torch.Tensor:
        return self.acts[:n].clone()  # the b_dec init and resampling statistics (not consumed)


@torch.no_grad()
def training_activations(model, cfg, n: int) -> torch.Tensor:
    """n activations from our shuffled ActivationStore on the training split (n a multiple of the batch)."""
    store = make_store(cfg, model, torch.device("cpu"))
    return torch.cat([store.next_batch().clone() for _ in range(n // cfg.batch_size)])


@torch.no_grad()
def held_out_activations(model, hook_name: str, n: int, seq_len: int = 128) -> torch.Tensor:
    """The first n activations (BOS dropped) of the validation split's fixed windows."""
    from utils.data.dataset import analysis_tokens

    tokens = analysis_tokens(seq_len=seq_len, n_seqs=-(-n // (seq_len - 1)), split="val")
    out = []
    for chunk in tokens.split(64):
        _, cache = model.run_with_cache(chunk, names_filter=hook_name, return_type=None)
        out.append(cache[hook_name][:, 1:].reshape(-1, cache[hook_name].shape[-1]))
    return torch.cat(out)[:n].contiguous()


def matmul_gflops(b: int, d: int, f: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median GFLOP/s of torch.mm([b, d], [d, f]) in fp32 (2·b·d·f FLOP per call)."""
    x, w = torch.randn(b, d), torch.randn(d, f)
    for _ in range(warmup):
        torch.mm(x, w)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(x, w)
        times.append(time.perf_counter() - t)
    return 2 * b * d * f / statistics.median(times) / 1e9


def score(x: torch.Tensor, x_hat: torch.Tensor, l0_per_token: torch.Tensor, fired: torch.Tensor) -> dict:
    return {"fve": fraction_variance_explained(x, x_hat).item(), "l0": l0_per_token.float().mean().item(),
            "dead": (fired == 0).float().mean().item()}


@torch.no_grad()
def score_ours(sae, x: torch.Tensor) -> dict:
    x_hat, l0, fired = [], [], torch.zeros(sae.d_sae)
    for chunk in x.split(4096):
        f = sae.encode(chunk)
        x_hat.append(sae.decode(f))
        l0.append((f != 0).sum(-1))
        fired += (f != 0).sum(0)
    return score(x, torch.cat(x_hat), torch.cat(l0), fired)


def run_saelens(python: str, data: Path, out: Path, cfg, threads: int) -> dict:
    """Run the child under SAELens's python; returns its JSON result."""
    cmd = [python, str(CHILD), "--data", str(data), "--out", str(out),
           "--architecture", cfg.architecture, "--d-sae", str(cfg.d_sae), "--l1-coeff", str(cfg.l1_coeff),
           "--k", str(cfg.k), "--lr", str(cfg.lr), "--adam-betas", *map(str, cfg.adam_betas),
           "--lr-warmup-steps", str(cfg.lr_warmup_steps), "--l1-warmup-steps", str(cfg.l1_warmup_steps),
           "--batch-size", str(cfg.batch_size), "--threads", str(threads), "--seed", str(cfg.seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)  # nothing of the course's environment leaks into SAELens's
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("SAELENS_RESULT "):
            return json.loads(line[len("SAELENS_RESULT "):])
    sys.stderr.write(proc.stdout + proc.stderr)
    raise RuntimeError(f"the SAELens child failed (exit {proc.returncode}); its output is above")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saelens-python", default=os.environ.get("SAELENS_PYTHON"),
                        help="python of a venv with sae-lens installed (default: $SAELENS_PYTHON)")
    parser.add_argument("--architecture", choices=("l1", "topk"), default="l1",
                        help='l1: our "cpu" preset; topk: "cpu-topk" (k = 32)')
    parser.add_argument("--tokens", type=int, default=409_600, help="training activations (whole batches)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 51,200 tokens, 8,192 eval tokens")
    parser.add_argument("--eval-tokens", type=int, default=32_768)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, ours and SAELens's")
    args = parser.parse_args(argv)
    if not args.saelens_python:
        parser.error("give --saelens-python PATH or set SAELENS_PYTHON (see the docstring for the venv)")
    if args.quick:
        args.tokens, args.eval_tokens = 51_200, 8_192

    torch.set_num_threads(args.threads)
    # SAELens's trainer clips the gradient norm to 1.0 and has no resampling: ours does the same here.
    cfg = preset("cpu" if args.architecture == "l1" else "cpu-topk", device="cpu", resample_steps=(),
                 grad_clip_norm=1.0, fast_cpu=True)  # fast_cpu: the hand-written CPU step, an opt-in
    n = args.tokens // cfg.batch_size * cfg.batch_size
    cfg = cfg.replace(training_tokens=n)
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"1-min load average before: {load_before:.2f}")
    print(f"config: {json.dumps({k: v for k, v in cfg.to_dict().items() if k != 'notes'})}")

    with tempfile.TemporaryDirectory(prefix="bench_saelens_") as tmp:
        from safetensors.torch import load_file, save_file

        t = time.perf_counter()
        model = load_model(cfg.model_name, device="cpu")
        train = training_activations(model, cfg, n)
        held_out = held_out_activations(model, cfg.hook_name, args.eval_tokens)
        data = Path(tmp) / "activations.safetensors"
        save_file({"train": train, "eval": held_out}, str(data))
        print(f"activations: {len(train):,} training (train split, shuffled) + {len(held_out):,} held-out "
              f"(val split) x {train.shape[1]}, generated in {time.perf_counter() - t:.1f} s (not timed below)")

        mm_before = matmul_gflops(cfg.batch_size, cfg.d_in, cfg.d_sae)

        t = time.perf_counter()
        sae, log = train_sae(cfg, store=ReplayStore(train, cfg.batch_size), progress=False)
        ours_s = time.perf_counter() - t
        ours = score_ours(sae, held_out)

        out = Path(tmp) / "saelens_eval.safetensors"
        theirs_run = run_saelens(args.saelens_python, data, out, cfg, args.threads)
        theirs_eval = load_file(str(out))
        theirs = score(held_out, theirs_eval["x_hat"], theirs_eval["l0"], theirs_eval["fired"])

        mm_after = matmul_gflops(cfg.batch_size, cfg.d_in, cfg.d_sae)
    load_after = os.getloadavg()[0]

    print(f"SAELens {theirs_run['sae_lens']} (torch {theirs_run['torch']}, {theirs_run['torch_threads']} threads); "
          f"its SAE config: {json.dumps(theirs_run['sae_cfg'])}")
    steps = cfg.steps
    rows = [("ours (utils.sae)", n / ours_s, ours, ours_s), ("SAELens", theirs_run["tokens_per_second"], theirs,
                                                             theirs_run["seconds"])]
    print(f"\n{cfg.architecture} SAE, d_in {cfg.d_in}, d_sae {cfg.d_sae}, batch {cfg.batch_size}, {n:,} tokens "
          f"({steps} steps), scored on {len(held_out):,} held-out activations")
    print(f"{'implementation':<18} {'tokens/s':>9} {'FVE':>7} {'L0':>7} {'dead':>6} {'seconds':>8}")
    for name, tps, m, s in rows:
        print(f"{name:<18} {tps:9.0f} {m['fve']:7.3f} {m['l0']:7.1f} {m['dead']:6.3f} {s:8.1f}")
    print(f"ours / SAELens tokens/s: {rows[0][1] / rows[1][1]:.2f}x")

    flop = 10 * cfg.batch_size * cfg.d_in * cfg.d_sae * steps
    achieved = flop / ours_s / 1e9
    mm = statistics.mean([mm_before, mm_after])
    # The dense step alone: the logged intervals in which f had more non-zeros than the sparse path
    # takes (the first ~100 steps here), timed inside train_sae's loop.
    dense = [r for r in log["history"] if r["l0"] / cfg.d_sae >= cpu_step.SPARSE_MAX_DENSITY]
    if dense:
        step_flop = 10 * cfg.batch_size * cfg.d_in * cfg.d_sae
        dense_rate = statistics.median(r["tokens_per_s"] / cfg.batch_size * step_flop / 1e9 for r in dense)
        print(f"our DENSE step (steps 1-{dense[-1]['step']}, f {min(r['l0'] for r in dense) / cfg.d_sae:.0%}-"
              f"{max(r['l0'] for r in dense) / cfg.d_sae:.0%} non-zero; median of {len(dense)} logged intervals): "
              f"{dense_rate:.1f} GFLOP/s = {dense_rate / mm:.2f} of torch.mm")
    print(f"\nour step, 10·B·D·F = {10 * cfg.batch_size * cfg.d_in * cfg.d_sae / 1e9:.2f} GFLOP"
          f"{' (the L1 count; TopK adds a top-k)' if cfg.architecture == 'topk' else ''}: "
          f"achieved {achieved:.1f} GFLOP/s over {ours_s:.1f} s")
    print(f"torch.mm [{cfg.batch_size}, {cfg.d_in}] x [{cfg.d_in}, {cfg.d_sae}] fp32, {torch.get_num_threads()} "
          f"threads: {mm_before:.1f} GFLOP/s before, {mm_after:.1f} after; achieved / matmul = {achieved / mm:.2f}")
    contended = load_before >= 0.5 or load_after >= args.threads + 0.5
    print(f"1-min load average after: {load_after:.2f} (this run counts ~{args.threads}) -> "
          f"{'CONTENDED (another process shared the CPU)' if contended else 'uncontended'}")


if __name__ == "__main__":
    main()
