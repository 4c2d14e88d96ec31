"""The LM training script: seeded, learns, and writes weights + card that load back."""
import copy
import json

import pytest
import torch

from utils.models import ModelConfig, load_model
from utils.models.loading import save_model, write_model_card
from utils.models.train import (
    PRESETS,
    TrainConfig,
    lr_at,
    past_synthetic_schedule,
    set_field,
    synthetic_rows_at,
    synthetic_tiled_repeats,
    synthetic_token_count,
    train,
    with_synthetic_rows,
)

TINY = TrainConfig(model=ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=32),
                   steps=30, batch_size=8, seq_len=32, warmup_steps=5, eval_every=30, seed=7)


def test_training_is_seeded_and_learns(tmp_path):
    a, report = train(copy.deepcopy(TINY), progress=False)
    b, _ = train(copy.deepcopy(TINY), progress=False)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert report["final_val_loss"] < 8.0  # ln(4096) = 8.32 at initialisation
    report["notes"] = "tiny test model"
    save_model(a, "tiny", report, out_dir=tmp_path)
    card = write_model_card(tmp_path).read_text()
    assert "## tiny" in card and "final held-out loss" in card
    loaded = load_model("tiny", model_dir=tmp_path, device="cpu")
    assert loaded.tokenizer is not None and json.loads((tmp_path / "tiny.json").read_text())["d_model"] == 16


def test_schedule_warms_up_then_decays():
    cfg = PRESETS["attn-only-1l"]
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] < lrs[cfg.warmup_steps - 1] == max(lrs)
    assert abs(lrs[-1] - 0.1 * cfg.lr) < 0.01 * cfg.lr


def test_warmup_stable_decay_schedule():
    cfg = TrainConfig(model=TINY.model, steps=100, lr=1.0, warmup_steps=10, decay_steps=20)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[9] == 1.0 and all(lr == 1.0 for lr in lrs[10:80])  # constant between warm-up and decay
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # then strictly decreasing ...
    assert lrs[-1] == pytest.approx(1.0 - 0.9 * 19 / 20)  # ... linearly towards 10%
    longer = copy.deepcopy(cfg)
    longer.steps = 200  # a resumed run made longer follows the same rates up to the old decay
    assert [lr_at(s, longer) for s in range(80)] == lrs[:80]


def test_the_decay_can_start_below_the_peak():
    """attn-only-2l drops to 2% of the peak when its text-only half starts, then decays to 1%."""
    cfg = TrainConfig(model=TINY.model, steps=100, lr=1.0, warmup_steps=10, decay_steps=50, decay_from=0.02,
                      decay_to=0.01)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.02)
    assert lrs[75] == pytest.approx(0.015) and lrs[99] == pytest.approx(0.02 - 0.01 * 49 / 50)
    assert all(a > b for a, b in zip(lrs[50:], lrs[51:]))


def test_synthetic_rows_repeat_their_block():
    g = torch.Generator().manual_seed(0)
    tiled = synthetic_tiled_repeats(4, 7, 128, 4096, g)
    assert tiled.shape == (4, 128) and tiled[:, 0].eq(0).all() and tiled[:, 1:].ge(1).all()
    body = tiled[:, 1:]
    for i in range(7, 127):  # every token equals the one a period earlier: a brute-force check
        assert torch.equal(body[:, i], body[:, i - 7])


def test_synthetic_rows_replace_the_first_rows_only_inside_their_windows():
    cfg = copy.deepcopy(TINY)
    cfg.synthetic_schedule, cfg.synthetic_period = ((0, 5, 3), (8, 10, 8)), (4, 4)
    text = torch.randint(1, 4096, (8, 32), generator=torch.Generator().manual_seed(1))
    text[:, 0] = 0
    g = torch.Generator().manual_seed(0)
    mixed = with_synthetic_rows(text, 4, cfg, g)
    assert torch.equal(mixed[3:], text[3:]) and not torch.equal(mixed[:3], text[:3])
    assert torch.equal(mixed[:3, 1:5], mixed[:3, 5:9]) and mixed[:, 0].eq(0).all()
    before = g.get_state()
    assert torch.equal(with_synthetic_rows(text, 5, cfg, g), text)  # none between the windows ...
    assert torch.equal(g.get_state(), before)  # ... and no random numbers drawn there
    assert not torch.equal(with_synthetic_rows(text, 9, cfg, g)[7], text[7])  # the second window: all 8 rows
    assert [synthetic_rows_at(s, cfg) for s in range(12)] == [3] * 5 + [0] * 3 + [8] * 2 + [0] * 2
    assert synthetic_token_count(cfg, 12) == (5 * 3 + 2 * 8) * cfg.seq_len
    assert synthetic_token_count(cfg, 9) == (5 * 3 + 1 * 8) * cfg.seq_len  # a run stopped inside a window
    with pytest.raises(ValueError, match="9 rows"):
        cfg.synthetic_schedule = ((0, 5, 9),)
        with_synthetic_rows(text, 0, cfg, g)


