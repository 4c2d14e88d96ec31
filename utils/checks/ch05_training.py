"""Checks for chapter 05, exercise 9: the student's own SAE training loop, graded on its OUTCOME.

The student's ``train_my_sae(seed, d_sae, steps, batch_size, l1_coeff, lr, resample_steps,
resample_window)`` builds the course's activation buffer and starting weights from the seed
(``utils.sae.loop``), trains with their own pieces (forward, loss, parallel-gradient removal,
renormalisation, resampling) and returns the trained parameters and Adam's momentum of W_dec. The
check calls it once per case with a seed it chooses (torch's global generator seeded too), then,
in its own process, measures the result on held-out text and compares it with BANDS that every
correct loop reaches from any seed (tests/test_ch05_training_checks.py runs two differently written
correct loops and every catalogued broken loop).

A broken loop is named by its outcome's SIGNATURE, read from the returned tensors alone, first
match wins: decoder rows off the unit sphere (no renormalisation), hundreds of features on per token
(the L1 penalty on the decoder weights or on the reconstruction: in a run this short the two look
alike), a collapsed reconstruction at full sparsity (gradients accumulated: no zero_grad), Adam's
decoder momentum pointing along the rows (the parallel gradient kept), and features still exactly
at the dead start ``utils.sae.loop.initial_parameters`` gives a quarter of the dictionary (never
resampled). Resampling at EVERY step (the schedule ignored, the window kept) is not among them:
in this run it leaves fewer features dead than the schedule does, at the same FVE, so no band
should fail it. Each Misconception's "implementation" returns its signature, the verdict a loop with
that mistake gets; an outcome outside the bands that no signature explains is described in numbers.

The loop runs in the student's process (under the grader too); what is measured runs here. The last
run of each default case is kept, so the notebook inspects the SAE the check trained
(``trained_run``) instead of training a second time.
"""
from __future__ import annotations

import time
from functools import lru_cache

import torch

from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, default_case, run_check
from utils.sae.loop import DEAD_BIAS

CHAPTER = "05"

# The run every case makes (the seed is the case's): 122,880 activations, about 15-18 s of one CPU core
# with the reference loop (autograd), so tests can afford every catalogued broken loop.
SETUP = {"d_sae": 1024, "steps": 240, "batch_size": 512, "l1_coeff": 3.0, "lr": 2e-3,
         "resample_steps": [80, 160], "resample_window": 40}
D_IN = 512  # gelu-1l's d_mlp
HELD_OUT_TOKENS = 16_384  # validation activations the outcome is measured on

# Bands every correct loop reaches from any seed (measured: see tests/test_ch05_training_checks.py).
FVE_MIN = 0.72
L0_MAX = 40.0
DEAD_MAX = 0.35  # of the held-out tokens, some revived features have not fired on any yet (see the notebook)
FVE_COLLAPSED = 0.5  # far below any sensible loop: the reconstruction itself has failed
NORM_TOL = 1e-3  # max | ||W_dec[i]|| - 1 |: the decoder is renormalised after every step
RADIAL_MAX = 0.35  # mean |cos(exp_avg[i], W_dec[i])|: Adam's decoder momentum is tangent to the rows

PASSED = "every band met"
NORMS = "decoder rows not at unit norm"
RADIAL = "decoder momentum along the rows"
DENSE = "hundreds of features per token"
NEVER_REVIVED = "features still at their dead start"
COLLAPSED = "sparse, but the reconstruction collapsed"
KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "W_dec_exp_avg")


def _inputs(seed: int) -> dict:
    return {"seed": seed, **SETUP}


