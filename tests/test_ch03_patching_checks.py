"""Chapter 03's patching and direct-logit-attribution checks (utils/checks/ch03_patching.py): the data
tests/test_check_contract.py runs the contract on (correct implementations written other ways), and
the tests particular to them: the brief's mistakes catalogued and named as a student writes them,
the real run and the random caches, and that a function that writes into the dict caches it is
given cannot corrupt what the reference, the variants or a later call see. (The references against
the model itself are in tests/test_ch03_patching.py.)"""
import check_harness as harness
import pytest
import torch

from utils import induction as ind
from utils.checks import CheckFailure, core
from utils.checks import ch03_patching as check
from utils.checks.core import grading_session, outputs_match, seed_for
from utils.grading import codec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_DEFAULT = 4  # three random cases and the real model


# --------------------------------------------------------------------------- other correct versions


def logit_diff_loops(logits, clean_tokens, corrupted_tokens, seq_len):
    n, total, count = seq_len, 0.0, 0
    for b in range(logits.shape[0]):
        for j in range(1, n):
            row = logits[b, n + j]
            total += float(row[clean_tokens[b, n + j + 1]] - row[corrupted_tokens[b, j + 1]])
            count += 1
    return total / count


def logit_diff_log_probs(logits, clean_tokens, corrupted_tokens, seq_len):
    """log_softmax first: at one position it shifts every logit by the same log-sum-exp, so the
    differences are the same (returned as a 0-d tensor)."""
    n = seq_len
    log_probs = logits.log_softmax(-1)
    b, q = torch.arange(logits.shape[0])[:, None], torch.arange(n + 1, 2 * n)
    return (log_probs[b, q, clean_tokens[:, q + 1]] - log_probs[b, q, corrupted_tokens[:, q - n + 1]]).mean()


def metric_one_minus(patched, clean, corrupted):
    return 1 - (clean - patched) / (clean - corrupted)


def metric_tensor(patched, clean, corrupted):
    t = torch.tensor([patched, clean, corrupted], dtype=torch.float64)
    return (t[0] - t[2]) / (t[1] - t[2])


def heads_where(clean_cache, corrupted_cache, layer):
    name = f"blocks.{layer}.attn.hook_z"
    clean, corrupted = clean_cache[name], corrupted_cache[name]
    entry_is_head = torch.eye(clean.shape[2], dtype=torch.bool)[:, None, None, :, None]  # [entry, 1, 1, head, 1]
    return torch.where(entry_is_head, clean[None], corrupted[None])


def heads_clone_loop(clean_cache, corrupted_cache, layer):
    name = f"blocks.{layer}.attn.hook_z"
    out = []
    for h in range(clean_cache[name].shape[2]):
        z = corrupted_cache[name].clone()
        z[:, :, h] = clean_cache[name][:, :, h]
        out.append(z)
    return torch.stack(out)


def heads_cat(clean_cache, corrupted_cache, layer):
    name = f"blocks.{layer}.attn.hook_z"
    clean, corrupted = clean_cache[name], corrupted_cache[name]
    return torch.stack([torch.cat([corrupted[:, :, :h], clean[:, :, h:h + 1], corrupted[:, :, h + 1:]], dim=2)
                        for h in range(clean.shape[2])])


def resid_where(clean_cache, corrupted_cache, hook_name):
    clean, corrupted = clean_cache[hook_name], corrupted_cache[hook_name]
    entry_is_pos = torch.eye(clean.shape[1], dtype=torch.bool)[:, None, :, None]  # [entry, 1, pos, 1]
    return torch.where(entry_is_pos, clean[None], corrupted[None])


def resid_clone_loop(clean_cache, corrupted_cache, hook_name):
    out = []
    for p in range(clean_cache[hook_name].shape[1]):
        x = corrupted_cache[hook_name].clone()
        x[:, p] = clean_cache[hook_name][:, p]
        out.append(x)
    return torch.stack(out)


def resid_index_put(clean_cache, corrupted_cache, hook_name):
    clean, corrupted = clean_cache[hook_name], corrupted_cache[hook_name]
    n = clean.shape[1]
    out = corrupted.expand(n, *corrupted.shape).clone()
    p = torch.arange(n)
    out[p, :, p] = clean.transpose(0, 1)  # out[p, :, p] is [n, batch, d_model]
    return out


