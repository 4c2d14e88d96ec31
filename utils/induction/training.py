"""Chapter 03, "Train your own induction heads": a small 2-layer attention-only model through the
synthetic curriculum, with the course trainer (``utils.models.train``, ``synthetic_only``).

The student chooses the SCHEDULE (``SCHEDULE_FIELDS``: steps, batch size, learning rate, warm-up,
decay, the block periods); the model is fixed (``SMALL_MODEL``: half of attn-only-2l's width, four
heads a layer, a 64-token context and a vocabulary of its own, 256 tokens). Every row is BOS and a
random block tiled over the row, so no text is read and the 4096-wide unembedding that dominates a
text step is gone: on one CPU core the reference schedule runs in well under a minute.

- ``induction_schedule``: a schedule that forms the heads (the graded exercise's reference);
- ``schedule_config`` / ``train_schedule``: the TrainConfig a schedule makes, and the run (cached
  per schedule and seed, so the notebook's run and the check's are one run);
- ``best_heads``: the best previous-token (layer 0) and induction (layer 1) scores of a model on
  repeated random tokens; ``FORMED`` is the bar, the bundled attn-only-2l's gate's;
- ``schedule_fault``: the catalogued schedules that cannot form the heads, named.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Optional

import torch

from utils.models.config import ModelConfig
from utils.models.evaluation import GATE, induction_scores, previous_token_scores

SMALL_MODEL = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=None, n_ctx=64, d_vocab=256,
                          positional_embedding_type="shortformer", normalization_type="LN", seed=0)
SCHEDULE_FIELDS = ("steps", "batch_size", "lr", "warmup_steps", "decay_steps", "synthetic_period")
MAX_ROWS = 3000 * 32  # steps x batch size the section allows (about a minute of one core)
TRAIN_SEED = 0  # the seed of the model's initialisation and of the synthetic rows
EVAL_EVERY = 100
FORMED = {"previous_token": GATE["previous_token_score_at_least"], "induction": GATE["induction_score_at_least"]}
# The catalogued faults' thresholds (see schedule_fault; measured in tests/test_ch03_training_checks.py).
MAX_LR = 8e-3  # at 1e-2 the reference schedule stayed on the plateau from seed 0 (seed 1 formed the heads)
MIN_LR = 3e-4  # below this the weights barely move within the budget
MIN_STEPS = 600  # the phase change of this model runs over steps ~300-900 of the reference schedule


def induction_schedule() -> dict:
    """Every row synthetic (all of them are, for this model) at a constant rate of 3e-3 after 100
    warm-up steps, decaying over the last 400 of 2000; blocks of 8-31 tokens tiled over the 63
    tokens after BOS."""
    return {"steps": 2000, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100, "decay_steps": 400,
            "synthetic_period": [8, 31]}


def schedule_config(schedule: dict, seed: int = TRAIN_SEED):
    """The course trainer's TrainConfig for ``schedule`` on ``SMALL_MODEL``; ValueError for a
    schedule that is not one (unknown fields, no steps, more rows than the budget, rows the trainer
    cannot make)."""
    from utils.models.train import TrainConfig, check_data

    if not isinstance(schedule, dict):
        raise ValueError(f"a schedule is a dict of TrainConfig fields, got a {type(schedule).__name__}")
    unknown = set(schedule) - set(SCHEDULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown schedule fields {sorted(unknown)}; the fields are {list(SCHEDULE_FIELDS)}")
    if "steps" not in schedule:
        raise ValueError("a schedule needs its number of steps")
    fields = dict(schedule)
    if "synthetic_period" in fields:
        fields["synthetic_period"] = tuple(int(x) for x in fields["synthetic_period"])
    cfg = TrainConfig(model=copy.deepcopy(SMALL_MODEL), seq_len=SMALL_MODEL.n_ctx, seed=seed, eval_every=EVAL_EVERY,
                      synthetic_only=True, **fields)
    cfg.model.seed = seed
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.steps * cfg.batch_size > MAX_ROWS:
        raise ValueError(f"steps x batch_size must lie in [1, {MAX_ROWS}] (the section's budget); "
                         f"got {cfg.steps} x {cfg.batch_size}")
    check_data(cfg)
    return cfg


@lru_cache(maxsize=4)
def _train(key: str, seed: int):
    from utils.models.train import train

    # One thread: 64-wide products gain nothing from a second one, and the run (so the check's
    # verdict) is then the same in a 1-thread notebook, a 2-thread Colab and the grader's process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # the chapter's notebook, and the grader, run with gradients off
            return train(schedule_config(json.loads(key), seed), progress=False, fast=True)
    finally:
        torch.set_num_threads(threads)


def train_schedule(schedule: dict, seed: int = TRAIN_SEED):
    """(model, report) of ``train(schedule_config(schedule, seed), fast=True)``; the same schedule
    and seed are trained once per process (the notebook's run and its check share it).
    ``report["history"]`` has one point per ``EVAL_EVERY`` steps: the second-copy loss and the
    best previous-token and induction scores."""
    schedule_config(schedule, seed)  # refuse a bad schedule before anything is cached
    return _train(json.dumps(schedule, sort_keys=True), seed)


@torch.no_grad()
def best_heads(model, tokens: torch.Tensor) -> dict:
    """{previous_token: best layer-0 previous-token score, induction: best layer-1 induction score}
    of ``model`` on ``tokens`` [batch, 2 n + 1] = BOS, r, r."""
    n = (tokens.shape[1] - 1) // 2
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return {"previous_token": float(previous_token_scores(cache["blocks.0.attn.hook_pattern"]).max()),
            "induction": float(induction_scores(cache[f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"], n).max())}


def schedule_fault(schedule: dict) -> Optional[str]:
    """The name of the catalogued fault that keeps ``schedule`` from forming induction heads on
    ``SMALL_MODEL`` within the budget, or None. The faults, checked in this order:

    * "period too long": the shortest block is at least the 63 tokens that follow BOS, so no row
      repeats and there is nothing to copy;
    * "learning rate too high": above ``MAX_LR`` the run never leaves the plateau;
    * "learning rate far too low": below ``MIN_LR``;
    * "too few steps": fewer than ``MIN_STEPS``.
    """
    if int(schedule.get("synthetic_period", (8, 63))[0]) >= SMALL_MODEL.n_ctx - 1:
        return "period too long"
    lr = float(schedule.get("lr", 1e-2))
    if lr > MAX_LR:
        return "learning rate too high"
    if lr < MIN_LR:
        return "learning rate far too low"
    if int(schedule.get("steps", 0)) < MIN_STEPS:
        return "too few steps"
    return None
