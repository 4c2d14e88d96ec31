"""What to train: one small dataclass for a sparse autoencoder and its training run, and presets.

Every number that shapes a run lives here, so a saved SAE's JSON says exactly how it was made.
Sizes are counted in ACTIVATIONS (one per token position, BOS dropped), not in sequences:
``training_tokens = 1_000_000`` means the SAE sees one million activation vectors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

from utils.models.config import config_from_dict

ARCHITECTURES = ("l1", "topk", "jumprelu")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class SAEConfig:
    # --- the dictionary
    d_in: int = 512  # width of the hooked activation (gelu-1l's MLP: d_mlp = 512)
    d_sae: int = 2048  # number of features (the paper's "autoencoder neurons")
    architecture: Literal["l1", "topk", "jumprelu"] = "l1"
    # lambda of the L1 penalty on feature ACTIVATIONS ("l1" only). Its scale follows the data's:
    # gelu-1l's MLP activations have norm ~15 (total variance ~220), and 2.0 gives L0 ~ 25 there.
    l1_coeff: float = 2.0
    k: int = 32  # features kept per token ("topk" only)
    l0_coeff: float = 1.0  # lambda of the L0 penalty ("jumprelu" only), same data scale as l1_coeff
    jumprelu_bandwidth: float = 0.1  # epsilon of the threshold's pseudo-derivative ("jumprelu" only)
    # Every feature's starting threshold ("jumprelu" only). log(theta) moves at most ~lr per Adam
    # step, so in a short run theta stays within a factor e or so of this: start it near the
    # pre-activation scale the features should end up gated at.
    jumprelu_init_threshold: float = 0.5
    # W_enc starts as this times W_dec's transpose (see model.py). None: 0.1 for "l1" and "topk";
    # 1.0 for "jumprelu", whose pre-activations must start above its thresholds or nothing fires.
    encoder_init_norm: Optional[float] = None
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    b_dec_init_samples: int = 8192  # activations the geometric median / mean is taken over

    # --- optimisation
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 50  # linear warm-up of the learning rate from 0
    lr_decay_fraction: float = 0.0  # final fraction of training over which the lr falls linearly to 0
    l1_warmup_steps: int = 0  # linear warm-up of lambda (L1 or L0 coefficient) from 0
    # Scale the whole gradient down to this norm when it is longer (None: never). On gelu-1l's MLP
    # the gradient norm is ~175 at step 1 and ~10 after step 200 (squared error summed over d_in);
    # Adam's second moment remembers the early ones for ~1/(1 - beta2) steps and shrinks the steps
    # after. At 1.0 every step is clipped, so Adam sees unit-norm gradients throughout. Over 400
    # steps that took FVE 0.833 -> 0.867 and L0 38.7 -> 31.5 (the L1 run of scripts/bench_saelens.py).
    grad_clip_norm: Optional[float] = None
    # The hand-written CPU step of utils/sae/cpu_step.py (same gradients as autograd's, to rounding,
    # ~25% faster, CSR kernels once f is sparse) instead of loss.backward(). Opt-in: the plain
    # autograd step is the reference. Used on a CPU for "l1" and "topk" without AuxK; ignored elsewhere.
    fast_cpu: bool = False
    batch_size: int = 1024  # activations per step (small batches: more steps from the same tokens)
    training_tokens: int = 1_200_000  # activations seen in total

    # --- activations
    model_name: str = "gelu-1l"
    hook_name: str = "blocks.0.mlp.hook_post"
    seq_len: int = 128  # context of the model runs that produce activations (BOS at position 0)
    model_batch_size: int = 64  # sequences per model forward pass
    buffer_size: int = 131_072  # activations kept shuffled; refilled when half have been used

    # --- dead features
    resample_steps: tuple[int, ...] = ()  # steps after which dead features are resampled
    resample_window: int = 100  # dead = did not fire in the last this-many steps
    resample_inputs: int = 16_384  # inputs whose loss decides where dead features are sent

    # --- AuxK, the auxiliary loss of Gao et al. (2024) ("topk" only; off when aux_k is None)
    # A latent is dead for AuxK once it has not fired for aux_dead_steps steps. The aux_k largest
    # pre-activations AMONG THE DEAD latents reconstruct the main reconstruction's error
    # e = x - x_hat (held fixed), and aux_coeff * ||e - e_hat||^2 is added to the loss (see
    # SparseAutoencoder.aux_loss). Gao et al. use aux_k = d_in / 2 and aux_coeff = 1/32.
    aux_k: Optional[int] = None
    aux_coeff: float = 1 / 32
    aux_dead_steps: int = 100

    # --- bookkeeping
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else mps, else cpu
    log_every: int = 25  # steps per logged interval
    notes: str = ""

    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        self.resample_steps = tuple(int(s) for s in self.resample_steps)
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def steps(self) -> int:
        """Optimizer steps: the whole batches that fit in ``training_tokens``."""
        return self.training_tokens // self.batch_size

    @property
    def sparsity_coeff(self) -> float:
        """The lambda the architecture uses: L1 coefficient, L0 coefficient, or 0 for TopK."""
        return {"l1": self.l1_coeff, "jumprelu": self.l0_coeff, "topk": 0.0}[self.architecture]

    @property
    def initial_encoder_norm(self) -> float:
        """``encoder_init_norm``, or the architecture's default when it is None."""
        if self.encoder_init_norm is not None:
            return self.encoder_init_norm
        return 1.0 if self.architecture == "jumprelu" else 0.1

    @property
    def expansion_factor(self) -> float:
        return self.d_sae / self.d_in

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"SAEConfig: {message}")

        for name in ("d_in", "d_sae", "batch_size", "seq_len", "model_batch_size", "buffer_size",
                     "resample_window", "resample_inputs", "b_dec_init_samples", "log_every"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(self.architecture in ARCHITECTURES,
             f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        need(self.b_dec_init in B_DEC_INITS, f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        for name in ("l1_coeff", "l0_coeff"):
            value = getattr(self, name)
            need(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value!r}")
        need(self.encoder_init_norm is None or (math.isfinite(self.encoder_init_norm) and self.encoder_init_norm > 0),
             f"encoder_init_norm must be None or > 0, got {self.encoder_init_norm!r}")
        need(self.k >= 1, f"k must be a positive integer, got {self.k}")
        need(self.aux_k is None or (isinstance(self.aux_k, int) and 1 <= self.aux_k <= self.d_sae),
             f"aux_k must be None or an integer in [1, d_sae={self.d_sae}], got {self.aux_k!r}")
        need(self.aux_k is None or self.architecture == "topk",
             f"aux_k (the AuxK loss) is for 'topk' SAEs, not {self.architecture!r}")
        need(math.isfinite(self.aux_coeff) and self.aux_coeff >= 0,
             f"aux_coeff must be finite and >= 0, got {self.aux_coeff!r}")
        need(isinstance(self.aux_dead_steps, int) and self.aux_dead_steps >= 1,
             f"aux_dead_steps must be a positive integer, got {self.aux_dead_steps!r}")
        need(self.architecture != "topk" or self.k <= self.d_sae, f"k must not exceed d_sae={self.d_sae}, got {self.k}")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold", "lr"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be finite and > 0, got {value!r}")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        need(isinstance(self.fast_cpu, bool), f"fast_cpu must be True or False, got {self.fast_cpu!r}")
        need(self.grad_clip_norm is None or (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0),
             f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm!r}")
        need(self.lr_warmup_steps >= 0 and self.l1_warmup_steps >= 0, "warm-up steps must be >= 0")
        need(0 <= self.lr_decay_fraction <= 1, f"lr_decay_fraction must lie in [0, 1], got {self.lr_decay_fraction}")
        need(self.training_tokens >= self.batch_size,
             f"training_tokens ({self.training_tokens}) must be at least one batch ({self.batch_size})")
        need(self.seq_len >= 2, f"seq_len must be >= 2 (position 0 is BOS and is dropped), got {self.seq_len}")
        # Half the buffer is handed out between refills: it must hold at least one whole batch,
        # and resampling and the b_dec initialisation draw their samples from it.
        need(self.buffer_size >= 2 * self.batch_size,
             f"buffer_size ({self.buffer_size}) must be at least 2 * batch_size ({2 * self.batch_size})")
        need(self.resample_inputs <= self.buffer_size and self.b_dec_init_samples <= self.buffer_size,
             "resample_inputs and b_dec_init_samples must not exceed buffer_size (they are drawn from the buffer)")
        need(list(self.resample_steps) == sorted(set(self.resample_steps))
             and all(0 < s < self.steps for s in self.resample_steps),
             f"resample_steps must be increasing steps in (0, steps={self.steps}), got {self.resample_steps}")
        device = self.device.split(":")[0]
        need(device in DEVICES, f"device must be one of {DEVICES} (or 'cuda:N'), got {self.device!r}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        data = asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        data["resample_steps"] = list(self.resample_steps)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SAEConfig":
        return config_from_dict(cls, data)

    def replace(self, **changes) -> "SAEConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


# The CPU presets were tuned with scripts/bench_sae_cpu.py (numbers in its docstring). The GPU
# preset's lambda is carried over from the CPU tuning, untuned; measured once on an H200
# (2026-12-04, torch 2.11, `python -m utils.sae gpu --out STEM --device cuda`): 68 s of training
# (439k tokens/s, model forward included), held-out L0 16.4, FVE 0.944, CE loss recovered 0.982,
# dense 0, but 31% of the features dead on the 65k evaluation tokens (17% in the last training
# window): tuning lambda and the resampling schedule for this size is open.
PRESETS: dict[str, SAEConfig] = {
    "cpu": SAEConfig(
        d_sae=2048, architecture="l1", l1_coeff=2.0, lr=1e-3, batch_size=1024, training_tokens=819_200,
        lr_warmup_steps=50, l1_warmup_steps=150, grad_clip_norm=1.0, buffer_size=131_072,
        resample_steps=(250, 500), resample_window=200,
        notes="L1 SAE (4x dictionary) on gelu-1l's MLP, 800 steps: trains in under 3 minutes on ONE core "
              "(~100 s measured, through the opt-in fast_cpu step). Tuning runs at lambda 3 without the lambda "
              "warm-up ended with 20-26% dead "
              "features; this one ends with under 1%. Clipping the gradient norm to 1 took held-out L0 "
              "27.4 -> 23.3, FVE 0.857 -> 0.875, CE recovered 0.944 -> 0.952. The bundled gelu-1l-mlp-l1* "
              "SAEs are this recipe without clipping on 1.2M activations (1171 steps, resampling at 300, 600).",
    ),
    "cpu-topk": SAEConfig(
        d_sae=2048, architecture="topk", k=32, lr=1e-3, batch_size=1024, training_tokens=1_200_000,
        lr_warmup_steps=50, buffer_size=131_072, resample_steps=(300, 600, 900), resample_window=200,
        notes="TopK SAE (k=32, 4x dictionary) on gelu-1l's MLP, 1.2M activations (1.5x the 'cpu' preset's). "
              "Not clipped: clipping the gradient norm to 1 raised held-out FVE 0.927 -> 0.933 but left 17% "
              "of the features dead instead of 11%.",
    ),
    "cpu-jumprelu": SAEConfig(
        d_sae=2048, architecture="jumprelu", l0_coeff=1.0, jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.1,
        lr=1e-3, batch_size=1024, training_tokens=1_200_000, lr_warmup_steps=50, l1_warmup_steps=150,
        buffer_size=131_072, resample_steps=(300, 600), resample_window=200,
        notes="JumpReLU SAE (L0 penalty, learned thresholds) on gelu-1l's MLP, 1.2M activations (1.5x 'cpu').",
    ),
    "gpu": SAEConfig(
        d_sae=16_384, architecture="l1", l1_coeff=2.0, lr=1e-3, batch_size=4096, training_tokens=30_000_000,
        lr_warmup_steps=200, l1_warmup_steps=400, lr_decay_fraction=0.2, grad_clip_norm=1.0, buffer_size=1_048_576,
        model_batch_size=256, resample_steps=(1500, 3000, 4500), resample_window=500, resample_inputs=65_536,
        notes="L1 SAE with a 32x dictionary on gelu-1l's MLP. 30M tokens are ~9 passes over the 3.4M-token "
              "training split (in fresh random windows). About 70 s of training on an H200 (measured once: "
              "L0 16.4, FVE 0.944, CE recovered 0.982, 31% dead on 65k held-out tokens).",
    ),
}


def preset(name: str, **overrides) -> SAEConfig:
    """A copy of a preset, optionally with fields changed: ``preset("cpu", d_sae=1024)``."""
    if name not in PRESETS:
        raise ValueError(f"no SAE preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