def dla_batch_loop(results, final_scale, W_U, tokens, seq_len):
    n, total = seq_len, 0
    for b in range(results.shape[0]):
        x = results[b, n + 1:2 * n]  # [q, component, d_model]
        x = (x - x.mean(-1, keepdim=True)) / final_scale[b, n + 1:2 * n, :, None]
        u = W_U[:, tokens[b, n + 2:2 * n + 1]]  # [d_model, q]
        total = total + (x @ u.T[:, :, None])[..., 0].sum(0)  # [q, c, d] @ [q, d, 1]
    return total / (results.shape[0] * (n - 1))


def dla_centred_unembed(results, final_scale, W_U, tokens, seq_len):
    """Centre W_U's columns instead of the components: centre(x) . u = x . centre(u)."""
    n = seq_len
    W_c = W_U - W_U.mean(0, keepdim=True)
    x = results[:, n + 1:2 * n] / final_scale[:, n + 1:2 * n, None]
    return torch.einsum("bqcd,dbq->c", x, W_c[:, tokens[:, n + 2:]]) / (x.shape[0] * x.shape[1])


def dla_float64(results, final_scale, W_U, tokens, seq_len):
    return ind.head_logit_attribution(results.double(), final_scale.double(), W_U.double(), tokens, seq_len)

CORRECT = {
    "induction_logit_diff": [ind.induction_logit_diff, logit_diff_loops, logit_diff_log_probs],
    "normalised_patching_metric": [ind.normalised_patching_metric, metric_one_minus, metric_tensor],
    "patched_head_outputs": [ind.patched_head_outputs, heads_where, heads_clone_loop, heads_cat],
    "patched_residual_positions": [ind.patched_residual_positions, resid_where, resid_clone_loop, resid_index_put],
    "head_logit_attribution": [ind.head_logit_attribution, dla_batch_loop, dla_centred_unembed, dla_float64],
}
HIDDEN_CASES = (7, 8)
EXERCISE_OF = {getattr(check, name): harness.exercise(check, name) for name in CORRECT}
CACHE_EXERCISES = (check.PATCHED_HEAD_OUTPUTS, check.PATCHED_RESIDUAL_POSITIONS)


def _id(value):
    return getattr(value, "name", None) or getattr(value, "__name__", str(value))


def _explanation(check_fn, name):
    return {m.name: m.explanation for m in EXERCISE_OF[check_fn].misconceptions}[name]


# --------------------------------------------------------------------------- catalogued mistakes


def test_every_exercise_has_three_seeded_cases_and_a_real_one():
    for ex in EXERCISE_OF.values():
        assert ex.chapter == check.CHAPTER == "03" and getattr(check, ex.name.upper()) is ex
        assert len(ex.default_cases) + len(ex.extra_inputs) == N_DEFAULT


def test_attribution_cases_after_the_first_are_rectangular():
    """Indexing W_U's rows only runs on the square first case (where the contract names it); the
    later cases are rectangular."""
    ex = check.HEAD_LOGIT_ATTRIBUTION
    for case in ex.default_cases[1:]:
        inputs = ex.make_inputs(seed_for(ex.name, case))
        assert inputs["W_U"].shape[0] != inputs["W_U"].shape[1]
        with pytest.raises(IndexError):
            next(m for m in ex.misconceptions if m.name == "rows of W_U").implementation(**inputs)


@pytest.mark.parametrize("ex", list(EXERCISE_OF.values()), ids=_id)
def test_variants_that_run_on_the_real_model_differ_from_the_truth(ex):
    inputs = ex.extra_inputs[0]()
    expected = ex.reference(**inputs)
    ran = []
    for wrong in ex.misconceptions:
        try:
            out = wrong.implementation(**inputs)
        except IndexError:  # batch 2 < 21 positions; W_U is 128 x 4096: these cannot run here
            assert wrong.name in ("batch instead of positions", "rows of W_U"), wrong.name
            continue
        assert not outputs_match(out, expected, ex.rtol, ex.atol), wrong.name
        ran.append(wrong.name)
    assert len(ran) >= len(ex.misconceptions) - 1

def test_explanations_say_what_to_do():
    for ex in EXERCISE_OF.values():
        assert all(len(m.explanation) > 80 for m in ex.misconceptions), ex.name


