"""Chapter 03's "train your own induction heads" (utils/checks/ch03_training.py, utils/induction/training.py).

The contract data (tests/test_check_contract.py): two correct schedules written differently (the
reference's shape, and a larger batch for fewer steps at a higher rate), and each catalogued faulty
schedule as a student would submit it. Every case TRAINS (the check trains the schedule it is
given, about 40 s of one core for a correct one), so the exercise is in SLOW_EXERCISES and this
file's training tests are slow; the schedule rules, the refusals and the trainer's synthetic-only
mode are quick.

Measured with the reference schedule (best previous-token / induction head on 16 rows of BOS, r, r
with n = 31, drawn apart from the check's own rows, which the contract tests then pass):
seed 0 0.47 / 0.82, seed 1 0.49 / 0.89, seed 2 0.47 / 0.84, seed 3 0.54 / 0.92, the hidden cases'
seeds 0.49 / 0.87 and 0.45 / 0.83; the second correct schedule 0.58 / 0.92 (seed 0), 0.49 / 0.88,
0.52 / 0.90. The gate is 0.4 / 0.5.
"""
import pytest
import torch

from utils.checks import CheckFailure
from utils.checks import ch03_training as check
from utils.induction import training as ref
from utils.models.train import TrainConfig, check_data, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def schedule_as_written():
    """The reference's schedule, written out as a student would."""
    return {"steps": 2000, "batch_size": 32, "lr": 0.003, "warmup_steps": 100, "decay_steps": 400,
            "synthetic_period": (8, 31)}


def bigger_batches():
    """Half the steps with twice the rows, a higher rate, a shorter decay."""
    return {"batch_size": 64, "steps": 1200, "lr": 4e-3, "warmup_steps": 100, "decay_steps": 300,
            "synthetic_period": [8, 31]}


# Faulty schedules kept short where the fault allows it (each is trained by the contract test).
FAULTY = {
    "period too long": {"steps": 600, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100, "synthetic_period": [64, 80]},
    "learning rate too high": {"steps": 1000, "batch_size": 32, "lr": 1e-2, "warmup_steps": 100, "decay_steps": 200,
                               "synthetic_period": [8, 31]},  # seed 0 stays on the plateau (0.05 / 0.002)
    "learning rate far too low": {"steps": 600, "batch_size": 32, "lr": 1e-4, "warmup_steps": 100,
                                  "synthetic_period": [8, 31]},
    "too few steps": {"steps": 400, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100, "decay_steps": 100,
                      "synthetic_period": [8, 31]},
}

CORRECT = {"induction_schedule": [schedule_as_written, bigger_batches]}
HIDDEN_CASES = (901,)
AS_SUBMITTED = {"induction_schedule": {name: (lambda s=s: dict(s)) for name, s in FAULTY.items()}}
SLOW_EXERCISES = ("induction_schedule",)


# --------------------------------------------------------------------------- the schedules (quick)


def test_each_faulty_schedule_is_named_and_the_good_ones_are_not():
    assert {name: ref.schedule_fault(s) for name, s in FAULTY.items()} == {name: name for name in FAULTY}
    for good in (ref.induction_schedule(), schedule_as_written(), bigger_batches()):
        assert ref.schedule_fault(good) is None


def test_schedule_config_is_the_trainers_synthetic_only_run_and_refuses_what_is_not_a_schedule():
    cfg = ref.schedule_config(ref.induction_schedule(), seed=3)
    assert cfg.synthetic_only and cfg.synthetic_schedule == () and cfg.synthetic_period == (8, 31)
    assert cfg.model.n_ctx == cfg.seq_len == 64 and cfg.model.d_vocab == 256 and cfg.model.seed == cfg.seed == 3
    assert ref.SMALL_MODEL.seed == 0  # the shared config is not edited
    for bad, match in (({**ref.induction_schedule(), "seq_len": 32}, "unknown schedule fields"),
                       ({"lr": 1e-3}, "needs its number of steps"),
                       ({**ref.induction_schedule(), "steps": 10_000}, "budget"),
                       ([("steps", 100)], "a dict")):
        with pytest.raises(ValueError, match=match):
            ref.schedule_config(bad)
    with pytest.raises(ValueError, match="shortest <= longest"):
        ref.train_schedule({**ref.induction_schedule(), "synthetic_period": [31, 8]})


