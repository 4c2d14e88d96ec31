"""Train an SAE preset on gelu-1l's MLP and print its cost and quality.

    python scripts/bench_sae_cpu.py                          # the "cpu" preset, 2 threads
    python scripts/bench_sae_cpu.py --preset cpu-topk
    python scripts/bench_sae_cpu.py --set l1_coeff=2e-3 d_sae=1024     # try other values
    python scripts/bench_sae_cpu.py --save gelu-1l-mlp-l1    # also write utils/assets/saes/NAME.* (fp16)

Targets for the "cpu" preset on a 2-core CPU: training (activation generation included) <= 3
minutes, L0 between 5 and 50, CE loss recovered >= 0.85, dead features < 15%. The wall time
counts from building the activation store (first buffer fill) to the last step; loading the model
and the evaluation are timed separately. The 1-minute load average is printed before and after:
a load near or above the thread count means another process shared the CPU and the time is an
overestimate (the load after the run includes the run's own threads).

Measured 2026-11-21 (AMD EPYC, 2 cores, torch 2.13 CPU). The "cpu" preset now has 819,200 tokens
(800 steps); this run had the machine to itself (load 0.74 before, decaying from an earlier job;
0.99 after, which is this run):

    preset        threads  train wall (CPU)   L0    FVE    CE rec.  dead   dense
    cpu (819k)    1        161 s (160 s)      27.4  0.857  0.944    0.010  0.001   dense matmuls only
    cpu (819k)    1        124 s (124 s)      27.4  0.857  0.944    0.008  0.001   sparse CPU kernels

Measured 2026-11-22, idle, with utils/sae/cpu_step.py (gradients by hand, fused Adam, sparse path
below 10% non-zeros) and the preset's new gradient clipping (norm 1.0); 16.4 s of the 91.7 s is
the activation store running the model (timed alone):

    cpu (819k)    1         92 s (91 s)       23.3  0.875  0.952    0.004  0.000   clip 1.0 (the preset now)
    cpu (819k)    1         96 s (96 s)       23.3  0.875  0.952    0.004  0.000   same, reused buffers (noise)
    cpu (819k)    1         98 s (97 s)       27.4  0.857  0.944    0.010  0.001   no clip (contended: 2 jobs)
    cpu-topk      1        142 s (136 s)      32.0  0.933  0.985    0.171  0.011   clip 1.0 (contended: 2 jobs)
    cpu-topk      1        139 s (133 s)      32.0  0.927  0.982    0.109  0.010   no clip (the preset: fewer dead)

The runs below used the earlier 1.2M-token budget (1171 steps; the bundled gelu-1l-mlp-l1* and
gelu-1l-mlp-topk-k24 SAEs were made that way) and were ALL CONTENDED: another job kept the
1-minute load at 2-5 throughout, and these runs were niced. Evaluation on 131k held-out tokens.

    preset        threads  train wall (CPU)   L0    FVE    CE rec.  dead   dense
    cpu           2        498 s (493 s)      23.3  0.869  0.953    0.019  0.000
    cpu           1        351 s (237 s)      23.3  0.869  0.953    0.019  0.000
    cpu-topk      1        257 s (236 s)      32.0  0.927  0.982    0.117  0.011
    cpu-jumprelu  1        266 s (260 s)      21.1  0.866  0.956    0.000  0.005

Measured 2026-12-03 after the move to SAELens's layout (W_enc [d_in, d_sae], W_dec [d_sae, d_in]),
idle but for the run itself, 1 thread; the quality matches the old layout's rows above:

    cpu (819k)    1         80 s (80 s)       23.3  0.875  0.952    0.004  0.000   fast_cpu (this script's default)
    cpu (819k)    1         97 s (97 s)       23.4  0.875  0.953    0.002  0.000   --set fast_cpu=False (plain step)

The step is matmul-bound (5 matmuls of 2·B·512·2048 FLOP; ~80% of a step's time in a profile),
8.8e12 FLOP for the 819k-token preset (1.26e13 at 1.2M) if every step were dense. Through
utils/sae/cpu_step.py (an opt-in, ``fast_cpu=True``, which this script sets; ``--set fast_cpu=False``
times the plain autograd step) one core runs the dense step at ~0.9 of torch.mm's rate, and once fewer than
10% of f's entries are non-zero (after about 120 steps) it skips f's zeros in 4 of the 5 matmuls.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import time

import torch

from utils.models import load_model
from utils.sae import SAE_DIR, evaluate_sae, preset, save_sae, train_sae


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a plain string, e.g. architecture=topk
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override config fields")
    parser.add_argument("--eval-tokens", type=int, default=131_072)
    parser.add_argument("--save", metavar="NAME", help=f"write the SAE and its metrics to {SAE_DIR}/NAME")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    # The course's hand-written CPU step (utils/sae/cpu_step.py) is an opt-in; these runs use it.
    cfg = preset(args.preset, device="cpu", **{"fast_cpu": True, **parse_overrides(args.set)})
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"1-min load average before: {load_before:.2f}")
    print(f"preset {args.preset!r}: {json.dumps({k: v for k, v in cfg.to_dict().items() if k != 'notes'})}")

    t = time.perf_counter()
    model = load_model(cfg.model_name, device="cpu")
    load_s = time.perf_counter() - t
    wall, cpu = time.perf_counter(), time.process_time()
    sae, log = train_sae(cfg, model=model, progress=not args.quiet)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    t = time.perf_counter()
    metrics = evaluate_sae(sae, model, n_tokens=args.eval_tokens)
    eval_s = time.perf_counter() - t
    load_after = os.getloadavg()[0]

    for record in log["history"][:: max(1, len(log["history"]) // 8)] + log["history"][-1:]:
        print("  step {step:5d}  loss {loss:8.3f}  mse {mse:7.3f}  L0 {l0:7.1f}  FVE {fve:.3f}  "
              "dead {dead_fraction:.3f}  {tokens_per_s:6.0f} tok/s".format(**record))
    if log["resampled"]:
        print("  resampled:", ", ".join(f"{r['n_resampled']} at step {r['step']}" for r in log["resampled"]))
    print(f"train wall {wall:.1f} s (process CPU {cpu:.1f} s), {log['tokens']:,} tokens, "
          f"{log['tokens_per_second']:.0f} tokens/s; model activations generated {log['model_activations']:,}; "
          f"model load {load_s:.1f} s, evaluation {eval_s:.1f} s")
    print(f"eval on {metrics['n_tokens']:,} held-out tokens: L0 {metrics['l0']:.1f}, FVE {metrics['fve']:.3f}, "
          f"CE clean {metrics['ce_clean']:.4f} / SAE {metrics['ce_sae']:.4f} / zero {metrics['ce_zero_ablation']:.4f}, "
          f"CE loss recovered {metrics['ce_loss_recovered']:.3f}, dead {metrics['dead_fraction']:.3f}, "
          f"dense {metrics['dense_fraction']:.3f}")
    # Before the run the load is other processes'; after it, it includes this one (~threads).
    contended = load_before >= 0.5 or load_after >= args.threads + 0.5
    print(f"1-min load average after: {load_after:.2f} (this run counts ~{args.threads}) -> "
          f"{'CONTENDED (another process shared the CPU)' if contended else 'uncontended'}")
    if args.save:
        out = {k: v for k, v in metrics.items() if k != "density"}
        out.update(train_seconds=round(wall, 1), tokens_per_second=round(log["tokens_per_second"]),
                   torch_threads=args.threads, device="cpu", contended=contended)
        path = save_sae(sae, SAE_DIR / args.save, metrics=out, dtype=torch.float16)  # fp16: half the size
        print(f"saved {path}")


if __name__ == "__main__":
    main()