@lru_cache(maxsize=1)
def held_out() -> torch.Tensor:
    """HELD_OUT_TOKENS activations of gelu-1l's MLP on validation text (BOS positions dropped)."""
    from utils.data.dataset import analysis_tokens
    from utils.sae.loop import HOOK_NAME, training_model

    model = training_model()
    rows = -(-HELD_OUT_TOKENS // 127)
    _, cache = model.run_with_cache(analysis_tokens(seq_len=128, n_seqs=rows), names_filter=HOOK_NAME)
    return cache[HOOK_NAME][:, 1:].reshape(-1, D_IN)[:HELD_OUT_TOKENS].float().clone()


def _tensors(out, d_sae: int) -> dict:
    """The returned dict, as float32 tensors of the right shapes, or CheckFailure saying what is wrong."""
    shapes = {"W_enc": (D_IN, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, D_IN), "b_dec": (D_IN,),
              "W_dec_exp_avg": (d_sae, D_IN)}
    if not isinstance(out, dict) or not all(k in out for k in KEYS):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise CheckFailure(f"train_my_sae: return a dict with the keys {list(KEYS)} (the trained parameters and "
                           f"optimizer.state[W_dec]['exp_avg']); you returned {got}.")
    tensors = {}
    for k in KEYS:
        t = out[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shapes[k]:
            what = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckFailure(f"train_my_sae: {k!r} should be a tensor of shape {shapes[k]}, got {what}.")
        t = t.detach().float().cpu()
        if not torch.isfinite(t).all():
            raise CheckFailure(f"train_my_sae: {k!r} contains NaN or inf: the training diverged.")
        tensors[k] = t
    return tensors


@torch.no_grad()
def measure(out: dict, d_sae: int = SETUP["d_sae"]) -> dict:
    """The outcome of a run on the held-out activations: l0, fve, dead (fraction of features that never
    fire there), norm_error, radial (mean |cosine| between Adam's decoder momentum and the rows),
    and never_revived (features whose encoder bias is still exactly the dead start's)."""
    p = _tensors(out, d_sae)
    x = held_out()
    f = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    x64 = x.double()
    fve = 1 - ((x64 - x_hat.double()).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum()).item()
    norms = p["W_dec"].norm(dim=1)
    m = p["W_dec_exp_avg"]
    moving = m.norm(dim=1) > 1e-12
    cos = (m * p["W_dec"]).sum(1) / (m.norm(dim=1) * norms).clamp_min(1e-12)
    return {
        "l0": (f > 0).sum(-1).float().mean().item(),
        "fve": fve,
        "dead": ((f > 0).sum(0) == 0).float().mean().item(),
        "norm_error": (norms - 1).abs().max().item(),
        "radial": cos[moving].abs().mean().item() if moving.any() else 0.0,
        "never_revived": int((p["b_enc"] == DEAD_BIAS).sum()),
    }


def verdict(m: dict) -> str:
    """PASSED, or the first catalogued signature the outcome shows, or "outside the bands"."""
    if m["norm_error"] > NORM_TOL:
        return NORMS
    if m["l0"] > L0_MAX:
        return DENSE
    if m["fve"] < FVE_COLLAPSED:
        return COLLAPSED
    if m["radial"] > RADIAL_MAX:
        return RADIAL
    if m["never_revived"] > 0:
        return NEVER_REVIVED
    if m["fve"] < FVE_MIN or m["dead"] > DEAD_MAX:
        return "outside the bands"
    return PASSED


def summary(m: dict) -> str:
    return (f"L0 {m['l0']:.1f} (band <= {L0_MAX:g}), FVE {m['fve']:.3f} (>= {FVE_MIN:g}), dead {m['dead']:.3f} "
            f"(<= {DEAD_MAX:g}), max | ||W_dec[i]|| - 1 | {m['norm_error']:.1e} (<= {NORM_TOL:g}), "
            f"decoder momentum along the rows {m['radial']:.3f} (<= {RADIAL_MAX:g})")


_RUNS: dict = {}  # default case -> {"params", "outcome"}: what the notebook inspects


def trained_run(case: int = 0) -> dict:
    """{"params": the tensors your loop returned, "outcome": measure()'s numbers, "seconds": how long
    your loop ran} of the run the check made for default case ``case`` (run the check first)."""
    if case not in _RUNS:
        raise RuntimeError("no training run to show yet: run the check cell, check.train_my_sae(train_my_sae), "
                           "first (it trains the SAE with your loop)")
    return _RUNS[case]


def _graded(fn):
    """Call the student's loop once (torch seeded with the case's seed), measure, return the verdict;
    a failing verdict raises with its explanation and the run's numbers."""
    if not callable(fn):
        return fn

    def run(**setup):
        torch.manual_seed(setup["seed"])
        start = time.perf_counter()
        out = fn(**setup)
        seconds = time.perf_counter() - start
        m = measure(out, setup["d_sae"])
        case = default_case(TRAIN_LOOP.name, setup["seed"])
        if case is not None:
            _RUNS[case] = {"params": _tensors(out, setup["d_sae"]), "outcome": m, "seconds": seconds}
        found = verdict(m)
        if found == PASSED:
            return PASSED
        for wrong in TRAIN_LOOP.misconceptions:
            if wrong.implementation(**setup) == found:
                raise CheckFailure(f"train_my_sae: {wrong.explanation} Your run: {summary(m)}.")
        raise CheckFailure(f"train_my_sae: your trained SAE is outside the bands every correct loop reaches: "
                           f"{summary(m)}.")
    return run


def _signature(name: str):
    return lambda **setup: name


TRAIN_LOOP = Exercise(
    chapter=CHAPTER,
    name="train_my_sae",
    reference=lambda **setup: PASSED,  # a correct loop meets every band (tests train two)
    make_inputs=_inputs,
    default_cases=(0,),
    misconceptions=(
        Misconception(
            "no decoder renormalisation",
            "Your decoder rows are not at unit norm at the end: renormalise W_dec (your normalize_decoder) after "
            "EVERY optimizer step, and copy the result into the parameter in place (W_dec.copy_(...) under "
            "torch.no_grad()), so the optimizer keeps updating the same tensor.",
            _signature(NORMS)),
        Misconception(
            "parallel gradient kept",
            "Adam's momentum for W_dec points along the decoder rows: remove each row's parallel component from "
            "W_dec.grad (your remove_parallel_grad) after backward() and BEFORE optimizer.step(), writing it back "
            "into W_dec.grad.",
            _signature(RADIAL)),
        Misconception(
            "L1 on the wrong tensor",
            "Your SAE uses hundreds of features per token: the sparsity penalty is not on the feature activations. "
            "Penalise f, the ReLU's output (your sae_loss(x, x_hat, f, W_dec, l1_coeff)), not the decoder weights "
            "W_dec nor the reconstruction x_hat.",
            _signature(DENSE)),
        Misconception(
            "no zero_grad",
            "Your SAE is sparse but its reconstruction collapsed (FVE far below 0.5): gradients were accumulated "
            "across steps, so every step repeats all the earlier ones. Call "
            "optimizer.zero_grad() (or set each .grad to None) every step, before backward().",
            _signature(COLLAPSED)),
        Misconception(
            "never resampled",
            "The features that started dead are still exactly as they started (encoder bias -100): resampling "
            "never revived them. At each step in resample_steps, resample the features that have not fired for "
            "resample_window steps (your resampling_probabilities and resample_dead_features), copy the new "
            "values into the parameters in place, and reset their counts.",
            _signature(NEVER_REVIVED)),
    ),
)


def train_my_sae(fn, cases: Cases = None) -> None:
    """Train with ``fn(seed, d_sae, steps, batch_size, l1_coeff, lr, resample_steps, resample_window)``
    and grade the trained SAE on held-out activations (see the module docstring)."""
    run_check(TRAIN_LOOP, _graded(fn), cases)

