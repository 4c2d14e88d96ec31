"""Chapter 01's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter: the listed mistakes
as a student writes them (including the ones that produce NaN), the real-model cases, the
descriptions of unknown wrong answers."""
import math

import check_harness as harness
import pytest
import torch

from utils import attention as at
from utils.checks import CheckFailure, core, toolkit
from utils.checks import ch01 as check

# --------------------------------------------------------------------------- other correct versions


def pattern_loops(qk_input, W_Q, W_K, b_Q, b_K):
    b, n, _ = qk_input.shape
    out = torch.zeros(b, n, n)
    for bi in range(b):
        q, k = qk_input[bi] @ W_Q + b_Q, qk_input[bi] @ W_K + b_K
        for i in range(n):
            scores = torch.stack([q[i] @ k[j] for j in range(i + 1)]) / math.sqrt(W_Q.shape[1])
            out[bi, i, : i + 1] = torch.exp(scores - scores.max()) / torch.exp(scores - scores.max()).sum()
    return out


def pattern_tl_style(qk_input, W_Q, W_K, b_Q, b_K):
    """TransformerLens's way: a finite IGNORE value instead of -inf, and float64 arithmetic."""
    x = qk_input.double()
    q, k = x @ W_Q.double() + b_Q.double(), x @ W_K.double() + b_K.double()
    scores = q @ k.transpose(-1, -2) / W_Q.shape[1] ** 0.5
    n = scores.shape[-1]
    scores = torch.where(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), torch.tensor(-1e5, dtype=torch.float64),
                         scores)
    return torch.nn.functional.softmax(scores, dim=-1)


def head_output_project_first(pattern, v_input, W_V, b_V, W_O):
    """W_O before mixing, b_V after mixing: both legal because mixing is linear and rows sum to 1."""
    z = pattern @ (v_input @ W_V) + b_V
    return z, pattern @ (v_input @ W_V @ W_O) + b_V @ W_O


def head_output_loops(pattern, v_input, W_V, b_V, W_O):
    v = v_input @ W_V + b_V
    z = torch.zeros(*pattern.shape[:2], W_V.shape[1])
    for b in range(pattern.shape[0]):
        for i in range(pattern.shape[1]):
            for j in range(i + 1):
                z[b, i] += pattern[b, i, j] * v[b, j]
    return z, z @ W_O


def einsum_ov_first(A, W_V, W_O, x):
    return torch.einsum("ij,jd,de->ie", A, x, W_V @ W_O)


def einsum_factored_matrix(A, W_V, W_O, x):
    from transformer_lens import FactoredMatrix

    return A @ x @ FactoredMatrix(W_V, W_O).AB


def kron_single_factor(A, W_V, W_O, x):
    return (torch.kron(A, (W_V @ W_O).T.contiguous()) @ x.reshape(-1)).reshape(x.shape)


def kron_column_major(A, W_V, W_O, x):
    """Swapped kron order AND column-major flattening: consistent, hence correct."""
    n, d = x.shape
    K = torch.kron((W_V @ W_O).T.contiguous(), A)
    return (K @ x.T.reshape(-1)).reshape(d, n).T


def kron_three_factors_transposed_input(A, W_V, W_O, x):
    n, k = A.shape[0], W_V.shape[1]
    read = torch.kron(torch.eye(n), W_V.T.contiguous())
    mix = torch.kron(A, torch.eye(k))
    write = torch.kron(torch.eye(n), W_O.T.contiguous())
    return (write @ (mix @ (read @ x.flatten()))).view(n, -1)


def layer_concat(x0, A, W_V, W_O, b_V, b_O):
    b, h, n, _ = A.shape
    z = A @ (torch.einsum("bjd,hdk->bhjk", x0, W_V) + b_V[:, None])  # [b, h, n, k]
    z_cat = z.permute(0, 2, 1, 3).reshape(b, n, -1)  # heads concatenated, as in most codebases
    return x0 + z_cat @ W_O.reshape(-1, W_O.shape[-1]) + b_O


def layer_loop_over_heads(x0, A, W_V, W_O, b_V, b_O):
    out = x0 + b_O
    for h in range(A.shape[1]):
        _, result = at.head_output(A[:, h], x0, W_V[h], b_V[h], W_O[h])
        out = out + result
    return out


