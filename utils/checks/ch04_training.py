"""Checks for chapter 04, exercise 3b: the student's own training loop, graded on its OUTCOME.

``fn(W, b, importance, feature_probability, steps, batch_size, lr) -> (W, b)`` trains a stack of
5-feature, 2-dimensional toy models from the weights it is given (Adam, a fresh batch every
step, the student's own toy_forward, generate_batch and loss). The check seeds torch's global
random stream, calls it ONCE per case on eight instances (five dense, 1 - S = 1; three sparse,
1 - S = 0.03; importance 0.8^i; 3000 steps of 256 rows at lr 0.01), and measures the trained
weights in this, trusted, process: the held-out loss of every instance against the loss of the
zero model, which features the dense instances keep and at what angle, whether the sparse ones
superpose.

The outcome is graded by BANDS, in order; the first band the weights miss decides the verdict.
Every correct loop reaches every band from any seed (measured while the bands were set: 45 dense
and 45 sparse instances of correct loops over 15 seeds, dropped features below 0.07, sparse loss
8-9% of the zero model's; tests/test_ch04_training_checks.py runs three correct loops and, marked
slow, four more seeds); each catalogued broken loop misses its own band first, so the verdict
names it. The outcome is the vector of band verdicts, 1 up to the first
miss and 0 from there on: the reference is all ones, and each misconception's "implementation" is
the vector it produces. A miss no catalogued loop explains is described in words.

The notebook plots the weights of the check's own run (``last_run``): the loop is trained once.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, not_callable_message, run_check

CHAPTER = "04"

# --------------------------------------------------------------------------- 7. the training loop

N_FEATURES, D_HIDDEN = 5, 2
DENSE, SPARSE = 1.0, 0.03  # feature probabilities 1 - S
N_DENSE, N_SPARSE = 5, 3  # instances per feature probability (five dense: the importance test averages them)
IMPORTANCE_DECAY = 0.8  # I_i = 0.8^i: feature 0 matters most
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 3000, 256, 0.01
HELD_OUT_ROWS = 50_000


def settings() -> torch.Tensor:
    """The feature probability of each instance, [inst]: dense, then sparse."""
    return torch.tensor([DENSE] * N_DENSE + [SPARSE] * N_SPARSE)


def _train_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    p = settings()
    k, m, n = len(p), D_HIDDEN, N_FEATURES
    return {
        "W": torch.randn(k, m, n, generator=g) * math.sqrt(2 / (m + n)),  # ToyModel's initialisation
        "b": torch.zeros(k, n),
        "importance": (IMPORTANCE_DECAY ** torch.arange(n, dtype=torch.float32)).expand(k, n).contiguous(),
        "feature_probability": p[:, None].expand(k, n).contiguous(),
        "steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH, "lr": TRAIN_LR, "seed": seed,
    }


# ---- measuring a trained stack (trusted: runs in the checking process, never in the student's)


def _held_out_loss(W: torch.Tensor, b: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Per-instance importance-weighted loss on a fixed held-out batch, [inst]."""
    p, importance = inputs["feature_probability"], inputs["importance"]
    g = torch.Generator().manual_seed(inputs["seed"] + 1)
    shape = (p.shape[0], HELD_OUT_ROWS, p.shape[1])
    x = (torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) < p[:, None, :])).to(W.dtype)
    out = torch.relu(x @ (W.transpose(1, 2) @ W) + b[:, None, :])
    return ((out - x).square().mean(1) * importance).sum(-1)


@dataclass
class Measures:
    """What the check reads off a trained stack (one entry per instance where it is a tensor)."""

    changed_W: float  # max |W - W0|
    changed_b: float  # max |b - b0|
    loss: torch.Tensor  # held-out loss, [inst]
    zero_loss: torch.Tensor  # held-out loss of the zero model (W = 0, b = 0): every output 0
    norms: torch.Tensor  # ||W_i||, [inst, feat]
    cos: torch.Tensor  # cosine of W_i and W_j, [inst, feat, feat]
    superposition: torch.Tensor  # sum_{j != i} (W_i_hat . W_j)^2, [inst, feat]
    b: torch.Tensor
    moved: torch.Tensor  # ||W_i - W0_i||, how far each column travelled, [inst, feat]

    @property
    def relative(self) -> torch.Tensor:
        """Held-out loss as a fraction of the zero model's, [inst]: 1 = learned nothing."""
        return self.loss / self.zero_loss