def test_the_briefs_mistakes_are_all_catalogued():
    names = {(ex.name, m.name) for ex in EXERCISE_OF.values() for m in ex.misconceptions}
    for exercise, wanted in [
        ("induction_logit_diff", ["sign reversed", "targets not shifted", "s_j instead of s_(j+1)",
                                  "first-copy positions included", "position n included", "sum instead of mean"]),
        ("normalised_patching_metric", ["not normalised", "divided by clean only", "scale reversed (1 = corrupted)"]),
        ("patched_head_outputs", ["wrong direction", "patches accumulate", "every head patched in every entry",
                                  "values patched (hook_v)", "queries patched (hook_q)", "positions instead of heads",
                                  "the other layer"]),
        ("patched_residual_positions", ["wrong direction", "patches accumulate (a prefix)",
                                        "batch instead of positions", "hook_name ignored"]),
        ("head_logit_attribution", ["final LayerNorm scale ignored", "not centred", "current token instead of next",
                                    "every position averaged", "sum instead of mean", "rows of W_U"]),
    ]:
        for name in wanted:
            assert (exercise, name) in names, (exercise, name)


# --------------------------------------------------------------------------- mistakes as a student writes them


def student_wrong_from_second_copy(logits, clean_tokens, corrupted_tokens, seq_len):
    n = seq_len
    q = logits[:, n + 1:2 * n]
    return (q.gather(-1, clean_tokens[:, n + 2:, None]) - q.gather(-1, corrupted_tokens[:, n + 2:, None])).mean().item()


def student_every_position(logits, clean_tokens, corrupted_tokens, seq_len):
    q = logits[:, :-1]
    return (q.gather(-1, clean_tokens[:, 1:, None]) - q.gather(-1, corrupted_tokens[:, 1:, None])).mean().item()


def student_metric_from_clean_side(patched, clean, corrupted):
    return (patched - clean) / (corrupted - clean)


def student_heads_without_clone(clean_cache, corrupted_cache, layer):
    name = f"blocks.{layer}.attn.hook_z"
    out = []
    for h in range(clean_cache[name].shape[2]):
        z = corrupted_cache[name]  # no clone: every edit lands in the cache's own tensor
        z[:, :, h] = clean_cache[name][:, :, h]
        out.append(z)
    return torch.stack(out)


def student_heads_layer_0(clean_cache, corrupted_cache, layer):
    return ind.patched_head_outputs(clean_cache, corrupted_cache, 0)


def student_heads_on_positions(clean_cache, corrupted_cache, layer):
    name = f"blocks.{layer}.attn.hook_z"
    clean, corrupted = clean_cache[name], corrupted_cache[name]
    out = corrupted.unsqueeze(0).repeat(clean.shape[2], 1, 1, 1, 1)
    for h in range(clean.shape[2]):
        out[h, :, h] = clean[:, h]
    return out


def student_resid_without_clone(clean_cache, corrupted_cache, hook_name):
    out = []
    for p in range(clean_cache[hook_name].shape[1]):
        x = corrupted_cache[hook_name]
        x[:, p] = clean_cache[hook_name][:, p]
        out.append(x)
    return torch.stack(out)


def student_resid_prefix(clean_cache, corrupted_cache, hook_name):
    out = []
    for p in range(clean_cache[hook_name].shape[1]):
        x = corrupted_cache[hook_name].clone()
        x[:, :p + 1] = clean_cache[hook_name][:, :p + 1]
        out.append(x)
    return torch.stack(out)


def student_resid_fixed_hook(clean_cache, corrupted_cache, hook_name):
    return ind.patched_residual_positions(clean_cache, corrupted_cache, "blocks.0.hook_resid_pre")


def student_dla_full_logits(results, final_scale, W_U, tokens, seq_len):
    n = seq_len
    logits = (results - results.mean(-1, keepdim=True)) @ W_U  # [batch, pos, component, d_vocab], no scale
    q = logits[:, n + 1:2 * n]
    target = tokens[:, n + 2:, None, None].expand(-1, -1, q.shape[2], 1)
    return q.gather(-1, target)[..., 0].mean((0, 1))


def student_dla_rows(results, final_scale, W_U, tokens, seq_len):
    n = seq_len
    x = (results - results.mean(-1, keepdim=True)) / final_scale[..., None]
    return torch.einsum("bqcd,bqd->c", x[:, n + 1:2 * n], W_U[tokens[:, n + 2:]]) / (x.shape[0] * (n - 1))


@pytest.mark.parametrize("check_fn,fn,name", [
    (check.induction_logit_diff, student_wrong_from_second_copy, "wrong token from the corrupted second copy"),
    (check.induction_logit_diff, student_every_position, "each run's next token at every position"),
    (check.normalised_patching_metric, student_metric_from_clean_side, "scale reversed (1 = corrupted)"),
    (check.patched_head_outputs, student_heads_without_clone, "every head patched in every entry"),
    (check.patched_head_outputs, student_heads_layer_0, "the other layer"),
    (check.patched_head_outputs, student_heads_on_positions, "positions instead of heads"),
    (check.patched_residual_positions, student_resid_without_clone, "every position patched in every entry"),
    (check.patched_residual_positions, student_resid_prefix, "patches accumulate (a prefix)"),
    (check.patched_residual_positions, student_resid_fixed_hook, "hook_name ignored"),
    (check.head_logit_attribution, student_dla_full_logits, "final LayerNorm scale ignored"),
    (check.head_logit_attribution, student_dla_rows, "rows of W_U"),
], ids=_id)
def test_student_written_mistakes_are_named(check_fn, fn, name, capsys):
    harness.assert_student_mistake_named(check_fn, fn, harness.explanation(EXERCISE_OF[check_fn], name), capsys)