def test_malformed_schedules_are_refused_before_anything_trains(monkeypatch):
    monkeypatch.setattr(ref, "_train", lambda *a: pytest.fail("trained a malformed schedule"))
    with pytest.raises(CheckFailure, match="return a dict of the trainer's fields"):
        check.induction_schedule(lambda: [2000, 32, 3e-3])
    with pytest.raises(CheckFailure, match="not a schedule the trainer can run: unknown schedule fields"):
        check.induction_schedule(lambda: {**ref.induction_schedule(), "optimizer": "sgd"})
    with pytest.raises(CheckFailure, match="not a schedule the trainer can run: steps x batch_size"):
        check.induction_schedule(lambda: {**ref.induction_schedule(), "steps": 5000})
    with pytest.raises(CheckFailure, match=r"not a schedule the trainer can run: synthetic_period must be "
                                           r"\[shortest, longest\]"):
        check.induction_schedule(lambda: {**ref.induction_schedule(), "synthetic_period": [31, 8]})


def test_the_verdict_reads_the_trained_model_and_names_faults_only_when_the_heads_did_not_form(monkeypatch):
    """With the training stubbed: a model with the heads passes whatever its schedule; one without
    them gets its schedule's fault, or its numbers when the schedule has none."""
    from utils.models import HookedTinyTransformer, load_model

    with_heads = load_model("attn-only-2l", device="cpu")  # its heads pass the gate on any repeated tokens
    untrained = HookedTinyTransformer(ref.SMALL_MODEL).eval()
    runs = {}
    monkeypatch.setattr(ref, "train_schedule", lambda schedule, seed: (runs["model"], {"history": []}))
    runs["model"] = with_heads
    check.induction_schedule(lambda: dict(FAULTY["too few steps"]), cases=[0])
    assert check.trained_run(0)["scores"]["induction"] > 0.5
    runs["model"] = untrained
    with pytest.raises(CheckFailure, match="fewer than 600 steps"):
        check.induction_schedule(lambda: dict(FAULTY["too few steps"]), cases=[0])
    with pytest.raises(CheckFailure, match=r"the heads did not form in your run \(seed 0\): best previous-token "
                                           r"head 0\.\d\d \(needs >= 0.4\), best induction head 0\.\d\d"):
        check.induction_schedule(lambda: {**ref.induction_schedule(), "lr": 2e-3})


def test_a_run_trains_on_one_thread_whatever_the_setting(monkeypatch):
    """The same schedule gives the same model in a 1-thread kernel and a 2-thread one (Colab, the
    grader): training runs on one thread, and the setting is restored afterwards."""
    seen = []
    monkeypatch.setattr("utils.models.train.train", lambda cfg, **kw: seen.append(torch.get_num_threads()) or "run")
    ref._train.cache_clear()
    torch.set_num_threads(2)
    try:
        assert ref.train_schedule({**ref.induction_schedule(), "steps": 7}) == "run"
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
        ref._train.cache_clear()


def test_training_seeds_the_default_case_with_the_notebooks_seed():
    from utils.checks.core import seed_for

    assert check.training_seed(seed_for("induction_schedule", 0)) == ref.TRAIN_SEED
    assert check.training_seed(seed_for("induction_schedule", 901)) == seed_for("induction_schedule", 901) % 2**31


def test_best_heads_against_a_loop_over_heads():
    from utils.models import HookedTinyTransformer

    torch.manual_seed(0)
    model = HookedTinyTransformer(ref.SMALL_MODEL).eval()
    tokens = check.eval_tokens(5)
    got = ref.best_heads(model, tokens)
    _, cache = model.run_with_cache(tokens)
    n = 31
    prev = max(sum(cache["blocks.0.attn.hook_pattern"][b, h, q, q - 1].item() for b in range(len(tokens))
                   for q in range(1, 2 * n + 1)) / (len(tokens) * 2 * n) for h in range(4))
    ind = max(sum(cache["blocks.1.attn.hook_pattern"][b, h, q, q - n + 1].item() for b in range(len(tokens))
                  for q in range(n + 1, 2 * n + 1)) / (len(tokens) * n) for h in range(4))
    assert got["previous_token"] == pytest.approx(prev, abs=1e-5) and got["induction"] == pytest.approx(ind, abs=1e-5)


# --------------------------------------------------------------------------- the trainer's synthetic-only mode


def tiny_synthetic(**fields) -> TrainConfig:
    return ref.schedule_config({"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "synthetic_period": [3, 9],
                                **fields}, seed=2)