def measure(W: torch.Tensor, b: torch.Tensor, inputs: dict) -> Measures:
    W, b = W.double(), b.double()
    norms = W.norm(dim=1)
    W_hat = W / (norms[:, None, :] + 1e-12)
    overlaps = (W_hat.transpose(1, 2) @ W).square()
    return Measures(
        changed_W=float((W - inputs["W"].double()).abs().max()),
        changed_b=float((b - inputs["b"].double()).abs().max()),
        loss=_held_out_loss(W, b, _double(inputs)),
        zero_loss=_held_out_loss(torch.zeros_like(W), torch.zeros_like(b), _double(inputs)),
        norms=norms,
        cos=W_hat.transpose(1, 2) @ W_hat,
        superposition=overlaps.sum(-1) - overlaps.diagonal(dim1=1, dim2=2),
        b=b,
        moved=(W - inputs["W"].double()).norm(dim=1),
    )


def _double(inputs: dict) -> dict:
    return {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _which(setting: float) -> torch.Tensor:
    return (settings() == setting).nonzero().flatten()


# ---- the bands, in order: the first one missed decides the verdict


@dataclass(frozen=True)
class Band:
    """What every correct loop reaches; ``missed(m)`` says in words how these weights fall short.
    ``misconception``: the catalogued broken loop that misses this band first (None: none does)."""

    name: str
    reached: Callable[[Measures], bool]
    missed: Callable[[Measures], str]
    misconception: Optional[str] = None


EXPLODED = 10.0  # held-out loss above this many times the zero model's: the loop climbed the loss
RUNAWAY = 5.0  # a trained model keeps |b| and ||W_i|| below about 1.2
SPARSE_LEARNED = 0.25  # mean held-out loss of the sparse instances, as a fraction of the zero model's
# Dense: dropped features' norms (correct loops: below 0.07; a model can take longer to let go of
# feature 2, so the band asks it of most instances, not all), kept ones', |cos| between kept ones.
DROPPED, KEPT, ORTHOGONAL = 0.1, 0.9, 0.1
# Dense instances, mean over them of (mean norm of features 0-1) - (mean norm of features 2-4): about 1 for
# a correct loop, 0 on average for a loop blind to importance (which features it keeps is up to the
# initialisation), 0.6 or more for one that overfits a single batch (it still prefers 0 and 1).
PREFERS_IMPORTANT = 0.5


def _norms(m: Measures, k: int) -> str:
    return ", ".join(f"{v:.2f}" for v in m.norms[k].tolist())


def _top_two(m: Measures, k: int) -> bool:
    """Features 0 and 1 are instance k's two longest columns, both represented."""
    return sorted(m.norms[k].topk(2).indices.tolist()) == [0, 1] and bool((m.norms[k, :2] > 0.5).all())


def _preference(m: Measures) -> float:
    d = _which(DENSE)
    return float((m.norms[d, :2].mean(-1) - m.norms[d, 2:].mean(-1)).mean())


def _dropped(m: Measures, k: int) -> bool:
    return _top_two(m, k) and bool((m.norms[k, 2:] <= DROPPED).all())


def _converged(m: Measures, k: int) -> bool:
    return bool((m.norms[k, :2] >= KEPT).all() and m.cos[k, 0, 1].abs() <= ORTHOGONAL)


def _superposed(m: Measures, k: int) -> bool:
    kept = m.norms[k] > 0.5
    return int(kept.sum()) >= 4 and bool((m.superposition[k][kept] >= 0.5).all())


def _every(setting: float, test: Callable[[Measures, int], bool]) -> Callable[[Measures], bool]:
    return lambda m: all(test(m, k) for k in _which(setting).tolist())


def _most(setting: float, test: Callable[[Measures, int], bool]) -> Callable[[Measures], bool]:
    return lambda m: 2 * sum(test(m, k) for k in _which(setting).tolist()) > len(_which(setting))


def _first_failing(setting: float, test: Callable[[Measures, int], bool]) -> Callable[[Measures], int]:
    return lambda m: next(k for k in _which(setting).tolist() if not test(m, k))


def _dense_words(test: Callable[[Measures, int], bool]) -> Callable[[Measures], str]:
    def words(m: Measures) -> str:
        k = _first_failing(DENSE, test)(m)
        return f"dense instance {k}: feature norms {_norms(m, k)}, cos(W_0, W_1) = {float(m.cos[k, 0, 1]):.2f}."
    return words


BANDS = (
    Band("the weights change",
         lambda m: m.changed_W > 1e-6 or m.changed_b > 1e-6,
         lambda m: "W and b came back exactly as they went in.",
         "weights never change"),
    Band("the bias trains",
         lambda m: m.changed_b > 1e-6,
         lambda m: "b came back exactly as it went in, while W changed.",
         "bias never trained"),
    Band("the loss does not grow",
         lambda m: bool((m.relative[_which(DENSE)] <= EXPLODED).all()),
         lambda m: f"the dense held-out loss is {float(m.relative[_which(DENSE)].max()):.3g} times the zero model's.",
         "gradient ascent"),
    Band("the weights stay of order 1",
         lambda m: float(m.b.abs().max()) < RUNAWAY and float(m.norms.max()) < RUNAWAY,
         lambda m: f"the largest |b| is {float(m.b.abs().max()):.3g}, the longest column {float(m.norms.max()):.3g}.",
         "no zero_grad"),
    Band("the sparse instances learn",
         lambda m: float(m.relative[_which(SPARSE)].mean()) <= SPARSE_LEARNED,
         lambda m: (f"at 1 - S = {SPARSE} the held-out loss is still "
                    f"{', '.join(f'{v:.0%}' for v in m.relative[_which(SPARSE)].tolist())} of the zero model's "
                    f"(correct loops: about 9%). Training went far too slowly: use torch.optim.Adam with the lr "
                    "and the number of steps the function is given."),
         None),
    Band("the dense instances prefer the important features",
         lambda m: _preference(m) >= PREFERS_IMPORTANT,
         lambda m: (f"on average over the dense instances, features 0-1 are only {_preference(m):.2f} longer than "
                    "features 2-4 (a correct loop: about 1)."),
         "importance not applied"),
    Band("most dense instances keep features 0 and 1 and drop features 2-4",
         _most(DENSE, _dropped), _dense_words(_dropped), "one batch reused"),
    Band("the dense instances converge: features 0 and 1 orthogonal at norm 1",
         _every(DENSE, _converged),
         lambda m: ("the dense models stopped short of their optimum (features 0 and 1 at norm 1 and orthogonal): "
                    + _dense_words(_converged)(m) + " Use torch.optim.Adam with the lr and the number of steps "
                    "the function is given."),
         None),
    Band("the sparse instances superpose",
         _every(SPARSE, _superposed),
         lambda m: (f"at 1 - S = {SPARSE} every instance should represent at least four features (norm > 0.5), "
                    "each sharing its direction (superposition >= 0.5); instance "
                    f"{_first_failing(SPARSE, _superposed)(m)} has norms "
                    f"{_norms(m, _first_failing(SPARSE, _superposed)(m))}."),
         None),
)


def outcome(m: Measures) -> torch.Tensor:
    """The band verdicts: 1 for every band up to the first one missed, 0 from there on."""
    verdict = torch.zeros(len(BANDS), dtype=torch.float64)
    for i, band in enumerate(BANDS):
        if not band.reached(m):
            break
        verdict[i] = 1.0
    return verdict


def _missing_from(band: int) -> Callable[..., torch.Tensor]:
    """The outcome of a loop whose first miss is BANDS[band] (a misconception's 'implementation')."""
    def verdict(**inputs) -> torch.Tensor:
        return (torch.arange(len(BANDS)) < band).double()
    return verdict


def _train_reference(**inputs) -> torch.Tensor:
    """A correct loop reaches every band (what it trains is graded by the bands, not compared)."""
    return torch.ones(len(BANDS), dtype=torch.float64)


EXPLANATIONS = {
    "weights never change": (
        "Your loop returned the weights it started from: nothing was trained. Usually the optimiser was built "
        "on a COPY (torch.optim.Adam([W.clone(), ...])) while the forward pass used the other tensors, or the "
        "function returns the tensors it was given instead of the trained ones, or opt.zero_grad() sits between "
        "loss.backward() and opt.step(). Build the optimiser on the very leaf tensors (requires_grad=True) that "
        "the forward pass uses, and return those."),
    "bias never trained": (
        "W changed but b came back exactly as it went in: the optimiser was given W only (Adam([W], ...)). The "
        "sparse models need a negative bias to cut off interference; train both: Adam([W, b], lr=lr)."),
    "gradient ascent": (
        "The loss GREW by orders of magnitude: the loop climbs the loss instead of descending it (a negative "
        "learning rate, maximize=True, a step along +grad, or backward() on -loss). Call loss.backward() on the "
        "loss itself and let opt.step() move against the gradient with the lr given."),
    "no zero_grad": (
        "The weights ran away (biases of size tens, where a trained model keeps them within about 0.5): the "
        "gradients piled up from step to step. PyTorch ADDS every backward() into .grad; call opt.zero_grad() "
        "every step, before loss.backward()."),
    "importance not applied": (
        "In the dense regime the model must keep the two most IMPORTANT features (0 and 1) and drop the rest; "
        "yours kept others, as if every feature mattered equally. The loss the loop minimises must weight each "
        "feature's squared error by importance[k, i] (your weighted_loss with the importance given), not a plain "
        "squared error or torch.ones."),
    "one batch reused": (
        "Most dense models kept features 2-4 that fresh data makes them drop: they fitted the accidents of ONE "
        "batch, seen again and again (a batch drawn once, before the loop). Draw a fresh batch with your "
        "generate_batch inside the loop, every step. (If you do, check the loop runs all the steps at the lr "
        "given.)"),
}

_INDEX = {band.misconception: i for i, band in enumerate(BANDS) if band.misconception}

TRAIN_TOY = Exercise(
    chapter=CHAPTER,
    name="train_toy",
    reference=_train_reference,
    make_inputs=_train_inputs,
    misconceptions=tuple(Misconception(name, EXPLANATIONS[name], _missing_from(_INDEX[name])) for name in EXPLANATIONS),
    rtol=0.0,
    atol=0.5,  # verdicts are 0 or 1
    default_cases=(0,),  # one training run per check: each case trains six models for 3000 steps
)


@dataclass
class TrainedRun:
    """What the check trained with the student's loop: the notebook plots these weights."""

    W: torch.Tensor
    b: torch.Tensor
    importance: torch.Tensor
    feature_probability: torch.Tensor
    seconds: float
    measures: Measures


_LAST: list = []


def last_run() -> TrainedRun:
    """The weights your loop trained in the last call of ``check.train_toy``."""
    if not _LAST:
        raise RuntimeError("No training run yet: run check.train_toy(train_toy) first.")
    return _LAST[-1]


def _unpack(result, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(result, (tuple, list)) and len(result) == 2
            and all(isinstance(t, torch.Tensor) for t in result)):
        raise CheckFailure(f"train_toy should return the trained (W, b), two tensors; it returned "
                           f"{type(result).__name__}.")
    W, b = (t.detach().float().cpu() for t in result)
    if tuple(W.shape) != tuple(inputs["W"].shape) or tuple(b.shape) != tuple(inputs["b"].shape):
        raise CheckFailure(f"train_toy returned W {tuple(W.shape)} and b {tuple(b.shape)}; expected the shapes it "
                           f"was given, W {tuple(inputs['W'].shape)} and b {tuple(inputs['b'].shape)}.")
    if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
        raise CheckFailure("train_toy: the trained weights contain NaN or inf: training diverged. Use the lr "
                           "given, Adam, and a loss averaged over the batch.")
    return W, b


def _run_student_loop(fn):
    def wrapper(W, b, importance, feature_probability, steps, batch_size, lr, seed):
        inputs = {"W": W.clone(), "b": b.clone(), "importance": importance, "feature_probability": feature_probability,
                  "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
        with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the notebook's RNG
            torch.manual_seed(seed)
            start = time.perf_counter()
            try:
                result = fn(W, b, importance, feature_probability, steps, batch_size, lr)
            except RuntimeError as exc:
                if "does not require grad" in str(exc):
                    raise CheckFailure(
                        "train_toy: loss.backward() found no gradient to compute: checks (and graders) call your "
                        "function inside torch.no_grad(). Like sp.train, run the loop inside "
                        "`with torch.enable_grad():`, on leaf tensors with requires_grad=True.") from None
                raise
            seconds = time.perf_counter() - start
        W_t, b_t = _unpack(result, inputs)
        m = measure(W_t, b_t, inputs)
        _LAST[:] = [TrainedRun(W_t, b_t, importance.clone(), feature_probability.clone(), seconds, m)]
        verdict = outcome(m)
        if verdict.sum() < len(BANDS):
            band = BANDS[int(verdict.sum())]
            if band.misconception is None:  # no catalogued loop explains it: say what is off
                raise CheckFailure(f"train_toy: a correct loop reaches '{band.name}'; yours does not: "
                                   f"{band.missed(m)}")
        return verdict
    return wrapper


def train_toy(fn, cases: Cases = None) -> None:
    """Check ``fn(W, b, importance, feature_probability, steps, batch_size, lr) -> (W, b)``: a training
    loop, graded on what it trains (see the module docstring). The weights it trained on the first
    case are kept for the notebook's plots: ``last_run()``."""
    if not callable(fn):
        raise CheckFailure(not_callable_message("train_toy", fn))
    run_check(TRAIN_TOY, _run_student_loop(fn), cases)