def paths_full_circuits(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U):
    """Materialise every vocab x vocab circuit, then look the tokens up."""
    direct = (W_E @ W_U)[tokens]
    heads = []
    for h in range(A.shape[1]):
        circuit = W_E @ W_V[h] @ W_O[h] @ W_U  # row t: logits for attending to token t
        heads.append(A[:, h] @ circuit[tokens])
    bias = (b_O + sum(b_V[h] @ W_O[h] for h in range(A.shape[1]))) @ W_U + b_U
    return torch.stack([direct, *heads, bias.expand_as(direct)], dim=1)


def paths_one_hot_float64(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U):
    onehot = torch.nn.functional.one_hot(tokens, W_E.shape[0]).double()
    W_E, W_V, W_O, W_U = W_E.double(), W_V.double(), W_O.double(), W_U.double()
    x0 = onehot @ W_E
    heads = torch.einsum("bhij,bjd,hdk,hke,ev->bhiv", A.double(), x0, W_V, W_O, W_U)
    bias = (b_O.double() + torch.einsum("hk,hkd->d", b_V.double(), W_O)) @ W_U + b_U.double()
    return torch.cat([(x0 @ W_U)[:, None], heads, bias.expand(tokens.shape[0], 1, tokens.shape[1], -1)], 1)


def read_write_from_identity(d_model, read_dims, write_dims):
    eye = torch.eye(d_model)
    return eye[:, list(read_dims)], eye[list(write_dims), :]


def read_write_loops_int(d_model, read_dims, write_dims):
    W_V = torch.zeros(d_model, len(read_dims), dtype=torch.int64)
    W_O = torch.zeros(len(write_dims), d_model, dtype=torch.int64)
    for i, (r, w) in enumerate(zip(read_dims, write_dims)):
        W_V[r, i] = 1
        W_O[i, w] = 1
    return W_V, W_O


def compose_einsum(A_2, W_OV_2, A_1, W_OV_1):
    return torch.einsum("ik,kj->ij", A_2, A_1), torch.einsum("ab,bc->ac", W_OV_1, W_OV_2)


def compose_paper_layout(A_2, W_OV_2, A_1, W_OV_1):
    """Transpose into the paper's column layout, compose there, transpose back."""
    return A_2 @ A_1, (W_OV_2.T @ W_OV_1.T).T


CORRECT = {
    "attention_pattern": [at.attention_pattern, pattern_loops, pattern_tl_style],
    "head_output": [at.head_output, head_output_project_first, head_output_loops],
    "tensor_head_einsum": [at.tensor_head_einsum, einsum_ov_first, einsum_factored_matrix, at.tensor_head_kron],
    "tensor_head_kron": [at.tensor_head_kron, kron_single_factor, kron_column_major,
                         kron_three_factors_transposed_input],
    "multihead_residual": [at.multihead_residual, layer_concat, layer_loop_over_heads],
    "path_logits": [at.path_logits, paths_full_circuits, paths_one_hot_float64],
    "read_write_weights": [at.read_write_weights, read_write_from_identity, read_write_loops_int],
    "virtual_weight": [at.virtual_weight, lambda W_O_1, W_V_2: (W_V_2.T @ W_O_1.T).T,
                       lambda W_O_1, W_V_2: torch.einsum("kd,dl->kl", W_O_1, W_V_2)],
    "compose_heads": [at.compose_heads, compose_einsum, compose_paper_layout],
}
HIDDEN_CASES = (11, 12, 13, 14)
EXERCISES = {name: harness.exercise(check, name) for name in CORRECT}


# --------------------------------------------------------------------------- mistakes as a student writes them


def _scores(qk_input, W_Q, W_K, b_Q, b_K, scale=True):
    q, k = qk_input @ W_Q + b_Q, qk_input @ W_K + b_K
    s = q @ k.transpose(-1, -2)
    return s / math.sqrt(W_Q.shape[1]) if scale else s


def student_diagonal_masked_inf(qk_input, W_Q, W_K, b_Q, b_K):
    s = _scores(qk_input, W_Q, W_K, b_Q, b_K)
    mask = torch.triu(torch.ones_like(s[0]), diagonal=0).bool()  # meant diagonal=1
    return s.masked_fill(mask, float("-inf")).softmax(-1)  # row 0 is all -inf: NaN


