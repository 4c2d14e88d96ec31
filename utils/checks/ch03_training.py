"""Check for chapter 03's "Train your own induction heads", graded on the OUTCOME of the student's run.

The student writes ``induction_schedule()``: a schedule for the course trainer (fields of its
TrainConfig: steps, batch size, learning rate, warm-up, decay, the block periods) that makes
``utils.induction.training.SMALL_MODEL`` form induction heads on synthetic repeated rows. The check
calls it, trains the model with it here (``train_schedule``, seeded by the case: the default case
uses ``TRAIN_SEED``, the notebook's own run, which is cached, so the notebook trains once), and
measures the best previous-token head of layer 0 and the best induction head of layer 1 on fresh
repeated random tokens. It passes when they reach the bundled attn-only-2l's gate (``FORMED``: 0.4
and 0.5). Under the grader the schedule comes back from the student's process and the training and
measuring run in the grader's: the model graded is the one the schedule makes, nobody else's.

When the heads did not form, the schedule's catalogued fault is named (``schedule_fault``: a period
too long for the context, a learning rate too high or far too low, too few steps); any other
schedule gets its measured scores and what to try. tests/test_ch03_training_checks.py trains two
correct schedules on two seeds and every catalogued faulty schedule.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, default_case, run_check
from utils.checks.toolkit import rng
from utils.induction import training as ref

CHAPTER = "03"
EXERCISES = ["induction_schedule"]
SEQ_LEN = (ref.SMALL_MODEL.n_ctx - 1) // 2  # 31: BOS, r, r fills the 64-token context but one
BATCH = 32
PASSED = "the heads formed"
NOT_FORMED = "the heads did not form"


def _inputs(seed: int) -> dict:
    return {"seed": seed}


def training_seed(seed: int) -> int:
    """The run's seed for a case: the notebook's TRAIN_SEED (+ i) for default case i, else the case's."""
    case = default_case(INDUCTION_SCHEDULE.name, seed)
    return ref.TRAIN_SEED + case if case is not None else seed % 2**31


def eval_tokens(seed: int) -> torch.Tensor:
    """[BATCH, 2 SEQ_LEN + 1]: BOS, r, r with r uniform over SMALL_MODEL's tokens 1..d_vocab-1."""
    r = torch.randint(1, ref.SMALL_MODEL.d_vocab, (BATCH, SEQ_LEN), generator=rng(seed))
    return torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), r, r], dim=1)


def _schedule(out) -> dict:
    if not isinstance(out, dict):
        raise CheckFailure(f"induction_schedule: return a dict of the trainer's fields {list(ref.SCHEDULE_FIELDS)}, "
                           f"e.g. {{'steps': 2000, 'lr': 3e-3}}; got a {type(out).__name__}.")
    try:
        ref.schedule_config(out)
    except (TypeError, ValueError) as err:
        raise CheckFailure(f"induction_schedule: that is not a schedule the trainer can run: {err}") from None
    return out


def summary(scores: dict) -> str:
    return (f"best previous-token head {scores['previous_token']:.2f} (needs >= {ref.FORMED['previous_token']}), "
            f"best induction head {scores['induction']:.2f} (needs >= {ref.FORMED['induction']})")


_RUNS: dict = {}  # default case -> {"schedule", "model", "report", "scores"}: what the notebook shows


def trained_run(case: int = 0) -> dict:
    """{"schedule", "model", "report", "scores"} of the run the check made for default case ``case``."""
    if case not in _RUNS:
        raise RuntimeError("no run to show yet: run the check cell, "
                           "check.induction_schedule(induction_schedule), first")
    return _RUNS[case]


def _graded(fn):
    """Call the student's function, train its schedule (seeded by the case), measure the heads; a
    run without them raises with the schedule's named fault, or its numbers."""
    if not callable(fn):
        return fn

    def run(seed):
        schedule = _schedule(fn())
        train_seed = training_seed(seed)
        model, report = ref.train_schedule(schedule, seed=train_seed)
        scores = ref.best_heads(model, eval_tokens(seed))
        case = default_case(INDUCTION_SCHEDULE.name, seed)
        if case is not None:
            _RUNS[case] = {"schedule": schedule, "model": model, "report": report, "scores": scores}
        if scores["previous_token"] >= ref.FORMED["previous_token"] and scores["induction"] >= ref.FORMED["induction"]:
            return PASSED
        fault = ref.schedule_fault(schedule)
        for wrong in INDUCTION_SCHEDULE.misconceptions:
            if wrong.name == fault:
                raise CheckFailure(f"induction_schedule: {wrong.explanation} Your run (seed {train_seed}): "
                                   f"{summary(scores)}.")
        raise CheckFailure(
            f"induction_schedule: the heads did not form in your run (seed {train_seed}): {summary(scores)}. Look at "
            f"your trajectory: if the second-copy loss never left the plateau (~5.5 nats, log 255), the run stopped "
            f"before the phase change (more steps, or a rate nearer 3e-3); if the induction score rose and the "
            f"previous-token score lags, train longer: it sharpens last.")

    return run


def _signature(name: str):
    return lambda seed: name


INDUCTION_SCHEDULE = Exercise(
    chapter=CHAPTER,
    name="induction_schedule",
    reference=lambda seed: PASSED,  # the reference schedule forms the heads (tests train it on several seeds)
    make_inputs=_inputs,
    default_cases=(0,),
    misconceptions=(
        Misconception(
            "period too long",
            f"Your shortest block is at least the {ref.SMALL_MODEL.n_ctx - 1} tokens that follow BOS in a "
            f"{ref.SMALL_MODEL.n_ctx}-token row, so no row ever repeats and there is nothing to copy. Use blocks that "
            f"fit at least twice, e.g. synthetic_period=[8, 31].",
            _signature("period too long")),
        Misconception(
            "learning rate too high",
            f"Your learning rate is above {ref.MAX_LR:g}. At 1e-2 this model is a coin toss: from seed 0 it never "
            f"left the plateau in 2000 steps (the loss stayed near ln 255 = 5.5 nats, no head attending anywhere in "
            f"particular), from seed 1 it formed the heads. Try 3e-3, which formed them from every seed tried.",
            _signature("learning rate too high")),
        Misconception(
            "learning rate far too low",
            f"Your learning rate is below {ref.MIN_LR:g}: the weights barely move within the budget, and the loss "
            f"stays on the plateau before the phase change. Try 3e-3.",
            _signature("learning rate far too low")),
        Misconception(
            "too few steps",
            f"Your run has fewer than {ref.MIN_STEPS} steps: this model's phase change (the second-copy loss "
            f"falling from ~5.5 nats) runs over steps ~300-1200 at 3e-3, and the previous-token head sharpens "
            f"after it. Train for about 2000 steps.",
            _signature("too few steps")),
    ),
)


def induction_schedule(fn, cases: Cases = None) -> None:
    """Check ``fn() -> schedule``: the check trains SMALL_MODEL with it (seeded) and its best
    previous-token and induction heads on fresh repeated random tokens must reach 0.4 and 0.5;
    otherwise the schedule's catalogued fault is named."""
    run_check(INDUCTION_SCHEDULE, _graded(fn), cases)