def test_log_probabilities_are_accepted():
    """Not a misconception: log_softmax shifts a position's logits by one constant, so the logit
    difference is unchanged (it would be one if the two logits came from different positions)."""
    inputs = check.INDUCTION_LOGIT_DIFF.make_inputs(seed_for("induction_logit_diff", 0))
    assert abs(float(logit_diff_log_probs(**inputs)) - ind.induction_logit_diff(**inputs)) < 1e-5
    check.induction_logit_diff(logit_diff_log_probs)


# --------------------------------------------------------------------------- the real run


@pytest.fixture(scope="module")
def model():
    return check.attn_only_2l()


def test_real_run_inputs(model):
    run = check.real_run()
    assert not any(block.attn.use_attn_result for block in model.blocks)  # switched back off
    assert list(run["clean_cache"]) == list(run["corrupted_cache"]) == check.cache_keys(2)
    assert set(check.cache_keys(2)) == {f"blocks.{l}.attn.{h}" for l in (0, 1) for h in check._ATTN_HOOKS} \
        | {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"}
    clean, corrupted = run["clean_tokens"], run["corrupted_tokens"]
    n = check.REAL_SEQ_LEN
    assert clean.shape == (2, 1 + 2 * n) and torch.equal(clean[:, 1:n + 1], clean[:, n + 1:])
    assert torch.equal(clean[:, n + 1:], corrupted[:, n + 1:])
    assert not (clean[:, 1:n + 1] == corrupted[:, 1:n + 1]).any()
    dla = check.HEAD_LOGIT_ATTRIBUTION.extra_inputs[0]()
    assert dla["results"].shape == (2, 1 + 2 * n, 16, model.cfg.d_model)
    assert torch.equal(dla["results"][:, :, 8:], run["clean_cache"]["blocks.1.attn.hook_result"])
    metric = check.NORMALISED_PATCHING_METRIC.extra_inputs[0]()
    assert metric["clean"] > 5 > metric["patched"] > metric["corrupted"]  # the model does induction
    for ex in EXERCISE_OF.values():  # only plain data: tensors, numbers, strings, dicts of tensors
        for value in ex.extra_inputs[0]().values():
            assert isinstance(value, (torch.Tensor, int, float, str, dict)), ex.name
            assert not isinstance(value, dict) or all(isinstance(v, torch.Tensor) for v in value.values())


# --------------------------------------------------------------------------- inputs and cases


def test_random_caches_have_the_models_shapes():
    for ex in CACHE_EXERCISES:
        for case in list(ex.default_cases) + [101, 102, 103]:
            inputs = ex.make_inputs(seed_for(ex.name, case))
            for cache in (inputs["clean_cache"], inputs["corrupted_cache"]):
                assert list(cache) == check.cache_keys(2)
                b, p, h, k = cache["blocks.0.attn.hook_z"].shape
                d = cache["blocks.0.hook_resid_pre"].shape[-1]
                for name, value in cache.items():
                    hook = name.rsplit(".", 1)[1]
                    want = {"hook_pattern": (b, h, p, p), "hook_result": (b, p, h, d)}.get(
                        hook, (b, p, d) if "resid" in hook else (b, p, h, k))
                    assert value.shape == want, (name, value.shape)
                torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"].sum(-1), torch.ones(b, h, p))


def test_default_cases_cover_both_layers_and_the_later_hooks():
    layers = [check.PATCHED_HEAD_OUTPUTS.make_inputs(seed_for("patched_head_outputs", c))["layer"] for c in range(3)]
    assert layers == [1, 0, 1] and check.PATCHED_HEAD_OUTPUTS.extra_inputs[0]()["layer"] == 1
    hooks = [check.PATCHED_RESIDUAL_POSITIONS.make_inputs(seed_for("patched_residual_positions", c))["hook_name"]
             for c in range(3)]
    assert "blocks.0.hook_resid_pre" not in hooks and "blocks.1.hook_resid_post" in hooks
    hidden = {check.PATCHED_RESIDUAL_POSITIONS.make_inputs(seed_for("patched_residual_positions", c))["hook_name"]
              for c in range(100, 120)}
    assert hidden == set(check._RESID_HOOKS)

def test_a_function_that_returns_none_is_told_so(capsys):
    for check_fn in EXERCISE_OF:
        with pytest.raises(CheckFailure, match="returned None"):
            check_fn(lambda **kwargs: None)
    assert capsys.readouterr().err == ""


def test_unknown_wrong_answers_report_the_difference():
    with pytest.raises(CheckFailure, match="Got"):
        check.induction_logit_diff(lambda **kw: ind.induction_logit_diff(**kw) + 0.01)
    with pytest.raises(CheckFailure, match="max abs error"):
        check.head_logit_attribution(lambda **kw: ind.head_logit_attribution(**kw) + 0.01)
    with pytest.raises(CheckFailure, match="shape"):
        check.patched_head_outputs(lambda clean_cache, corrupted_cache, layer: ind.patched_head_outputs(
            clean_cache, corrupted_cache, layer)[0])
    with pytest.raises(CheckFailure, match=r"returned a list of \d+ tensors.*torch.stack"):
        check.patched_residual_positions(lambda clean_cache, corrupted_cache, hook_name: list(
            ind.patched_residual_positions(clean_cache, corrupted_cache, hook_name)))


# --------------------------------------------------------------------------- in-place edits of the caches


def test_inputs_are_copied_all_the_way_down():
    inputs = {"cache": {"a": torch.ones(2)}, "xs": [torch.ones(1), (torch.ones(1), 3)], "n": 3, "s": "x"}
    copy = core.clone_inputs(inputs)
    copy["cache"]["a"].zero_()
    copy["xs"][0].zero_()
    copy["xs"][1][0].zero_()
    assert inputs["cache"]["a"].sum() == 2 and inputs["xs"][0].item() == 1 and inputs["xs"][1][0].item() == 1
    assert isinstance(copy["xs"][1], tuple) and copy["xs"][1][1] == 3 and copy["n"] == 3 and copy["s"] == "x"


def test_writing_into_the_caches_cannot_corrupt_later_calls(capsys):
    """A correct function that then zeroes every tensor of both caches passes, twice, and the next
    call (here: the same real case again) still gets the real activations."""
    run = check.real_run()
    before = {k: v.clone() for k, v in run["clean_cache"].items()}
    seen = []

    def scribbler(clean_cache, corrupted_cache, layer):
        seen.append(clean_cache[f"blocks.{layer}.attn.hook_z"].clone())
        out = ind.patched_head_outputs(clean_cache, corrupted_cache, layer)
        for cache in (clean_cache, corrupted_cache):
            for value in cache.values():
                value.zero_()
        return out

    check.patched_head_outputs(scribbler)
    check.patched_head_outputs(scribbler)
    assert len(seen) == 2 * N_DEFAULT and torch.equal(seen[N_DEFAULT - 1], seen[-1]) and seen[-1].abs().sum() > 0
    assert harness.same_inputs(run["clean_cache"], before)
    assert capsys.readouterr().out.count("PASS 03/patched_head_outputs") == 2


def test_a_wrong_answer_that_writes_into_the_cache_is_still_named():
    """The variants see the inputs as they were, not as the student's function left them."""
    def reversed_then_scribbles(clean_cache, corrupted_cache, hook_name):
        out = ind.patched_residual_positions(corrupted_cache, clean_cache, hook_name)  # the wrong way round
        clean_cache[hook_name].zero_()
        return out

    with pytest.raises(CheckFailure) as info:
        check.patched_residual_positions(reversed_then_scribbles)
    assert _explanation(check.patched_residual_positions, "wrong direction") in str(info.value)


# --------------------------------------------------------------------------- the sandboxed grader


def test_planned_arguments_travel_through_the_graders_codec():
    """What each case hands the student's function (dict caches included) encodes as plain data."""
    for check_fn, ex in EXERCISE_OF.items():
        received = []
        with grading_session("plan"):
            def stand_in(**kwargs):
                tensors = {}
                decoded = codec.decode(codec.encode(kwargs, tensors), tensors)
                assert not codec.is_opaque(decoded)
                received.append(decoded)
                return None
            try:
                check_fn(stand_in)
            except CheckFailure:
                pass
        assert len(received) == N_DEFAULT, ex.name
        real = ex.extra_inputs[0]()
        assert harness.same_inputs({k: received[-1][k] for k in real}, real), ex.name
