"""Train a bundled model on the bundled corpus: ``python -m utils.models.train NAME``.

Seeded and deterministic on one machine and thread count. Writes
utils/assets/models/NAME.safetensors (fp16), NAME.json (config) and NAME.train.json (what was
done and measured), then regenerates utils/assets/models/MODEL_CARD.md.

Long runs are resumable: ``--checkpoint PATH`` saves the whole training state (weights, Adam,
the data generator, the logged trajectory) every eval, and ``--resume`` continues from it.

``--fast`` (``train(cfg, fast=True)``) computes the same loss with ``utils.models.fast_step`` (no
stored logits, fused attention, no hooks): the same losses and weights up to float rounding
(tests/test_train_fast.py), 1.6-1.9 times the plain step's speed on one CPU thread
(scripts/bench_lm_step.py). The default step stays the plain one.

``synthetic_only=True`` trains on synthetic rows alone (BOS + a random block tiled over the row, from
the model's own vocabulary, which may then be smaller than the tokenizer's): chapter 03's "train
your own induction heads" (``utils.induction.training``); its evals measure copying and heads only.

From a notebook: ``model, report = train(TrainConfig(model=ModelConfig(...), steps=...), fast=True)``
shows a progress bar and one JSON line per eval, writes nothing, and returns the model (CPU, eval
mode) and the report (``report["history"]``: one point per eval, with the induction scores when
``track_induction``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from utils.data.dataset import analysis_tokens, batches
from utils.data.tokenizer import VOCAB_SIZE
from utils.models.config import ModelConfig
from utils.models.evaluation import copying_point, trajectory_point
from utils.models.fast_step import fast_loss
from utils.models.loading import MODEL_DIR, save_model, write_model_card
from utils.models.transformer import HookedTinyTransformer


@dataclass
class TrainConfig:
    model: ModelConfig
    steps: int
    batch_size: int = 32
    seq_len: int = 128
    # Tiny models train fastest at a high rate: held-out loss of attn-only-1l after 250 steps was
    # 6.59 at 1e-3, 5.58 at 3e-3, 5.09 at 6e-3 and 4.61 at 1.2e-2.
    lr: float = 1e-2
    warmup_steps: int = 100
    # None: cosine decay to 10% of the peak over all the steps. An integer: warm-up, a constant
    # rate, then a linear decay to 10% over the last ``decay_steps`` (warmup-stable-decay), so a
    # resumed run can be made longer without changing the schedule it has already followed.
    decay_steps: Optional[int] = None
    # The decay phase runs linearly from decay_from * lr to decay_to * lr. decay_from < 1 drops the
    # rate when the decay starts (attn-only-2l: text at the peak rate erodes the copying circuit).
    decay_from: float = 1.0
    decay_to: float = 0.1
    weight_decay: float = 0.01
    # Synthetic rows: windows (first_step, end_step, rows); for first_step <= step < end_step the
    # first ``rows`` rows of each batch are BOS + a random block (period drawn from
    # ``synthetic_period``) tiled over the row. Empty: text only.
    synthetic_schedule: tuple = ()
    synthetic_period: tuple = (8, 63)
    # Every row synthetic, no text at all: for a model with a vocabulary of its own (chapter 03's
    # "train your own induction heads"); the evals then measure copying and heads only.
    synthetic_only: bool = False
    seed: int = 0
    eval_every: int = 250
    track_induction: bool = False  # log the in-context-learning and head scores at each eval
    notes: str = ""


PRESETS = {
    "attn-only-1l": TrainConfig(
        model=ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=None,
                          positional_embedding_type="shortformer", normalization_type=None, seed=1),
        steps=1500, seed=1,
        notes="1-layer attention-only, shortformer positions, no LayerNorm: the path expansion is exact.",
    ),
    "attn-only-2l": TrainConfig(
        # Induction heads need a previous-token head in layer 0 and a layer-1 head whose keys read
        # it; neither helps alone, so the loss sits on a plateau before the phase change. LayerNorm
        # keeps the QK gradients out of Adam's eps (without it, at init 0.02, they were ~1e-11).
        # Measured here: on text alone, 4750 steps (19 M tokens) gave no induction (best score
        # 0.01, previous-token 0.16); 4 synthetic rows of 32 for 1500 steps did not start it either.
        # Ten times the tokens did not either: on a GPU (2026-12-04, an H200; --set
        # 'synthetic_schedule=[]' decay_steps=null lr=0.002 batch_size=64), 24000 text-only steps
        # (197 M tokens, 57 passes over the 3.4 M-token training split) ended with best induction
        # 0.015, previous-token 0.23, and the held-out loss lowest at step 8000 (3.163, then 3.190
        # at 24000). Olsson et al.'s models saw billions of tokens; this corpus is too small, and a
        # CPU budget too short, for text alone (utils.induction.experiments.TEXT_ONLY_RUNS).
        # Synthetic rows alone cross the plateau after ~1100 steps, so steps 0-1400 are synthetic;
        # text then trains the language model on top of the circuit. At the peak rate (3e-3) text
        # erodes the copying of uniformly random tokens within a few hundred steps (second-copy
        # loss 0.36 nats at step 3250, right after a window of synthetic rows, 7.07 at 3750; 15 M
        # more tokens of permissively licensed Python did not stop it: 0.30 -> 3.39 in 300 steps),
        # and what erodes it is the step size: from the same state, 300 text steps at 3e-4 kept it
        # (0.30 -> 0.41) while the held-out loss kept falling. Swapping weights between the two
        # states put the erosion in layer 0 and layer 1's QK, not in the unembedding. So: a last
        # window of synthetic rows ends at step 4000, the halfway point, and the text-only second
        # half runs at 2% -> 1% of the peak rate (at 10% -> 1% the second-copy loss rose 0.29 ->
        # 0.39 -> 0.52 -> 0.69 over steps 4000-4750).
        model=ModelConfig(n_layers=2, d_model=128, n_heads=8, d_head=32, d_mlp=None,
                          positional_embedding_type="shortformer", normalization_type="LN", seed=2),
        steps=8000, seed=2, lr=3e-3, warmup_steps=200, decay_steps=4000, decay_from=0.02, decay_to=0.01,
        eval_every=250, synthetic_schedule=((0, 1400, 32), (2750, 3250, 4), (3750, 4000, 4)),
        synthetic_period=(8, 63), track_induction=True,
        notes="2-layer attention-only, shortformer positions, LayerNorm before each layer. Its induction heads "
              "were seeded by a synthetic curriculum, not learned from text: steps 0-1400 of 8000 are "
              "synthetic rows only (BOS, then a random block of 8-63 tokens tiled over the row), and steps "
              "2750-3250 and 3750-4000 have 4 such rows in each 32-row batch (19% of all tokens are "
              "synthetic). Everything else, the whole second half included, is the course's text, which kept "
              "the heads: the second half runs at 2% -> 1% of the peak learning rate, since text at higher "
              "rates erodes the copying of arbitrary tokens. On text alone a model of this shape formed no "
              "induction heads: 4750 steps on a CPU (19 M tokens) ended with a best induction score of 0.01, "
              "and 24000 steps of 64 rows on a GPU (197 M tokens, 57 passes over the 3.4 M-token training "
              "split) with 0.015, its held-out loss lowest at step 8000 and rising after. Olsson et al.'s "
              "models saw billions of tokens.",
    ),
    "gelu-1l": TrainConfig(
        model=ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                          positional_embedding_type="standard", normalization_type="LN", seed=3),
        steps=1500, seed=3,
        notes="1 layer with a GELU MLP (d_mlp=512), standard positions, pre-LayerNorm: the SAE chapters' model.",
    ),
    "gelu-2l": TrainConfig(
        # Chapter 07's model: two MLP layers, so an attribution graph has feature -> feature edges
        # across layers (directly through the residual stream and through layer 1's attention).
        # gelu-1l's shape, twice; twice its steps (12 M tokens, about 3.5 passes over the training split).
        model=ModelConfig(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                          positional_embedding_type="standard", normalization_type="LN", seed=4),
        steps=3000, seed=4,
        notes="2 layers, each attention + a GELU MLP (d_mlp=512), standard positions, pre-LayerNorm: chapter 07's "
              "model, with per-layer transcoders for its attribution graphs.",
    ),
}


def synthetic_tiled_repeats(batch: int, period: int, seq_len: int, d_vocab: int,
                            generator: torch.Generator) -> torch.Tensor:
    """[batch, seq_len]: BOS, then a random block of ``period`` tokens repeated to fill the row."""
    r = torch.randint(1, d_vocab, (batch, period), generator=generator)
    reps = -(-(seq_len - 1) // period)
    body = r.repeat(1, reps)[:, :seq_len - 1]
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), body], dim=1)


def synthetic_rows_at(step: int, cfg: TrainConfig) -> int:
    """How many rows of the batch at ``step`` are synthetic (0 outside every window)."""
    return sum(rows for first, end, rows in cfg.synthetic_schedule if first <= step < end)


def synthetic_token_count(cfg: TrainConfig, last_step: int) -> int:
    """Tokens of synthetic rows in steps [0, last_step)."""
    if cfg.synthetic_only:
        return last_step * cfg.batch_size * cfg.seq_len
    return sum(max(0, min(end, last_step) - first) * rows
               for first, end, rows in cfg.synthetic_schedule) * cfg.seq_len


def past_synthetic_schedule(train_config: dict, step: int) -> list:
    """The synthetic windows a run (described by its saved ``train_config``) followed before
    ``step``, clipped there; older checkpoints recorded one window as synthetic_rows/_until."""
    windows = train_config.get("synthetic_schedule")
    if windows is None and train_config.get("synthetic_rows"):
        windows = [(0, train_config["synthetic_until"], train_config["synthetic_rows"])]
    return [(first, min(end, step), rows) for first, end, rows in windows or () if first < step and rows]


def with_synthetic_rows(tokens: torch.Tensor, step: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The batch with its first ``synthetic_rows_at(step)`` rows replaced by tiled random blocks
    (the batch unchanged, and the generator untouched, outside the schedule's windows)."""
    rows = synthetic_rows_at(step, cfg)
    if not rows:
        return tokens
    if rows > tokens.shape[0]:
        raise ValueError(f"the synthetic schedule asks for {rows} rows at step {step}; the batch has {tokens.shape[0]}")
    tokens = tokens.clone()
    tokens[:rows] = synthetic_rows(rows, tokens.shape[1], cfg, generator)
    return tokens