def test_a_resume_refuses_a_config_that_rewrites_the_synthetic_rows_already_trained():
    old_style = {"synthetic_rows": 4, "synthetic_until": 1500}  # checkpoints before the schedule field
    assert past_synthetic_schedule(old_style, 3750) == [(0, 1500, 4)]
    assert past_synthetic_schedule({"synthetic_schedule": [(0, 1500, 4), (3750, 4350, 32)]}, 3750) == [(0, 1500, 4)]
    assert past_synthetic_schedule({"synthetic_schedule": [(0, 1500, 4), (3000, 4350, 32)]}, 3750) == [
        (0, 1500, 4), (3000, 3750, 32)]


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    cfg = TrainConfig(model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=32, normalization_type="LN"),
                      steps=12, batch_size=4, seq_len=32, warmup_steps=2, decay_steps=4, eval_every=4, seed=3,
                      track_induction=True, synthetic_schedule=((0, 6, 1),), synthetic_period=(3, 9))
    whole, report = train(copy.deepcopy(cfg), progress=False)
    ckpt = tmp_path / "run.pt"
    train(copy.deepcopy(cfg), progress=False, checkpoint=str(ckpt), stop_at=7)
    assert torch.load(ckpt, weights_only=False)["step"] == 7
    resumed, resumed_report = train(copy.deepcopy(cfg), progress=False, checkpoint=str(ckpt), resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p["step"] for p in resumed_report["history"]] == [4, 8, 12]
    point = report["history"][-1]
    for key in ("val_loss", "icl_score", "second_copy_loss", "best_previous_token_score", "best_induction_score"):
        assert key in point
    assert report["synthetic_tokens"] == 6 * 32 and report["tokens_seen"] == 12 * 4 * 32 - 6 * 32
    other = copy.deepcopy(cfg)
    other.model.d_model = 32
    with pytest.raises(ValueError, match="another model config"):
        train(other, progress=False, checkpoint=str(ckpt), resume=True)
    with pytest.raises(FileNotFoundError):
        train(copy.deepcopy(cfg), progress=False, checkpoint=str(tmp_path / "none.pt"), resume=True)
    rewritten = copy.deepcopy(cfg)
    rewritten.synthetic_schedule = ((0, 3, 1),)  # would misreport the rows steps 3-5 trained on
    with pytest.raises(ValueError, match="synthetic rows before step 12"):
        train(rewritten, progress=False, checkpoint=str(ckpt), resume=True)
    later = copy.deepcopy(cfg)
    later.steps, later.synthetic_schedule = 16, ((0, 6, 1), (12, 14, 2))  # a new window after the checkpoint: fine
    assert train(later, progress=False, checkpoint=str(ckpt), resume=True)[1]["synthetic_tokens"] == (6 + 4) * 32


def test_set_field_parses_json_and_refuses_unknown_fields():
    cfg = copy.deepcopy(TINY)
    set_field(cfg, "lr=0.002")
    set_field(cfg, "synthetic_period=[8, 63]")
    assert cfg.lr == 0.002 and cfg.synthetic_period == (8, 63)
    for bad in ("nonsense=1", "lr", "model=1"):
        with pytest.raises(SystemExit):
            set_field(cfg, bad)


def test_attn_only_2l_sees_synthetic_rows_only_in_its_first_half_and_as_a_minority():
    """Issue 21's rule for the bundled two-layer model: synthetic repeated rows, if used at all,
    are a small share of the tokens and never in the last half of training."""
    from utils.models.train import synthetic_token_count

    cfg = PRESETS["attn-only-2l"]
    assert all(end <= cfg.steps // 2 for first, end, rows in cfg.synthetic_schedule)
    share = synthetic_token_count(cfg, cfg.steps) / (cfg.steps * cfg.batch_size * cfg.seq_len)
    assert share < 0.2, share
    assert f"{share:.0%}" in cfg.notes