def test_synthetic_only_rows_are_tiled_blocks_of_the_models_vocabulary(monkeypatch):
    from utils.models import train as train_module

    seen = []
    real = train_module.training_step
    monkeypatch.setattr(train_module, "training_step",
                        lambda m, o, tokens, fast: seen.append(tokens) or real(m, o, tokens, fast))
    cfg = tiny_synthetic()
    cfg.eval_every = 3
    _, report = train(cfg, progress=False)
    assert len(seen) == 6
    for tokens in seen:
        assert tokens.shape == (4, 64) and (tokens[:, 0] == 0).all() and tokens[:, 1:].min() >= 1
        assert tokens.max() < 256
        period = next(p for p in range(3, 10) if (tokens[:, 1 + p:] == tokens[:, 1:-p]).all())
        assert (tokens[:, 1:1 + period].unsqueeze(1) == tokens[:, 1:1 + period].unsqueeze(2)).sum() >= period  # a block
    assert report["tokens_seen"] == 0 and report["synthetic_tokens"] == 6 * 4 * 64
    assert [p["step"] for p in report["history"]] == [3, 6] and "val_loss" not in report["history"][0]
    assert {"second_copy_loss", "best_previous_token_score", "best_induction_score"} <= set(report["history"][0])
    assert report["final_val_loss"] is None


def test_synthetic_only_runs_are_deterministic_and_the_fast_step_follows_the_plain_one():
    a, _ = train(tiny_synthetic(), progress=False)
    b, _ = train(tiny_synthetic(), progress=False)
    c, _ = train(tiny_synthetic(), progress=False, fast=True)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
        assert torch.allclose(x, z, atol=1e-4), name


def test_rows_that_cannot_be_made_are_refused_clearly():
    from utils.models.config import ModelConfig

    with pytest.raises(ValueError, match="cannot read the course's text"):
        check_data(TrainConfig(model=ModelConfig(d_vocab=256), steps=1))
    with pytest.raises(ValueError, match="leave synthetic_schedule empty"):
        check_data(TrainConfig(model=ModelConfig(d_vocab=256), steps=1, synthetic_only=True,
                               synthetic_schedule=((0, 1, 1),)))
    with pytest.raises(ValueError, match="1 <= shortest <= longest"):
        check_data(TrainConfig(model=ModelConfig(), steps=1, synthetic_period=(0, 4)))


def test_a_synthetic_only_checkpoint_does_not_resume_as_text(tmp_path):
    cfg = tiny_synthetic()
    train(cfg, progress=False, checkpoint=str(tmp_path / "run.pt"), stop_at=3)
    text_cfg = ref.schedule_config({"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                                    "synthetic_period": [3, 9]}, seed=2)
    text_cfg.synthetic_only = False
    text_cfg.model.d_vocab = 4096
    with pytest.raises(ValueError, match="another (model config|synthetic_only)"):
        train(text_cfg, progress=False, checkpoint=str(tmp_path / "run.pt"), resume=True)
    model, report = train(cfg, progress=False, checkpoint=str(tmp_path / "run.pt"), resume=True)
    whole, _ = train(tiny_synthetic(), progress=False)
    for x, y in zip(model.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------- trained (slow)


@pytest.mark.slow
def test_a_run_the_check_made_is_the_notebooks_run_and_is_deterministic():
    """The check reuses the notebook's run (same schedule, seed 0); trained again from scratch in the
    same process, the verdict's numbers are the same. (A short schedule: the machinery is the same.)"""
    short = {**ref.induction_schedule(), "steps": 300, "decay_steps": 100}
    model, report = ref.train_schedule(short)
    with pytest.raises(CheckFailure, match="fewer than 600 steps"):
        check.induction_schedule(lambda: dict(short), cases=[0])
    run = check.trained_run(0)
    assert run["model"] is model and run["report"] is report
    first = run["scores"]
    ref._train.cache_clear()
    with pytest.raises(CheckFailure, match="fewer than 600 steps"):
        check.induction_schedule(lambda: dict(short), cases=[0])
    assert check.trained_run(0)["model"] is not model and check.trained_run(0)["scores"] == first


@pytest.mark.slow
def test_a_schedule_without_a_named_fault_that_stops_short_gets_its_numbers():
    """700 steps is past MIN_STEPS, but before the previous-token head forms."""
    short = {**ref.induction_schedule(), "steps": 700, "decay_steps": 100}
    assert ref.schedule_fault(short) is None
    with pytest.raises(CheckFailure, match=r"did not form in your run \(seed 0\): best previous-token head 0\.[0-3]"):
        check.induction_schedule(lambda: dict(short))