def student_diagonal_masked_finite(qk_input, W_Q, W_K, b_Q, b_K):
    s = _scores(qk_input, W_Q, W_K, b_Q, b_K)
    keep = torch.tril(torch.ones_like(s[0]), diagonal=-1)
    return torch.where(keep == 1, s, torch.full_like(s, -1e9)).softmax(-1)


def student_lower_triangle(qk_input, W_Q, W_K, b_Q, b_K):
    s = _scores(qk_input, W_Q, W_K, b_Q, b_K)
    return s.masked_fill(torch.tril(torch.ones_like(s[0]), diagonal=-1).bool(), float("-inf")).softmax(-1)


def student_query_softmax(qk_input, W_Q, W_K, b_Q, b_K):
    s = _scores(qk_input, W_Q, W_K, b_Q, b_K)
    return s.masked_fill(torch.triu(torch.ones_like(s[0]), 1).bool(), float("-inf")).softmax(dim=1)


def student_no_scale(qk_input, W_Q, W_K, b_Q, b_K):
    s = _scores(qk_input, W_Q, W_K, b_Q, b_K, scale=False)
    return s.masked_fill(torch.triu(torch.ones_like(s[0]), 1).bool(), float("-inf")).softmax(-1)


def student_no_mask(qk_input, W_Q, W_K, b_Q, b_K):
    return _scores(qk_input, W_Q, W_K, b_Q, b_K).softmax(-1)


@pytest.mark.parametrize("fn,misconception", [
    (student_diagonal_masked_inf, "masked the diagonal"),
    (student_diagonal_masked_finite, "masked the diagonal (finite fill)"),
    (student_lower_triangle, "masked the lower triangle"),
    (student_query_softmax, "softmax over queries"),
    (student_no_scale, "missing 1/sqrt(d_head)"),
    (student_no_mask, "no causal mask"),
])
def test_student_written_pattern_mistakes_are_named(fn, misconception, capsys):
    explanation = {m.name: m.explanation for m in check.ATTENTION_PATTERN.misconceptions}[misconception]
    with pytest.raises(CheckFailure) as info:
        check.attention_pattern(fn)
    assert explanation in str(info.value)
    assert capsys.readouterr().err == ""


def test_student_written_structural_mistakes_are_named():
    explanations = {m.name: m.explanation for ex in EXERCISES.values() for m in ex.misconceptions}

    def kron_swapped(A, W_V, W_O, x):
        return (torch.kron((W_V @ W_O).T.contiguous(), A) @ x.reshape(-1)).reshape(x.shape)

    def no_residual(x0, A, W_V, W_O, b_V, b_O):
        return layer_concat(x0, A, W_V, W_O, b_V, b_O) - x0

    def sum_heads_then_W_O(x0, A, W_V, W_O, b_V, b_O):
        z = A @ (torch.einsum("bjd,hdk->bhjk", x0, W_V) + b_V[:, None])
        return x0 + z.sum(1) @ W_O.sum(0) + b_O

    def embed_transposed(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U):
        return paths_full_circuits(tokens, A, W_E.T, W_V, W_O, W_U, b_V, b_O, b_U)

    for fn, name, key in [(kron_swapped, "tensor_head_kron", "kron order swapped"),
                          (no_residual, "multihead_residual", "forgot the residual x0"),
                          (sum_heads_then_W_O, "multihead_residual", "summed z before W_O"),
                          (embed_transposed, "path_logits", "W_E transposed")]:
        with pytest.raises(CheckFailure) as info:
            getattr(check, name)(fn)
        assert explanations[key] in str(info.value), (name, key, str(info.value))


# --------------------------------------------------------------------------- robustness


def test_path_cases_mix_square_and_rectangular_vocabularies():
    from utils.checks.core import seed_for

    shapes = [check.PATH_LOGITS.make_inputs(seed_for("path_logits", c))["W_E"].shape for c in range(3)]
    assert shapes[0][0] == shapes[0][1], "the first case must let a transposed W_E run"
    hidden = [check.PATH_LOGITS.make_inputs(seed_for("path_logits", c))["W_E"].shape for c in range(101, 107)]
    assert any(v != d for v, d in shapes + hidden)


