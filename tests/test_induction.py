"""Induction metrics against explicit loops."""
import torch

from utils.induction import induction_report, induction_scores, previous_token_scores, repeated_random_tokens
from utils.models import HookedTinyTransformer, ModelConfig


def test_scores_match_loops():
    seq_len, batch, heads = 5, 3, 2
    n = 2 * seq_len + 1
    pattern = torch.rand(batch, heads, n, n).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    ind = torch.zeros(heads)
    prev = torch.zeros(heads)
    for h in range(heads):
        ind[h] = sum(pattern[b, h, q, q - seq_len + 1] for b in range(batch)
                     for q in range(seq_len + 1, n)) / (batch * seq_len)
        prev[h] = sum(pattern[b, h, q, q - 1] for b in range(batch) for q in range(1, n)) / (batch * (n - 1))
    torch.testing.assert_close(induction_scores(pattern, seq_len), ind)
    torch.testing.assert_close(previous_token_scores(pattern), prev)


def test_perfect_induction_pattern_scores_one():
    seq_len = 4
    n = 2 * seq_len + 1
    pattern = torch.zeros(1, 1, n, n)
    for q in range(n):
        pattern[0, 0, q, q - seq_len + 1 if q > seq_len else 0] = 1
    assert induction_scores(pattern, seq_len).item() == 1.0


def test_repeated_tokens_and_report_shapes():
    model = HookedTinyTransformer(ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=50, n_ctx=21))
    tokens = repeated_random_tokens(model, 10, 4)
    assert tokens.shape == (4, 21) and (tokens[:, 0] == 0).all()
    assert torch.equal(tokens[:, 1:11], tokens[:, 11:])
    report = induction_report(model, seq_len=10, batch=4)
    assert len(report["layers"][1]["induction_score"]) == 2
    # An untrained model has no in-context learning.
    assert abs(report["loss_drop"]) < 0.2
