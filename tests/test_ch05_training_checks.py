"""Chapter 05's training-loop exercise (``check.train_my_sae``): the data tests/test_check_contract.py
runs the contract on (two differently written correct loops; each catalogued mistake as a real broken
loop), and the tests particular to it: the verdict is deterministic for a submission, the notebook
gets the check's own run, a malformed return is refused clearly, and every catalogued broken loop
misses its own band on a second seed too.

Each run trains a 1024-feature SAE for a few hundred steps on one CPU core (about 10 s; the contract
runs the two correct loops on two seeds and every broken loop once), so the file is in the slow tier.
"""
import pytest
import torch
import torch.nn.functional as F

from utils.checks import CheckFailure
from utils.checks import ch05 as check
from utils.checks import ch05_training as training
from utils.checks.core import seed_for
from utils.sae import exercises as ref
from utils.sae.loop import initial_parameters, training_store
from utils.sae.model import geometric_median

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


# --------------------------------------------------------------------------- a second correct loop


def _forward(x, W_enc, b_enc, W_dec, b_dec):
    f = F.linear(x, W_enc.T, b_enc - b_dec @ W_enc).relu()  # the trainer's folded bias
    return f, F.linear(f, W_dec.T, b_dec)


@torch.enable_grad()
def loop_written_otherwise(seed, d_sae, steps, batch_size, l1_coeff, lr, resample_steps, resample_window,
                           bug=None):
    """A correct loop written unlike the reference: folded encoder bias, F.mse_loss, the projection on
    unit rows, F.normalize, the store iterated, the last step each feature fired instead of a counter,
    zero_grad(set_to_none=True). ``bug`` breaks it in one catalogued way (the broken loops below)."""
    store = training_store(seed=seed, batch_size=batch_size)
    p = initial_parameters(store.d_in, d_sae, seed=seed)
    with torch.no_grad():
        p["b_dec"][:] = geometric_median(store.sample(4096))
    optimizer = torch.optim.Adam([p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"]], lr=lr)
    last_fired = torch.zeros(d_sae, dtype=torch.long)
    for step, x in zip(range(1, steps + 1), store):
        f, x_hat = _forward(x, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"])
        mse = F.mse_loss(x_hat, x, reduction="sum") / len(x)
        penalty = {None: f, "l1_decoder": p["W_dec"], "l1_reconstruction": x_hat}.get(bug, f)
        loss = mse + l1_coeff * penalty.abs().sum() / (len(x) if penalty is not p["W_dec"] else d_sae)
        if bug != "no_zero_grad":
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            if bug != "no_projection":
                unit = p["W_dec"] / p["W_dec"].norm(dim=1, keepdim=True)
                p["W_dec"].grad -= (p["W_dec"].grad * unit).sum(1, keepdim=True) * unit
            optimizer.step()
            if bug != "no_renormalisation":
                p["W_dec"][:] = F.normalize(p["W_dec"], dim=1)
            last_fired[(f > 0).any(0)] = step
            due = step in resample_steps and bug != "resample_never"
            dead = step - last_fired >= resample_window
            if due and dead.any():
                sample = store.sample(8192)
                probs = ref.resampling_probabilities(sample, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], l1_coeff)
                chosen = torch.multinomial(probs, int(dead.sum()), replacement=False)
                moments = [{k: optimizer.state[p[k]][s] for k in ("W_enc", "b_enc", "W_dec")}
                           for s in ("exp_avg", "exp_avg_sq")]
                W_enc, b_enc, W_dec, m, v = ref.resample_dead_features(
                    p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], dead, sample[chosen], *moments)
                p["W_enc"][:], p["b_enc"][:], p["W_dec"][:] = W_enc, b_enc, W_dec
                for state, new in zip(moments, (m, v)):
                    for k in state:
                        state[k][:] = new[k]
                last_fired[dead] = step  # a fresh window
    out = {k: v.detach().clone() for k, v in p.items()}
    out["W_dec_exp_avg"] = optimizer.state[p["W_dec"]]["exp_avg"].clone()
    return out


def broken(bug):
    def loop(**setup):
        return loop_written_otherwise(**setup, bug=bug)
    loop.__name__ = f"loop_{bug}"
    return loop


CORRECT = {"train_my_sae": [ref.training_loop, loop_written_otherwise]}
HIDDEN_CASES = [7]
SLOW_EXERCISES = ("train_my_sae",)  # the check trains the loop: contract cases are slow
AS_SUBMITTED = {"train_my_sae": {
    "no decoder renormalisation": broken("no_renormalisation"),
    "parallel gradient kept": broken("no_projection"),
    "L1 on the wrong tensor": broken("l1_decoder"),
    "no zero_grad": broken("no_zero_grad"),
    "never resampled": broken("resample_never"),
}}


# --------------------------------------------------------------------------- particular to this exercise


def test_the_notebook_gets_the_checks_own_run(capsys):
    """The check trains once per case; the notebook reads that run (parameters and outcome) back, and
    the same submission gets the same numbers again (everything is seeded inside the check)."""
    check.train_my_sae(ref.training_loop)
    first = training.trained_run()
    assert first["outcome"]["fve"] >= training.FVE_MIN and set(first["params"]) == set(training.KEYS)
    setup = training._inputs(seed_for("train_my_sae", 0))
    torch.manual_seed(setup["seed"])  # as the check does: resampling's draws come from torch's generator
    again = ref.training_loop(**setup)
    torch.testing.assert_close(again["W_dec"], first["params"]["W_dec"])
    assert training.measure(again) == first["outcome"]
    assert capsys.readouterr().out.strip() == "PASS 05/train_my_sae: 1 cases"


def test_a_malformed_return_is_refused_clearly():
    def returns_the_module(**setup):
        return torch.nn.Linear(2, 2)

    with pytest.raises(CheckFailure, match="return a dict with the keys"):
        check.train_my_sae(returns_the_module)
    setup = training._inputs(1)
    good = {k: v for k, v in zip(training.KEYS, [torch.zeros(512, 1024), torch.zeros(1024), torch.zeros(1024, 512),
                                                 torch.zeros(512), torch.zeros(1024, 512)])}
    with pytest.raises(CheckFailure, match="'W_enc' should be a tensor of shape"):
        training.measure({**good, "W_enc": torch.zeros(1024, 512)}, setup["d_sae"])
    with pytest.raises(CheckFailure, match="NaN"):
        training.measure({**good, "b_dec": torch.full((512,), float("nan"))}, setup["d_sae"])


SECOND_SEED = {**AS_SUBMITTED["train_my_sae"], "L1 on the wrong tensor (x_hat)": broken("l1_reconstruction")}


@pytest.mark.parametrize("name", sorted(SECOND_SEED))
def test_each_broken_loop_misses_its_band_on_a_second_seed(name):
    """Not only on the default case's seed: the signature is the mistake's, not the seed's (and the
    penalty on the reconstruction is named like the one on the decoder weights)."""
    loop = SECOND_SEED[name]
    name = name.split(" (")[0]
    setup = training._inputs(seed_for("train_my_sae", 7))
    torch.manual_seed(setup["seed"])
    wrong = next(m for m in training.TRAIN_LOOP.misconceptions if m.name == name)
    assert training.verdict(training.measure(loop(**setup))) == wrong.implementation(**setup)