def synthetic_rows(rows: int, seq_len: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``rows`` tiled random blocks, all with one period drawn from ``cfg.synthetic_period``."""
    lo, hi = cfg.synthetic_period
    period = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    return synthetic_tiled_repeats(rows, period, seq_len, cfg.model.d_vocab, generator)


def check_data(cfg: TrainConfig) -> None:
    """ValueError for a config whose rows cannot be made: text for a vocabulary other than the
    tokenizer's, windows beside ``synthetic_only``, a period range that is not one."""
    lo, hi = cfg.synthetic_period
    if not 1 <= lo <= hi:
        raise ValueError(f"synthetic_period must be [shortest, longest] with 1 <= shortest <= longest, got {[lo, hi]}")
    if cfg.synthetic_only:
        if cfg.synthetic_schedule:
            raise ValueError("synthetic_only makes every row synthetic: leave synthetic_schedule empty")
    elif cfg.model.d_vocab != VOCAB_SIZE:
        raise ValueError(f"a model with d_vocab={cfg.model.d_vocab} cannot read the course's text (its tokenizer has "
                         f"{VOCAB_SIZE} tokens): train it with synthetic_only=True")


@torch.no_grad()
def evaluate(model: HookedTinyTransformer, n_seqs: int = 256, batch_size: int = 64) -> float:
    """Mean next-token loss on the held-out analysis set."""
    data = analysis_tokens(seq_len=model.cfg.n_ctx, n_seqs=n_seqs)
    losses = [model(data[i:i + batch_size], return_type="loss").item() for i in range(0, len(data), batch_size)]
    return sum(losses) / len(losses)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak (or, with ``decay_steps``, a constant
    rate and a linear decay from ``decay_from`` to ``decay_to`` of the peak over the last
    ``decay_steps``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay_steps is not None:
        decay_start = cfg.steps - cfg.decay_steps
        if step < decay_start:
            return cfg.lr
        progress = (step - decay_start) / max(1, cfg.decay_steps)
        return cfg.lr * (cfg.decay_from + (cfg.decay_to - cfg.decay_from) * progress)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_flops(model: HookedTinyTransformer, batch_size: int, seq_len: int) -> int:
    """FLOPs of one training step's matrix products (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    tokens = torch.zeros(batch_size, seq_len, dtype=torch.long, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(tokens, return_type="loss").backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def mm_gflops(device: str, n: int = 1024, repeats: int = 20) -> float:
    """The device's measured torch.mm rate on n x n float32 matrices, in GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def make_optimizer(model: HookedTinyTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only. (The fused implementation saved about 7 ms of a
    300-600 ms CPU step, within the noise of scripts/bench_lm_step.py, so both steps use this one.)"""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))


def training_step(model: HookedTinyTransformer, optim: torch.optim.Optimizer, tokens: torch.Tensor,
                  fast: bool = False) -> torch.Tensor:
    """One step on ``tokens`` (already on the model's device); returns the loss before the step.
    ``fast`` computes the same loss with ``utils.models.fast_step.fast_loss``."""
    loss = fast_loss(model, tokens) if fast else model(tokens, return_type="loss")
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    return loss


def save_checkpoint(path, model, optim, generator, step: int, history: list, seconds: float, cfg: TrainConfig) -> None:
    """Everything a run needs to continue exactly where it stopped; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optim": optim.state_dict(),
                "generator": generator.get_state(), "history": history, "seconds": seconds,
                "train_config": {k: v for k, v in asdict(cfg).items() if k != "model"},
                "model_config": asdict(cfg.model)}, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, device: str = "cpu", progress: bool = True, checkpoint: Optional[str] = None,
          resume: bool = False, checkpoint_every: Optional[int] = None,
          stop_at: Optional[int] = None, fast: bool = False) -> tuple[HookedTinyTransformer, dict]:
    """Train from scratch, or with ``resume`` continue from ``checkpoint`` (same preset; ``cfg.steps``
    may be larger than before). With ``checkpoint`` set, the state is saved every
    ``checkpoint_every`` steps (default: every eval) and at the end. ``stop_at`` ends the run early
    (at that step, on the full run's schedule), to be resumed later. ``fast``: the faster step
    (``training_step``), same losses up to float rounding; a run may switch at a resume.
    Nothing is written to disk unless ``checkpoint`` is given."""
    check_data(cfg)
    torch.manual_seed(cfg.seed)
    model = HookedTinyTransformer(cfg.model).to(device)
    optim = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    history, first_step, seconds_before = [], 0, 0.0
    if resume:
        if checkpoint is None or not Path(checkpoint).exists():
            raise FileNotFoundError(f"--resume needs an existing checkpoint, got {checkpoint!r}")
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["model_config"] != asdict(cfg.model):
            raise ValueError("the checkpoint was trained with another model config")
        if state["step"] > cfg.steps:
            raise ValueError(f"the checkpoint is at step {state['step']}, past steps={cfg.steps}")
        past = past_synthetic_schedule(state["train_config"], state["step"])
        if past != past_synthetic_schedule({"synthetic_schedule": cfg.synthetic_schedule}, state["step"]):
            raise ValueError(f"the checkpoint's synthetic rows before step {state['step']} were {past}; "
                             "this config would record other ones")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        generator.set_state(state["generator"])
        if state["train_config"].get("synthetic_only", False) != cfg.synthetic_only:
            raise ValueError("the checkpoint was trained with another synthetic_only")
        history, first_step, seconds_before = state["history"], state["step"], state["seconds"]
    every = checkpoint_every or cfg.eval_every
    flops = step_flops(model, cfg.batch_size, cfg.seq_len)
    mm_rate = mm_gflops(device)
    stream = None if cfg.synthetic_only else batches("train", cfg.batch_size, cfg.seq_len, generator)
    if progress:
        print(f"one step: {flops / 1e9:.2f} GFLOP of matrix products (forward + backward); "
              f"torch.mm on this device: {mm_rate:.1f} GFLOP/s", flush=True)
    start = time.time()
    last_step = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = tqdm(range(first_step, last_step), disable=not progress, desc="train", initial=first_step, total=cfg.steps)
    loss = torch.tensor(float("nan"))
    for step in bar:
        if cfg.synthetic_only:
            tokens = synthetic_rows(cfg.batch_size, cfg.seq_len, cfg, generator)
        else:
            tokens = with_synthetic_rows(next(stream), step, cfg, generator)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = training_step(model, optim, tokens.to(device), fast)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            elapsed = seconds_before + time.time() - start
            model.eval()
            rate = (done - first_step) / (time.time() - start)  # steps/s since this process started
            point = {"step": done, "train_loss": round(loss.item(), 4), "lr": lr_at(step, cfg),
                     "seconds": round(elapsed, 1), "tokens_per_second": round(rate * cfg.batch_size * cfg.seq_len),
                     "achieved_gflops": round(rate * flops / 1e9, 2), "torch_mm_gflops": round(mm_rate, 1)}
            if cfg.synthetic_only:
                point.update(copying_point(model))
            elif cfg.track_induction:
                point.update(trajectory_point(model))
            else:
                point["val_loss"] = round(evaluate(model), 4)
            history.append(point)
            model.train()
            if progress:
                bar.write(json.dumps(history[-1]))
        if checkpoint and (done % every == 0 or done == last_step):
            save_checkpoint(checkpoint, model, optim, generator, done, history,
                            seconds_before + time.time() - start, cfg)
    seconds = seconds_before + time.time() - start
    synthetic_tokens = synthetic_token_count(cfg, last_step)
    tokens_seen = last_step * cfg.batch_size * cfg.seq_len - synthetic_tokens
    step_seconds = seconds / max(1, last_step)  # the whole run, evals included: a lower bound on the rate
    report = {
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "model"},
        "tokens_seen": tokens_seen,
        "synthetic_tokens": synthetic_tokens,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(cfg.batch_size * cfg.seq_len / step_seconds),
        "step_gflop": round(flops / 1e9, 3),
        "achieved_gflops": round(flops / step_seconds / 1e9, 2),
        "torch_mm_gflops": round(mm_rate, 2),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "history": history,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
        "date": date.today().isoformat(),
        "torch": torch.__version__,
    }
    if fast:
        report["fast_step"] = True
    return model.cpu().eval(), report


