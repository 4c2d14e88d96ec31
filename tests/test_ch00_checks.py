"""Chapter 00's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter."""
import pytest
import torch
import torch.nn.functional as F

from utils import progress
from utils.checks import CheckFailure
from utils.checks import ch00 as check


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


CORRECT = {"per_token_loss": [loss_with_cross_entropy, loss_with_loops, loss_float64]}
HIDDEN_CASES = (7, 8, 9)


def test_misconceptions_are_distinct_on_raw_seed_0():
    """Every variant differs from the truth on the inputs of seed 0 too, so none can pass by accident."""
    inputs = check._random_inputs(0)
    expected = check._reference(**inputs)
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
    progress.show_progress()
    assert "0/2" in capsys.readouterr().out
    check.per_token_loss(loss_with_cross_entropy)
    isolated_progress.write_text("{not json")
    progress.show_progress()  # a corrupt file reads as no progress, never crashes
    assert "0/2" in capsys.readouterr().out
