"""Chapter 00's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from utils import progress
from utils.checks import CheckFailure
from utils.checks import ch00 as check
from utils.checks.toolkit import attn_only_1l
from utils.models import hooks


def loss_with_cross_entropy(logits, tokens):
    b, p, v = logits.shape
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), reduction="none").view(b, p - 1)


def loss_with_loops(logits, tokens):
    out = torch.empty(logits.shape[0], logits.shape[1] - 1)
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1] - 1):
            row = logits[b, i]
            out[b, i] = torch.logsumexp(row, 0) - row[tokens[b, i + 1]]
    return out


def loss_float64(logits, tokens):
    return loss_with_cross_entropy(logits.double(), tokens)


def runner(hook_fn):
    """The notebook's ``cache_activations`` around ``hook_fn``: the student's hook, then an in-place
    intervention at the same hook points."""
    def cache_activations(tokens, names):
        cache = {}
        fwd_hooks = [(name, partial(hook_fn, cache=cache)) for name in names]
        fwd_hooks += [(name, hooks.zero_in_place) for name in names]
        attn_only_1l().run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        return cache
    return cache_activations


def cache_with_clone_only(activation, hook, cache):
    cache[hook.name] = activation.clone()  # grad is off in the check: clone alone is a safe copy


def cache_with_new_tensor(activation, hook, cache):
    cache[hook.name] = torch.tensor(activation.detach().numpy().copy())


def cache_and_return_activation(activation, hook, cache):
    cache[hook.name] = activation.detach().clone()
    return activation  # returning the activation unchanged is allowed


def ablation_runner(hook_fn):
    def ablated_logits(tokens, head):
        return attn_only_1l().run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", partial(hook_fn, head=head))])
    return ablated_logits


def zero_in_place_without_return(z, hook, head):
    z[:, :, head] = 0.0  # TransformerLens carries on with the edited tensor


def zero_by_mask(z, hook, head):
    mask = torch.ones(z.shape[2], dtype=z.dtype)
    mask[head] = 0.0
    return z * mask[:, None]


CORRECT = {"per_token_loss": [loss_with_cross_entropy, loss_with_loops, loss_float64],
           "cache_hook": [runner(hooks.cache_hook), runner(cache_with_clone_only), runner(cache_with_new_tensor),
                          runner(cache_and_return_activation)],
           "zero_head_hook": [ablation_runner(hooks.zero_head_hook), ablation_runner(zero_in_place_without_return),
                              ablation_runner(zero_by_mask)]}
HIDDEN_CASES = (7, 8, 9)


def test_misconceptions_are_distinct_on_raw_seed_0():
    """Every variant differs from the truth on the inputs of seed 0 too, so none can pass by accident."""
    inputs = check.PER_TOKEN_LOSS.make_inputs(0)
    expected = check.PER_TOKEN_LOSS.reference(**inputs)
    for wrong in check.PER_TOKEN_LOSS.misconceptions:
        out = wrong.implementation(**inputs)
        assert out.shape != expected.shape or not torch.allclose(out, expected)


def test_non_tensor_answers_fail_clearly(capsys):
    def crashes(logits, tokens):
        return logits @ tokens

    with pytest.raises(CheckFailure, match="raised RuntimeError"):
        check.per_token_loss(crashes)
    with pytest.raises(CheckFailure, match="torch.Tensor|shape|differs"):
        check.per_token_loss(lambda logits, tokens: 0.0)
    with pytest.raises(CheckFailure, match="pass your function"):
        check.per_token_loss(3)
    assert capsys.readouterr().err == ""


def test_unknown_wrong_answer_reports_location():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.per_token_loss(lambda logits, tokens: loss_with_cross_entropy(logits, tokens) + 0.01)


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(logits, tokens):
        result = loss_with_cross_entropy(logits, tokens)
        logits.zero_()
        return result

    check.per_token_loss(mutating)


def test_a_corrupt_progress_file_reads_as_no_progress(isolated_progress, capsys):
    def chapter_00_row():
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("00 "))
        return row.split()[2]  # "00 Orientation 1/4 ...": done/total

    total = len(check.EXERCISES)
    progress.show_progress()
    assert chapter_00_row() == f"0/{total}"
    check.per_token_loss(loss_with_cross_entropy)
    progress.show_progress()
    assert chapter_00_row() == f"1/{total}"
    isolated_progress.write_text("{not json")
    progress.show_progress()  # a corrupt file reads as no progress, never crashes
    assert chapter_00_row() == f"0/{total}"


# --------------------------------------------------------------------------- the hooks


def test_reference_cache_hook_matches_run_with_cache():
    """Without the in-place intervention, the reference hook's cache is run_with_cache's (an
    independent implementation: TransformerLens's own caching hooks)."""
    model, tokens = attn_only_1l(), torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(0))
    names = list(check.CACHEABLE)
    cache: dict = {}
    model.run_with_hooks(tokens, fwd_hooks=[(n, partial(hooks.cache_hook, cache=cache)) for n in names])
    _, expected = model.run_with_cache(tokens)
    assert set(cache) == set(names)
    for name in names:
        torch.testing.assert_close(cache[name], expected[name])
        assert not cache[name].requires_grad


def test_reference_ablation_removes_the_heads_direct_contribution():
    """attn-only-1l has no LayerNorm: zeroing head h's z removes exactly z_h W_O[h] W_U from the logits."""
    model = attn_only_1l()
    tokens = torch.randint(0, 4096, (2, 10), generator=torch.Generator().manual_seed(1))
    logits, cache = model.run_with_cache(tokens)
    for head in range(model.cfg.n_heads):
        z_h = cache["blocks.0.attn.hook_z"][:, :, head]
        expected = logits - z_h @ model.W_O[0, head] @ model.W_U
        got = check.ablation_run(model, tokens, head, hooks.zero_head_hook)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_hook_mistakes_written_as_a_student_would_fail_clearly():
    def keyed_by_hook_point(activation, hook, cache):
        cache[hook] = activation.clone()

    with pytest.raises(CheckFailure, match="keys should be hook names"):
        check.cache_hook(runner(keyed_by_hook_point))
    with pytest.raises(CheckFailure, match="should return the cache dict"):
        check.cache_hook(lambda tokens, names: None)

    def missing_a_name(tokens, names):
        return runner(hooks.cache_hook)(tokens, names[:-1])

    with pytest.raises(CheckFailure, match="should have exactly the hook names"):
        check.cache_hook(missing_a_name)

    def scaled(z, hook, head):  # the head halved, not zeroed
        z = z.clone()
        z[:, :, head] *= 0.5
        return z

    with pytest.raises(CheckFailure, match="differs"):
        check.zero_head_hook(ablation_runner(scaled))
