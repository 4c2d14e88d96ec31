"""Train, evaluate and save the bundled transcoders of a model:

    python -m utils.attribution train                  # both MLPs of gelu-2l -> utils/assets/transcoders/
    python -m utils.attribution train --layers 1 --steps 500 --out /tmp/tc   # a quick one elsewhere
    python -m utils.attribution evaluate               # the bundled ones' metrics, printed

Each transcoder's card (``NAME.json``) holds its config, its training log's last record, and its
metrics on held-out text: FVE of its MLP's output, L0, dead fraction, and the next-token loss of the
model clean, with EVERY MLP replaced by its transcoder, and with every MLP zero-ablated.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from utils.attribution.metrics import evaluate_transcoders
from utils.attribution.saving import TRANSCODER_DIR, bundled_name, load_transcoders, save_transcoder
from utils.attribution.training import train_transcoder
from utils.attribution.transcoder import TranscoderConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.attribution", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--model", default="gelu-2l")
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="default: every layer")
    parser.add_argument("--d-trans", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TRANSCODER_DIR)
    args = parser.parse_args(argv)

    from utils.models import load_model

    model = load_model(args.model, device="cpu")
    layers = args.layers if args.layers is not None else list(range(model.cfg.n_layers))
    if args.command == "evaluate":
        for record in evaluate_transcoders(model, load_transcoders(args.model, model.cfg.n_layers)):
            print(json.dumps(record))
        return
    trained = []
    for layer in layers:
        cfg = TranscoderConfig(layer=layer, d_in=model.cfg.d_model, d_out=model.cfg.d_model, d_trans=args.d_trans,
                               k=args.k, model_name=args.model, seed=args.seed + layer)
        tc, log = train_transcoder(cfg, model, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        print(f"layer {layer}: {log['seconds']:.0f} s, {log['tokens']:,} tokens, last log {log['history'][-1]}")
        trained.append((tc, log))
    # the loss with every MLP replaced needs them all: evaluate together, then save each with its card
    records = evaluate_transcoders(model, [tc for tc, _ in trained])
    for (tc, log), record in zip(trained, records):
        metrics = {**record, "train_seconds": round(log["seconds"], 1), "train_tokens": log["tokens"],
                   "train_steps": log["steps"], "batch_size": log["batch_size"], "lr": log["lr"],
                   "torch_threads": torch.get_num_threads(), "last_log": log["history"][-1]}
        path = save_transcoder(tc, args.out / bundled_name(args.model, tc.cfg.layer), metrics)
        print(f"saved {path}: {json.dumps(record)}")


if __name__ == "__main__":
    main()
