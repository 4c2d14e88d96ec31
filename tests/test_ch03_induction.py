"""Induction metrics against explicit loops."""
import pytest
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


def _tiny_trained_like_model():
    torch.manual_seed(0)
    return HookedTinyTransformer(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=4096, n_ctx=128,
                                             normalization_type="LN"))


def test_second_copy_losses_match_a_loop_over_positions():
    from utils.induction import second_copy_losses

    model = _tiny_trained_like_model()
    n, batch = 6, 3
    tokens = repeated_random_tokens(model, n, batch, seed=0)
    log_probs = model(tokens).log_softmax(-1)
    expected = torch.zeros(n - 1)
    for j in range(2, n + 1):  # second-copy r_j sits at position n + j and is predicted from n + j - 1
        pos = n + j
        expected[j - 2] = -sum(log_probs[b, pos - 1, tokens[b, pos]] for b in range(batch)) / batch
    torch.testing.assert_close(second_copy_losses(model, n, batch=batch, seed=0), expected, rtol=1e-5, atol=1e-5)


def test_chunk_means():
    from utils.induction import chunk_means

    assert chunk_means(torch.arange(12.0), 5) == [2.0, 7.0, 10.5]


def test_held_out_icl_score_is_late_minus_early_by_token_position():
    from utils.data.dataset import analysis_tokens
    from utils.induction import ICL_EARLY, ICL_LATE, held_out_losses

    model = _tiny_trained_like_model()
    data = analysis_tokens(seq_len=128, n_seqs=8)
    log_probs = model(data).log_softmax(-1)

    def mean_loss(lo, hi):  # tokens at positions lo..hi, each predicted from the position before
        return -torch.stack([log_probs[b, t - 1, data[b, t]] for b in range(8) for t in range(lo, hi + 1)]).mean()

    out = held_out_losses(model, n_seqs=8, batch_size=3)
    expected = (mean_loss(*ICL_LATE) - mean_loss(*ICL_EARLY)).item()
    assert abs(out["icl_score"] - expected) < 1e-3
    assert abs(out["val_loss"] - mean_loss(1, 127).item()) < 1e-3


def test_held_out_losses_of_a_short_context_model_have_no_icl_score():
    """Token 127 does not exist in a 32-token context: no score, rather than one from other positions."""
    from utils.induction import held_out_losses

    torch.manual_seed(0)
    model = HookedTinyTransformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=4096, n_ctx=32))
    out = held_out_losses(model, n_seqs=4)
    assert out["icl_score"] is None and out["loss_early"] is None and out["loss_late"] is None
    assert out["val_loss"] > 0


def test_gate_failures_name_each_unmet_condition():
    from utils.induction import gate_failures

    good = {"second_copy": {63: {"mean": 1.0, "chunks": [1.2, 0.9]}, 50: {"mean": 1.1, "chunks": [2.0]}},
            "previous_token_scores_layer0": [0.1, 0.6], "induction_scores_last_layer": [0.7, 0.0],
            "held_out": {"val_loss": 3.4, "icl_score": -0.5},
            "baseline_held_out": {"val_loss": 3.54, "icl_score": -0.3}}
    assert gate_failures(good) == []
    bad = {**good, "second_copy": {63: {"mean": 1.6, "chunks": [1.0, 2.6]}, 50: good["second_copy"][50]},
           "previous_token_scores_layer0": [0.39], "induction_scores_last_layer": [0.49],
           "held_out": {"val_loss": 3.6, "icl_score": -0.2}}
    failures = " | ".join(gate_failures(bad))
    for words in ("second-copy loss at n=63 is 1.6", "chunk at n=63 has loss 2.6", "previous-token score 0.39",
                  "induction score 0.49", "held-out loss 3.6", "in-context-learning score -0.2"):
        assert words in failures, words
    assert "n=50" not in failures


def test_exercises_gathers_every_graded_reference_of_the_chapter():
    """utils.induction.exercises holds one reference per graded (non-question) exercise of the
    chapter-03 checks, the same objects the package exports."""
    from utils import induction
    from utils.checks import ch03
    from utils.induction import exercises

    graded = [name for name in ch03.EXERCISES if not name.endswith("_question")]
    assert sorted(exercises.__all__) == sorted(graded)
    for name in graded:
        assert getattr(exercises, name) is getattr(induction, name), name


@pytest.mark.slow
def test_the_model_level_code_imports_no_chapter_package():
    """The LM trainer and the model loader measure induction through utils.models.evaluation, not
    through chapter 03's package."""
    import subprocess
    import sys

    code = ("import sys, utils.models, utils.models.train, utils.models.evaluation; "
            "print(sorted(m for m in sys.modules if m.startswith(('utils.induction', 'utils.checks'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_the_command_line_is_documented():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "utils.induction", "--help"], check=True, capture_output=True,
                         text=True)
    assert "python -m utils.induction" in out.stdout and "--gate" in out.stdout and out.stderr == ""


def test_research_model_comparison_reads_a_tl_checkpoint_and_is_offline_safe(tmp_path, monkeypatch):
    """The optional cell of section 4: the research checkpoint (TL layout, its own vocabulary) is
    summarised exactly as the course model is; offline it fails at once with ConnectionError."""
    import json

    from random_models import randomized

    from utils.induction.experiments import induction_summary, research_model_comparison
    from utils.models.loading import config_from_tl_json

    tl_config = {"n_layers": 2, "d_model": 16, "d_head": 4, "n_heads": 2, "n_ctx": 128, "d_vocab": 37,
                 "d_mlp": -1, "attn_only": True, "act_fn": "solu_ln", "normalization": "LN",
                 "shortformer_pos": True}
    source = randomized(config_from_tl_json(tl_config))
    (tmp_path / "config.json").write_text(json.dumps(tl_config))
    torch.save(dict(source.state_dict()), tmp_path / "Attn_Only_2L_final.pth")
    course = randomized(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=None, d_vocab=23,
                                    n_ctx=128, positional_embedding_type="shortformer", normalization_type="LN"))
    out = research_model_comparison(course, local_dir=tmp_path)
    assert out == {"course": induction_summary(course), "research": induction_summary(source)}
    assert out["research"]["d_vocab"] == 37 and out["course"]["d_vocab"] == 23
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="its card says how it was trained"):
        research_model_comparison(course)
