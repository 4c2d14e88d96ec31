"""Chapter 03's hook checks (utils/checks/ch03_hooks.py): the data tests/test_check_contract.py runs
the contract on (correct hooks written other ways), and the tests particular to them: a hook that
edits in place and returns nothing, or returns the wrong shape, is refused with a clear message;
mistakes written as a student writes them are named; the check really runs the hook inside the
model's forward pass (an intervention the reference agrees with); and the grader can plan the
checks (everything the student's hook receives can be sent to another process)."""
import functools

import check_harness as harness
import pytest
import torch

from utils.checks import CheckFailure, core
from utils.checks import ch03_hooks as check
from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import grading_session, seed_for
from utils.grading import codec
from utils.induction import hooks as ref
from utils.induction.copying import per_token_loss
from utils.models.evaluation import in_context_learning_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- other correct versions


def zero_where(z, hook, heads):
    keep = torch.ones(z.shape[2], dtype=torch.bool)
    keep[list(heads)] = False
    return torch.where(keep[None, None, :, None], z, torch.zeros_like(z))


def zero_mask_multiply(z, hook, heads):
    mask = torch.ones(1, 1, z.shape[2], 1)
    for h in heads:
        mask[0, 0, h] = 0.0
    return z * mask


def mean_loop(z, hook, heads):
    out = z.clone()
    for h in heads:
        out[:, :, h] = z[:, :, h].reshape(-1, z.shape[-1]).mean(0)
    return out


def mean_einops_style(z, hook, heads):
    means = z.mean(dim=(0, 1))  # [head, d_head]
    chosen = torch.zeros(z.shape[2], dtype=torch.bool)
    chosen[list(heads)] = True
    return torch.where(chosen[None, None, :, None], means.expand_as(z), z)


def patch_where(z, hook, clean_z, head, pos):
    at = torch.zeros(z.shape[1], z.shape[2], dtype=torch.bool)
    at[pos, head] = True
    return torch.where(at[None, :, :, None], clean_z, z)


def patch_cat(z, hook, clean_z, head, pos):
    out = z.clone()
    out[:, pos] = torch.cat([z[:, pos, :head], clean_z[:, pos, head:head + 1], z[:, pos, head + 1:]], dim=1)
    return out


def icl_with_partials(tokens, heads, mean=True):
    """As the notebook writes it: one hook per layer, the heads bound with functools.partial."""
    model = attn_only_2l()
    hook = ref.mean_ablation_hook if mean else ref.zero_ablation_hook
    layers = sorted({layer for layer, _ in heads})
    fwd_hooks = [(f"blocks.{layer}.attn.hook_z", functools.partial(hook, heads=[h for l, h in heads if l == layer]))
                 for layer in layers]
    logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    return in_context_learning_score(per_token_loss(logits, tokens))


def icl_by_hand(tokens, heads, mean=True):
    """Ablation written into the hooks directly, the losses by cross_entropy, the windows by hand."""
    model = attn_only_2l()

    def make(hs):
        def hook_fn(z, hook):
            z = z.clone()
            z[:, :, hs] = z[:, :, hs].mean((0, 1), keepdim=True) if mean else 0.0
            return z
        return hook_fn

    fwd_hooks = [(f"blocks.{layer}.attn.hook_z", make([h for l, h in heads if l == layer]))
                 for layer in {layer for layer, _ in heads}]
    logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return (losses[:, 99:127].mean() - losses[:, 4:15].mean()).item()


CORRECT = {
    "zero_ablation_hook": [ref.zero_ablation_hook, zero_where, zero_mask_multiply],
    "mean_ablation_hook": [ref.mean_ablation_hook, mean_loop, mean_einops_style],
    "patch_head_position_hook": [ref.patch_head_position_hook, patch_where, patch_cat],
    "ablated_icl_score": [icl_with_partials, icl_by_hand],
}
HIDDEN_CASES = (7, 8)
# The hook checks' catalogue holds forward-pass runners; a student submits the hook inside each.
AS_SUBMITTED = {name: {m.name: m.implementation.hook for m in harness.exercise(check, name).misconceptions}
                for name in ("zero_ablation_hook", "mean_ablation_hook", "patch_head_position_hook")}
# ablated_icl_score's later default cases mean-ablate (or zero-ablate) one layer only, where some of
# its variants coincide with the truth; the first case tells every one apart.
TOLD_APART_ON_THE_FIRST_CASE_ONLY = ("ablated_icl_score",)


# --------------------------------------------------------------------------- a hook's return value


def in_place_zero(z, hook, heads):
    z[:, :, heads] = 0.0  # edits the live activation and returns None


def returns_the_slice(z, hook, heads):
    return z[:, :, heads] * 0


@pytest.mark.parametrize("check_fn", [check.zero_ablation_hook, check.mean_ablation_hook])
def test_a_hook_that_edits_in_place_and_returns_nothing_is_refused(check_fn, capsys):
    with pytest.raises(CheckFailure, match="returned None.*build a new tensor"):
        check_fn(in_place_zero)
    with pytest.raises(CheckFailure, match=r"returned shape \[.*must return a tensor shaped like z"):
        check_fn(returns_the_slice)
    assert capsys.readouterr().err == ""


def test_the_patching_hook_must_return_a_tensor(capsys):
    def in_place(z, hook, clean_z, head, pos):
        z[:, pos, head] = clean_z[:, pos, head]

    with pytest.raises(CheckFailure, match="returned None"):
        check.patch_head_position_hook(in_place)
    with pytest.raises(CheckFailure, match="returned a float"):
        check.patch_head_position_hook(lambda z, hook, clean_z, head, pos: 0.0)


# --------------------------------------------------------------------------- mistakes as students write them