def set_field(cfg: TrainConfig, item: str) -> None:
    """Apply one ``FIELD=VALUE`` override (VALUE parsed as JSON, so 3e-3, 4, [8, 63], null work)."""
    name, sep, value = item.partition("=")
    if not sep or name not in TrainConfig.__dataclass_fields__ or name == "model":
        raise SystemExit(f"--set wants FIELD=VALUE with FIELD a TrainConfig field, got {item!r}")
    parsed = json.loads(value)
    setattr(cfg, name, tuple(parsed) if isinstance(parsed, list) else parsed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out-dir", default=str(MODEL_DIR), help="where to write the weights")
    parser.add_argument("--checkpoint", help="save the full training state here (every eval and at the end)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: eval_every)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--stop-at", type=int, help="stop (and checkpoint) at this step, on the full run's schedule")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field for an experiment, e.g. --set lr=0.002 "
                             "(recorded in the report)")
    parser.add_argument("--fast", action="store_true",
                        help="the faster step (utils.models.fast_step): same losses up to float rounding")
    parser.add_argument("--no-save", action="store_true",
                        help="train (and checkpoint) without writing the bundled files")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = copy.deepcopy(PRESETS[args.name])
    if args.steps:
        cfg.steps = args.steps
    for item in args.set:
        set_field(cfg, item)
    model, report = train(cfg, device=args.device, checkpoint=args.checkpoint, resume=args.resume,
                          checkpoint_every=args.checkpoint_every, stop_at=args.stop_at, fast=args.fast)
    print(json.dumps({k: report[k] for k in ("tokens_seen", "train_seconds", "final_val_loss", "tokens_per_second",
                                             "step_gflop", "achieved_gflops", "torch_mm_gflops")}))
    if args.no_save or (args.stop_at is not None and args.stop_at < cfg.steps):
        return
    report["notes"] = cfg.notes
    save_model(model, args.name, report, out_dir=args.out_dir)
    write_model_card(args.out_dir)


if __name__ == "__main__":
    main()
