"""The SAELens half of scripts/bench_saelens.py; run by it with SAELens's python, not by hand.

Reads ``--data`` (a .safetensors file with ``train`` [N, d_in] and ``eval`` [M, d_in], float32),
trains SAELens's standard L1 SAE (``StandardTrainingSAE``) or its TopK SAE (``TopKTrainingSAE``)
with SAELens's own ``SAETrainer``, fed the ``train`` rows in order, ``--batch-size`` at a time,
and writes what the parent needs to score it with the same code as ours to ``--out``
(.safetensors): ``x_hat`` [M, d_in] (the reconstruction of ``eval``), ``l0`` [M] (active
features per eval token) and ``fired`` [d_sae] (eval tokens each feature fired on). Prints one
line ``SAELENS_RESULT {json}`` with the timing and versions.

Only SAELens's standard settings are used, apart from the numbers that must match ours:
d_in, d_sae, l1_coefficient (or k), lr, its linear lr warm-up and L1 warm-up, batch size, tokens.
This file imports nothing from ``utils`` (SAELens's environment does not have the course's).
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--architecture", choices=("l1", "topk"), default="l1")
    parser.add_argument("--d-sae", type=int, required=True)
    parser.add_argument("--l1-coeff", type=float, default=2.0)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.999))
    parser.add_argument("--lr-warmup-steps", type=int, default=0)
    parser.add_argument("--l1-warmup-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from safetensors.torch import load_file, save_file

    data = load_file(args.data)
    train, held_out = data["train"], data["eval"]
    d_in, batch = train.shape[1], args.batch_size
    steps = len(train) // batch
    tokens = steps * batch

    def batches():  # the parent's activations, in its order: the same batches our trainer sees
        for step in range(steps):
            yield train[step * batch:(step + 1) * batch]

    trainer_cfg = SAETrainerConfig(
        total_training_samples=tokens, train_batch_size_samples=batch, lr=args.lr,
        lr_end=args.lr / 10,  # what SAELens's runner config fills in; unused by the constant schedule
        lr_warm_up_steps=args.lr_warmup_steps, adam_beta1=args.adam_betas[0], adam_beta2=args.adam_betas[1],
        device="cpu",
    )  # logger: no wandb; no checkpoints; lr scheduler "constant" after the warm-up (SAELens defaults)

    start = time.perf_counter()  # weight initialisation counts, as train_sae's does on our side
    torch.manual_seed(args.seed)
    if args.architecture == "l1":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(
            d_in=d_in, d_sae=args.d_sae, l1_coefficient=args.l1_coeff, l1_warm_up_steps=args.l1_warmup_steps))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches())
    sae = trainer.fit()
    seconds = time.perf_counter() - start

    sae.eval()
    with torch.no_grad():
        x_hat, l0, fired = [], [], torch.zeros(args.d_sae)
        for chunk in held_out.split(4096):
            f = sae.encode(chunk)
            if f.is_sparse:
                f = f.to_dense()
            x_hat.append(sae.decode(f))
            l0.append((f != 0).sum(-1).float())
            fired += (f != 0).sum(0).float()
    save_file({"x_hat": torch.cat(x_hat).contiguous(), "l0": torch.cat(l0), "fired": fired}, args.out)
    print("SAELENS_RESULT " + json.dumps({
        "seconds": seconds, "tokens": tokens, "steps": trainer.n_training_steps,
        "tokens_per_second": tokens / seconds, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "sae_lens": sae_lens.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sae_cfg": {k: v for k, v in sae.cfg.to_dict().items() if k != "metadata"},
    }, default=str), flush=True)


if __name__ == "__main__":
    main()