def mean_over_d_head(z, hook, heads):
    out = z.clone()
    out[:, :, heads] = z[:, :, heads].mean(-1, keepdim=True)
    return out


def mean_ablation_by_zeroing(z, hook, heads):
    out = z.clone()
    out[:, :, heads] = 0
    return out


def ablated_clone_dropped(z, hook, heads):
    ablated = z.clone()
    ablated[:, :, heads] = 0
    return z


def patch_all_positions(z, hook, clean_z, head, pos):
    out = z.clone()
    out[:, :, head] = clean_z[:, :, head]
    return out


def icl_without_hooks(tokens, heads, mean=True):
    model = attn_only_2l()
    return in_context_learning_score(per_token_loss(model(tokens), tokens))


@pytest.mark.parametrize("check_fn,fn,mistake", [
    (check.mean_ablation_hook, mean_over_d_head, "mean over d_head"),
    (check.mean_ablation_hook, mean_ablation_by_zeroing, "zeroed instead of mean-ablated"),
    (check.zero_ablation_hook, ablated_clone_dropped, "input returned"),
    (check.patch_head_position_hook, patch_all_positions, "every position patched"),
    (check.ablated_icl_score, icl_without_hooks, "nothing ablated"),
], ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", ""))
def test_student_mistakes_are_named(check_fn, fn, mistake, capsys):
    ex = harness.exercise(check, check_fn.__name__)
    harness.assert_student_mistake_named(check_fn, fn, harness.explanation(ex, mistake), capsys)


# --------------------------------------------------------------------------- the hooks act inside the model


def test_the_check_runs_the_hook_inside_the_forward_pass():
    """Zero-ablating every head of both layers leaves an attention-only model with the direct path
    alone: the logits of the check's runner equal embed -> unembed computed by hand."""
    model = attn_only_2l()
    inputs = check.ZERO_ABLATION_HOOK.make_inputs(seed_for("zero_ablation_hook", 0))
    tokens = inputs["tokens"]
    with torch.no_grad():
        hooks = [(f"blocks.{layer}.attn.hook_z", functools.partial(ref.zero_ablation_hook, heads=list(range(8))))
                 for layer in range(2)]
        ablated = model.run_with_hooks(tokens, fwd_hooks=hooks)
        direct = model.ln_final(model.W_E[tokens] + model.b_O.sum(0)) @ model.W_U + model.b_U
    assert torch.allclose(ablated, direct, atol=1e-4)
    # and the check's runner is that forward pass with one layer's hook
    runner = check.in_forward_pass(ref.zero_ablation_hook, "zero_ablation_hook")
    with torch.no_grad():
        one_layer = model.run_with_hooks(tokens, fwd_hooks=hooks[inputs["layer"]:inputs["layer"] + 1])
    assert torch.allclose(runner(tokens, inputs["layer"], heads=list(range(8))), one_layer)


def test_patching_one_position_changes_that_position_and_later_ones_only():
    """Causality, through the check's runner: patching one head at position p leaves every logit
    before p as the corrupted run's, changes the logits at p, and patching from the run itself
    changes nothing."""
    inputs = check.PATCH_HEAD_POSITION_HOOK.make_inputs(seed_for("patch_head_position_hook", 0))
    tokens, layer, pos = inputs["tokens"], inputs["layer"], inputs["pos"]
    model = attn_only_2l()
    with torch.no_grad():
        corrupted_logits, cache = model.run_with_cache(tokens)
    runner = check.in_forward_pass(ref.patch_head_position_hook, "patch_head_position_hook")
    patched = runner(tokens, layer, clean_z=inputs["clean_z"], head=inputs["head"], pos=pos)
    assert torch.allclose(patched[:, :pos], corrupted_logits[:, :pos], atol=1e-5)
    assert not torch.allclose(patched[:, pos], corrupted_logits[:, pos], atol=1e-3)
    own = cache[f"blocks.{layer}.attn.hook_z"]
    assert torch.allclose(runner(tokens, layer, clean_z=own, head=inputs["head"], pos=pos), corrupted_logits, atol=1e-5)


def test_mean_ablation_keeps_the_average_output_zero_ablation_does_not():
    """Mean-ablating a head leaves the model's mean output over the batch and positions unchanged
    through that head's W_O; zeroing removes it."""
    inputs = check.MEAN_ABLATION_HOOK.make_inputs(seed_for("mean_ablation_hook", 0))
    z = torch.randn(3, 7, 8, 4)
    heads = inputs["heads"]
    mean_out, zero_out = ref.mean_ablation_hook(z, None, heads), ref.zero_ablation_hook(z, None, heads)
    assert torch.allclose(mean_out.mean((0, 1)), z.mean((0, 1)), atol=1e-6)
    assert torch.equal(zero_out[:, :, heads], torch.zeros_like(z[:, :, heads]))
    others = [h for h in range(8) if h not in heads]
    assert torch.equal(mean_out[:, :, others], z[:, :, others]) and torch.equal(zero_out[:, :, others], z[:, :, others])


# --------------------------------------------------------------------------- the grader can plan them


@pytest.mark.parametrize("name", check.EXERCISES)
def test_every_argument_the_student_function_gets_can_be_sent(name):
    """Planned as the grader plans it, each case hands the student's function only data (the hook
    gets hook=None, never a HookPoint)."""
    calls = []

    def probe(*args, **kwargs):
        calls.append((args, kwargs))
        raise core.StopCheck

    with grading_session("plan"):
        getattr(check, name)(probe)
    assert len(calls) == len(harness.exercise(check, name).default_cases)
    for args, kwargs in calls:
        tensors = {}
        assert not codec.is_opaque(codec.decode(codec.encode((args, kwargs), tensors), tensors))
        if name.endswith("_hook"):
            assert kwargs["hook"] is None and args[0].ndim == 4
