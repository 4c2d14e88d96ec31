"""The LM training script: seeded, learns, and writes weights + card that load back."""
import copy
import json

import torch

from utils.models import ModelConfig, load_model
from utils.models.loading import save_model, write_model_card
from utils.models.train import (PRESETS, TrainConfig, insert_repeated_segments, lr_at, synthetic_repeats,
                                synthetic_tiled_repeats, train)

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


def test_repeated_segments_are_repeats():
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(64, 128, dtype=torch.long)
    out = insert_repeated_segments(tokens, 0.5, 4096, g)
    changed = (out != 0).any(1)
    assert 10 < changed.sum() < 54
    for row in out[changed]:
        nz = torch.nonzero(row)[:, 0]
        start, end = nz.min().item(), nz.max().item() + 1
        half = (end - start) // 2
        assert torch.equal(row[start:start + half], row[start + half:end])
    assert out[:, 0].eq(0).all()  # BOS is never overwritten


def test_schedule_warms_up_then_decays():
    cfg = PRESETS["attn-only-1l"]
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] < lrs[cfg.warmup_steps - 1] == max(lrs)
    assert abs(lrs[-1] - 0.1 * cfg.lr) < 0.01 * cfg.lr


def test_synthetic_rows_repeat_their_block():
    g = torch.Generator().manual_seed(0)
    tiled = synthetic_tiled_repeats(4, 7, 128, 4096, g)
    assert tiled.shape == (4, 128) and tiled[:, 0].eq(0).all() and tiled[:, 1:].ge(1).all()
    body = tiled[:, 1:]
    for i in range(7, 127):  # every token equals the one a period earlier: a brute-force check
        assert torch.equal(body[:, i], body[:, i - 7])
    pair = synthetic_repeats(3, 10, 4096, g)
    assert pair.shape == (3, 21) and torch.equal(pair[:, 1:11], pair[:, 11:]) and pair[:, 0].eq(0).all()


def test_synthetic_only_phase_trains_and_is_seeded():
    cfg = copy.deepcopy(TINY)
    cfg.synthetic_batch, cfg.synthetic_tiled, cfg.synthetic_half, cfg.synthetic_half_final = 4, True, (2, 6), 6
    cfg.synthetic_only_steps = 10
    a, report = train(copy.deepcopy(cfg), progress=False)
    b, _ = train(copy.deepcopy(cfg), progress=False)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.isfinite(torch.tensor(report["final_train_loss"]))
