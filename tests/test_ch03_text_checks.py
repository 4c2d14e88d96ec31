"""Chapter 03's hard exercise on natural text (utils/checks/ch03_text.py): correct versions written
other ways for tests/test_check_contract.py, the reference against a brute-force loop, and the
reference on the bundled model against the repeated-random-token induction score it generalises."""
import check_harness as harness
import pytest
import torch

from utils.checks import ch03_text as check
from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import seed_for
from utils.induction.text import text_induction_scores
from utils.models.evaluation import induction_scores, repeated_random_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def by_loops(pattern, tokens):
    """Query by query: the keys after every earlier copy of its token, pooled over the batch."""
    total, count = torch.zeros(pattern.shape[1], dtype=pattern.dtype), 0
    for b in range(tokens.shape[0]):
        for q in range(tokens.shape[1]):
            keys = [k + 1 for k in range(q) if tokens[b, k] == tokens[b, q]]
            if keys:
                total += pattern[b, :, q, keys].sum(-1)
                count += 1
    return total / count


def by_einsum(pattern, tokens):
    n = tokens.shape[1]
    same = (tokens[:, :, None] == tokens[:, None, :]).float().tril(-1)  # [b, q, k]: earlier copies
    after = torch.nn.functional.pad(same, (1, 0))[:, :, :n]  # shift keys right by one
    valid = same.sum(-1) > 0
    mass = torch.einsum("bhqk,bqk->bhq", pattern, after)
    return (mass * valid[:, None]).sum((0, 2)) / valid.sum()


CORRECT = {"text_induction_scores": [text_induction_scores, by_loops, by_einsum]}
HIDDEN_CASES = (7, 8)


def test_the_reference_is_the_loop_on_random_and_real_inputs():
    for case in check.TEXT_INDUCTION_SCORES.default_cases:
        inputs = check.TEXT_INDUCTION_SCORES.make_inputs(seed_for("text_induction_scores", case))
        assert torch.allclose(text_induction_scores(**inputs), by_loops(**inputs), atol=1e-6)
    real = check.TEXT_INDUCTION_SCORES.extra_inputs[0]()  # the real-model case
    small = dict(pattern=real["pattern"][:2, :, :48, :48], tokens=real["tokens"][:2, :48])
    assert torch.allclose(text_induction_scores(**small), by_loops(**small), atol=1e-6)


def test_on_repeated_random_tokens_it_is_the_induction_score():
    """On BOS, r, r (r without repeats) the only earlier copies are the first copy's, one stripe
    n - 1 below the diagonal: the text score is the induction score of section 4."""
    model = attn_only_2l()
    g = torch.Generator().manual_seed(0)
    r = torch.stack([torch.randperm(model.cfg.d_vocab - 1, generator=g)[:20] + 1 for _ in range(4)])
    tokens = torch.cat([torch.zeros(4, 1, dtype=torch.long), r, r], dim=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert torch.allclose(text_induction_scores(pattern, tokens), induction_scores(pattern, 20), atol=1e-6)
    assert repeated_random_tokens(model, 20, 4).shape == tokens.shape


def test_each_row_has_repeats_and_rows_differ_in_how_many():
    from utils.induction.text import after_earlier_copies

    for case in check.TEXT_INDUCTION_SCORES.default_cases:
        tokens = check.TEXT_INDUCTION_SCORES.make_inputs(seed_for("text_induction_scores", case))["tokens"]
        counts = after_earlier_copies(tokens).any(-1).sum(-1)
        assert (counts > 0).all() and len(set(counts.tolist())) > 1


def test_a_failure_points_to_the_hint_ladder(capsys):
    """A hard exercise: a wrong answer is named, and the message points to the hints."""
    ex = harness.exercise(check, "text_induction_scores")
    wrong = next(m for m in ex.misconceptions if m.name == "duplicate-token keys")
    harness.assert_named(check.text_induction_scores, wrong, capsys)