def test_real_model_cases_are_used_by_default():
    counts = {}
    for name, ex in EXERCISES.items():
        counts[name] = len(ex.extra_inputs)
    assert counts["attention_pattern"] == 2 and counts["head_output"] == 1
    assert counts["multihead_residual"] == 1 and counts["path_logits"] == 1


def test_real_model_case_is_the_models_own_activations():
    """The extra cases' expected outputs ARE what the bundled model computes on its held-out text
    (two rows of 24 tokens): head 0's pattern, the residual stream after the layer, the logits."""
    from utils.data import analysis_tokens
    from utils.models import load_model

    model = toolkit.attn_only_1l()
    assert isinstance(model, type(load_model("attn-only-1l", device="cpu")))
    tokens = analysis_tokens(seq_len=24, n_seqs=2)
    logits, cache = model.run_with_cache(tokens)
    expected = check.ATTENTION_PATTERN.reference(**check.ATTENTION_PATTERN.extra_inputs[0]())
    torch.testing.assert_close(expected, cache["blocks.0.attn.hook_pattern"][:, 0], rtol=1e-5, atol=1e-6)
    inputs = check.MULTIHEAD_RESIDUAL.extra_inputs[0]()
    torch.testing.assert_close(check.MULTIHEAD_RESIDUAL.reference(**inputs), cache["blocks.0.hook_resid_post"],
                               rtol=1e-5, atol=1e-5)
    paths = check.PATH_LOGITS.reference(**check.PATH_LOGITS.extra_inputs[0]())
    torch.testing.assert_close(paths.sum(1), logits, rtol=1e-4, atol=1e-4)


def test_unknown_wrong_answers_report_the_difference():
    with pytest.raises(CheckFailure, match="max abs error .* relative error"):
        check.attention_pattern(lambda **kw: at.attention_pattern(**kw) + 0.01)
    with pytest.raises(CheckFailure, match="times 1.01 everywhere: a wrong scale factor"):
        check.attention_pattern(lambda **kw: at.attention_pattern(**kw) * 1.01)
    with pytest.raises(CheckFailure, match="Value 2 of 2 of your result: .*max abs error") as info:
        check.head_output(lambda **kw: (at.head_output(**kw)[0], at.head_output(**kw)[1] + 0.01))
    assert "tensor(" not in str(info.value)  # a tuple is described part by part, never printed whole


def test_difference_descriptions_name_scales_transposes_and_relative_errors():
    e = torch.randn(2, 5, 5, dtype=torch.float64)
    inputs = {"x": torch.zeros(2, 7, 32), "n_heads": 4}
    assert "times 0.176777 everywhere (= 1/sqrt(32), a size of the inputs): a wrong scale factor" in \
        core.describe_difference(e / 32 ** 0.5, e, inputs)
    assert "(= 4, a size" in core.describe_difference(e * 4, e, inputs)
    assert "times -1 everywhere: a wrong sign" in core.describe_difference(-e, e, inputs)
    assert "transpose of the expected one" in core.describe_difference(e.transpose(-1, -2), e)
    assert "last two axes swapped" in core.describe_difference(torch.zeros(2, 3, 4), torch.zeros(2, 4, 3))
    assert "times" not in core.describe_difference(e + 1, e)  # an offset is not a scale
    assert core.describe_difference(293.31, 293.27) == "Got 293.31, expected 293.27 (relative error 0.00014)."
    hidden = core.describe_difference(e + 0.5, e, withhold=True)  # a hidden case quotes no expected value
    assert "max abs error 0.5" in hidden and "expected " not in hidden.replace("expected one", "")
    assert core.describe_difference([1, 2], [1, 3], withhold=True).endswith("differs from the expected one.")
    with pytest.raises(CheckFailure, match="NaN or inf"):
        check.attention_pattern(lambda **kw: at.attention_pattern(**kw) * float("nan"))
    with pytest.raises(CheckFailure, match="shape"):
        check.path_logits(lambda **kw: at.path_logits(**kw).sum(1))


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(x0, A, W_V, W_O, b_V, b_O):
        out = at.multihead_residual(x0, A, W_V, W_O, b_V, b_O)
        A.zero_()
        x0.mul_(3)
        return out

    check.multihead_residual(mutating)
