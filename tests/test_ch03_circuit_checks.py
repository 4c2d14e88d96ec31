"""Chapter 03's circuit checks (utils/checks/ch03_circuit.py): the data tests/test_check_contract.py
runs the contract on (correct implementations written other ways: loops, einsum,
scaled_dot_product_attention, TransformerLens algebra, dense or factored circuits, FactoredMatrix or
dense inputs, floats or 0-d tensors), and the tests particular to them: the brief's mistakes (the ICL
score's sign, -1 shift and inclusive ends; the positional pattern's mask, scale and softmax axis; K-
versus Q-composition, the missing previous-token head and transposed circuits; top-1 over the wrong
axis, counts and row means) catalogued and named as a student writes them, output forms, the cases,
the real model and the grader."""
import math

import check_harness as harness
import pytest
import torch
import torch.nn.functional as F
from transformer_lens import FactoredMatrix

from utils import induction as ind
from utils.checks import CheckFailure
from utils.checks import ch03_circuit as check
from utils.checks.core import grading_session, outputs_match, seed_for
from utils.grading import codec

N_DEFAULT = 4  # three seeded cases and one real-model case


# --------------------------------------------------------------------------- other correct versions


def icl_loops(losses, early=(5, 15), late=(100, 127)):
    """Token by token, in Python: the loss of token t is column t - 1."""
    def mean_over(first, last):
        values = [float(losses[b, t - 1]) for b in range(losses.shape[0]) for t in range(first, last + 1)]
        return sum(values) / len(values)
    return mean_over(*late) - mean_over(*early)


def icl_index_tensor(losses, early=(5, 15), late=(100, 127)):
    """Column indices built explicitly; returns a 0-d tensor (accepted)."""
    cols = lambda r: torch.arange(r[0], r[1] + 1) - 1  # noqa: E731
    return losses[:, cols(late)].mean() - losses[:, cols(early)].mean()


def icl_per_sequence_then_mean(losses, early=(5, 15), late=(100, 127)):
    (e0, e1), (l0, l1) = early, late
    return (losses[:, l0 - 1:l1].double().mean(-1) - losses[:, e0 - 1:e1].double().mean(-1)).mean().item()


def positional_einsum(W_pos, W_Q, W_K):
    q = torch.einsum("pd,hdk->hpk", W_pos, W_Q)
    k = torch.einsum("pd,hdk->hpk", W_pos, W_K)
    scores = torch.einsum("hqk,hsk->hqs", q, k) / W_Q.shape[-1] ** 0.5
    allowed = torch.tril(torch.ones(W_pos.shape[0], W_pos.shape[0])).bool()
    return F.softmax(scores.masked_fill(~allowed, -1e9), dim=-1)  # a large negative number works too


def positional_sdpa(W_pos, W_Q, W_K):
    """The pattern is what causal attention does to the identity matrix of values."""
    q, k = W_pos @ W_Q, W_pos @ W_K
    eye = torch.eye(W_pos.shape[0]).expand(W_Q.shape[0], -1, -1)
    return F.scaled_dot_product_attention(q, k, eye, is_causal=True)


def positional_per_head_float64(W_pos, W_Q, W_K):
    n = W_pos.shape[0]
    out = []
    for h in range(W_Q.shape[0]):
        q, k = W_pos.double() @ W_Q[h].double(), W_pos.double() @ W_K[h].double()
        scores = q @ k.T / math.sqrt(W_Q.shape[-1])
        scores[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)] = float("-inf")
        out.append(scores.softmax(-1))
    return torch.stack(out)


def kcomp_dense_einsum(W_E, W_Q, W_K, W_V, W_O):
    """The dense [d_vocab, d_vocab] product (a 4096 x 4096 tensor for the real model: accepted)."""
    query = torch.einsum("vd,dk->vk", W_E, W_Q)
    key = torch.einsum("vd,dh,he,ek->vk", W_E, W_V, W_O, W_K)
    return torch.einsum("ak,bk->ab", query, key)


def kcomp_transformer_lens(W_E, W_Q, W_K, W_V, W_O):
    """TransformerLens algebra: the layer-1 QK FactoredMatrix, read through layer 0's OV on the key side."""
    qk = FactoredMatrix(W_Q, W_K.T)  # [d_model, d_model]
    key_side = W_E @ FactoredMatrix(W_V, W_O)  # [d_vocab, d_model]
    return (W_E @ qk) @ key_side.AB.T


def kcomp_factors_tuple(W_E, W_Q, W_K, W_V, W_O):
    """The two factors as a tuple (how the grader transports factors that it cannot rebuild)."""
    return W_E.double() @ W_Q.double(), (W_E.double() @ W_V.double() @ W_O.double() @ W_K.double()).T


def top1_dense_tensor(M):
    dense = M.AB if isinstance(M, FactoredMatrix) else M
    return (dense.argmax(dim=-1) == torch.arange(dense.shape[0])).float().mean()  # a 0-d tensor


def top1_row_loop(M):
    n = M.shape[0]
    hits = 0
    for i in range(n):
        row = M.A[i] @ M.B if isinstance(M, FactoredMatrix) else M[i]
        hits += int(row.argmax()) == i
    return hits / n


def top1_by_max(M):
    """The diagonal against each row's maximum (>=), 256 rows of a FactoredMatrix at a time."""
    dense_rows = (lambda s: M.A[s:s + 256] @ M.B) if isinstance(M, FactoredMatrix) else (lambda s: M[s:s + 256])
    hits = []
    for s in range(0, M.shape[0], 256):
        rows = dense_rows(s)
        diag = rows[torch.arange(len(rows)), s + torch.arange(len(rows))]
        hits.append(diag >= rows.max(-1).values)
    return float(torch.cat(hits).double().mean())


CORRECT = {
    "in_context_learning_score": [ind.in_context_learning_score, icl_loops, icl_index_tensor,
                                  icl_per_sequence_then_mean],
    "positional_attention_pattern": [ind.positional_attention_pattern, positional_einsum, positional_sdpa,
                                     positional_per_head_float64],
    "k_composition_circuit": [ind.k_composition_circuit, kcomp_dense_einsum, kcomp_transformer_lens,
                              kcomp_factors_tuple],
    "top_1_diagonal_accuracy": [ind.top_1_diagonal_accuracy, top1_dense_tensor, top1_row_loop, top1_by_max],
}
HIDDEN_CASES = (11, 12, 13)
EXERCISES = {name: harness.exercise(check, name) for name in CORRECT}


def _id(value):
    return value if isinstance(value, str) else getattr(value, "name", getattr(value, "__name__", "fn"))


def _running_outputs(ex, inputs):
    """(name, output) of the reference and of every variant that runs on these inputs."""
    outputs = [("reference", ex.reference(**inputs))]
    for wrong in ex.misconceptions:
        try:
            outputs.append((wrong.name, wrong.implementation(**inputs)))
        except Exception:  # e.g. a transposition that needs square sizes
            pass
    return outputs


def _all_inputs(ex):
    return [ex.make_inputs(seed_for(ex.name, c)) for c in ex.default_cases] + [make() for make in ex.extra_inputs]


# --------------------------------------------------------------------------- both halves


def test_every_exercise_of_the_part_is_here_with_three_seeded_cases_and_a_real_one():
    assert set(check.EXERCISES) == set(EXERCISES) and check.CHAPTER == "03"
    for ex in EXERCISES.values():
        assert len(ex.default_cases) == 3 and len(ex.extra_inputs) == 1 and N_DEFAULT == 4


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_variants_differ_from_the_truth_and_each_other_on_every_default_case(name):
    """Where a variant runs (the square-only transpositions fail to on rectangular sizes), it differs
    from the reference and from every other variant: on the seeded cases and on the real model."""
    ex = EXERCISES[name]
    for i, inputs in enumerate(_all_inputs(ex)):
        outputs = _running_outputs(ex, inputs)
        for a in range(len(outputs)):
            for b in range(a + 1, len(outputs)):
                assert not outputs_match(outputs[a][1], outputs[b][1], ex.rtol, ex.atol), \
                    (i, outputs[a][0], outputs[b][0])


def test_the_briefs_mistakes_are_all_catalogued():
    names = {(n, m.name) for n, ex in EXERCISES.items() for m in ex.misconceptions}
    for required in [
        ("in_context_learning_score", "sign reversed (early minus late)"),
        ("in_context_learning_score", "token positions used as loss columns"),
        ("in_context_learning_score", "exclusive end of range"),
        ("in_context_learning_score", "sums instead of means"),
        ("in_context_learning_score", "one number per sequence"),
        ("positional_attention_pattern", "no causal mask"),
        ("positional_attention_pattern", "no 1/sqrt(d_head)"),
        ("positional_attention_pattern", "softmax over queries"),
        ("positional_attention_pattern", "W_Q and W_K swapped"),
        ("positional_attention_pattern", "scaled by 1/d_model"),
        ("positional_attention_pattern", "scaled by 1/sqrt(d_model)"),
        ("positional_attention_pattern", "masked with 0 instead of -inf"),
        ("k_composition_circuit", "Q-composition instead"),
        ("k_composition_circuit", "previous-token head left out"),
        ("k_composition_circuit", "circuit transposed"),
        ("k_composition_circuit", "OV on both sides"),
        ("k_composition_circuit", "W_O before W_V"),
        ("top_1_diagonal_accuracy", "argmax over the wrong axis"),
        ("top_1_diagonal_accuracy", "count instead of fraction"),
        ("top_1_diagonal_accuracy", "argmin instead of argmax"),
        ("top_1_diagonal_accuracy", "diagonal above the row mean"),
    ]:
        assert required in names, required


# --------------------------------------------------------------------------- mistakes as a student writes them


def _explanation(name, key):
    return {m.name: m.explanation for m in EXERCISES[name].misconceptions}[key]


def student_icl_slices(losses, early=(5, 15), late=(100, 127)):
    return (losses[:, late[0]:late[1]].mean() - losses[:, early[0]:early[1]].mean()).item()


def student_icl_reversed(losses, early=(5, 15), late=(100, 127)):
    return float(losses[:, early[0] - 1:early[1]].mean() - losses[:, late[0] - 1:late[1]].mean())


def student_icl_unshifted(losses, early=(5, 15), late=(100, 127)):
    return float(losses[:, late[0]:late[1] + 1].mean() - losses[:, early[0]:early[1] + 1].mean())


def student_positional_tril(W_pos, W_Q, W_K):
    scores = (W_pos @ W_Q) @ (W_pos @ W_K).transpose(1, 2) / math.sqrt(W_Q.shape[2])
    return torch.softmax(torch.tril(scores), dim=-1)  # tril zeroes the future: exp(0) is not 0


def student_positional_dim1(W_pos, W_Q, W_K):
    scores = (W_pos @ W_Q) @ (W_pos @ W_K).transpose(1, 2) / math.sqrt(W_Q.shape[2])
    mask = torch.triu(torch.ones_like(scores[0]), diagonal=1).bool()
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=1)  # dim 1 of [head, query, key]


def student_positional_no_mask(W_pos, W_Q, W_K):
    q, k = torch.einsum("pd,hdk->hpk", W_pos, W_Q), torch.einsum("pd,hdk->hpk", W_pos, W_K)
    return torch.softmax(torch.einsum("hqk,hsk->hqs", q, k) / math.sqrt(W_Q.shape[-1]), dim=-1)


def student_kcomp_direct(W_E, W_Q, W_K, W_V, W_O):
    return (W_E @ W_Q) @ (W_E @ W_K).T


def student_kcomp_q_composition(W_E, W_Q, W_K, W_V, W_O):
    ov = FactoredMatrix(W_V, W_O)
    return FactoredMatrix((W_E @ ov).AB @ W_Q, (W_E @ W_K).T)


def student_top1_columns(M):
    return (M.AB.argmax(0) == torch.arange(M.shape[0])).float().mean().item() if isinstance(M, FactoredMatrix) \
        else (M.argmax(0) == torch.arange(M.shape[0])).float().mean().item()


def student_top1_count(M):
    dense = M.AB if isinstance(M, FactoredMatrix) else M
    return (dense.argmax(-1) == torch.arange(dense.shape[0])).sum().item()


@pytest.mark.parametrize("name,fn,key", [
    ("in_context_learning_score", student_icl_slices, "ranges used as Python slices"),
    ("in_context_learning_score", student_icl_reversed, "sign reversed (early minus late)"),
    ("in_context_learning_score", student_icl_unshifted, "token positions used as loss columns"),
    ("positional_attention_pattern", student_positional_tril, "masked with 0 instead of -inf"),
    ("positional_attention_pattern", student_positional_dim1, "softmax over queries"),
    ("positional_attention_pattern", student_positional_no_mask, "no causal mask"),
    ("k_composition_circuit", student_kcomp_direct, "previous-token head left out"),
    ("k_composition_circuit", student_kcomp_q_composition, "Q-composition instead"),
    ("top_1_diagonal_accuracy", student_top1_columns, "argmax over the wrong axis"),
    ("top_1_diagonal_accuracy", student_top1_count, "count instead of fraction"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_student_written_mistakes_are_named(name, fn, key, capsys):
    harness.assert_student_mistake_named(getattr(check, name), fn, harness.explanation(EXERCISES[name], key), capsys)


# --------------------------------------------------------------------------- output forms


def test_a_circuit_of_the_wrong_shape_is_told_so():
    """A rectangular case: one factor alone is [d_vocab, d_head]; (in the square first case it is
    named as a misconception instead)."""
    with pytest.raises(CheckFailure, match=r"\[d_vocab, d_head\].*must be \[d_vocab, d_vocab\]"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: W_E @ W_Q, cases=[1])
    with pytest.raises(CheckFailure, match=r"\[d_head, d_head\].*wrong way round"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: (W_E @ W_V @ W_O @ W_K).T @ (W_E @ W_Q),
                                    cases=[1])
    with pytest.raises(CheckFailure, match="no head axis"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: ind.k_composition_circuit(
            W_E, W_Q, W_K, W_V, W_O).AB[None], cases=[1])
    with pytest.raises(CheckFailure) as info:
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: W_E @ W_Q)
    assert _explanation("k_composition_circuit", "one side of the circuit only") in str(info.value)


def test_a_circuit_that_is_not_a_matrix_is_refused():
    with pytest.raises(CheckFailure, match="FactoredMatrix \\(or a torch.Tensor\\)"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: ind.k_composition_circuit(
            W_E, W_Q, W_K, W_V, W_O).AB.numpy())
    with pytest.raises(CheckFailure, match="do not multiply"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: (W_E @ W_Q, W_E @ W_K), cases=[1])


def test_top_1_default_cases_cover_dense_and_factored_inputs():
    ex = check.TOP_1_DIAGONAL_ACCURACY
    kinds = [type(inputs["M"]).__name__ for inputs in _all_inputs(ex)]
    assert kinds == ["Tensor", "FactoredMatrix", "Tensor", "FactoredMatrix"]
    hidden = [type(ex.make_inputs(seed_for(ex.name, c))["M"]).__name__ for c in range(100, 110)]
    assert {"Tensor", "FactoredMatrix"} <= set(hidden)
    for inputs in _all_inputs(ex)[:3]:
        n = inputs["M"].shape[0]
        assert inputs["M"].shape == (n, n) and n >= 20
    factored = _all_inputs(ex)[1]["M"]
    assert factored.A.shape[-1] < factored.shape[0]  # low rank, as a real circuit is


def test_square_first_cases_and_rectangular_others():
    kc = check.K_COMPOSITION_CIRCUIT
    sizes = lambda inputs: {d for v in inputs.values() for d in v.shape}  # noqa: E731
    assert len(sizes(kc.make_inputs(seed_for(kc.name, 0)))) == 1
    assert all(len(sizes(kc.make_inputs(seed_for(kc.name, c)))) == 3 for c in (1, 2))
    assert any(len(sizes(kc.make_inputs(seed_for(kc.name, c)))) == 1 for c in range(100, 106))
    pp = check.POSITIONAL_ATTENTION_PATTERN
    for c in range(3):
        inputs = pp.make_inputs(seed_for(pp.name, c))
        n, d_model = inputs["W_pos"].shape
        d_head = inputs["W_Q"].shape[-1]
        assert d_model not in (d_head, d_head ** 2)
        assert (n == d_head) == (c == 0)
    icl = check.IN_CONTEXT_LEARNING_SCORE
    first = icl.make_inputs(seed_for(icl.name, 0))
    assert first["late"][1] == first["losses"].shape[1]  # like the real (100, 127) on 127 columns


def test_icl_real_case_scores_with_the_functions_own_defaults():
    """The real case passes only the losses: a wrong default range fails there (case 4 of 4)."""
    def wrong_default(losses, early=(5, 15), late=(100, 126)):
        return ind.in_context_learning_score(losses, early, late)

    check.in_context_learning_score(wrong_default, cases=[1, 2, 3])
    with pytest.raises(CheckFailure, match="case 4 of 4"):
        check.in_context_learning_score(wrong_default)


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(losses, early=(5, 15), late=(100, 127)):
        out = ind.in_context_learning_score(losses, early, late)
        losses.zero_()
        return out

    check.in_context_learning_score(mutating)


def test_unknown_wrong_answers_report_the_difference():
    with pytest.raises(CheckFailure, match="Got"):
        check.in_context_learning_score(lambda losses, early=(5, 15), late=(100, 127):
                                        ind.in_context_learning_score(losses, early, late) + 0.01)
    with pytest.raises(CheckFailure, match="shape"):
        check.positional_attention_pattern(lambda W_pos, W_Q, W_K:
                                           ind.positional_attention_pattern(W_pos, W_Q, W_K)[0])
    with pytest.raises(CheckFailure, match="times 2 everywhere"):
        check.k_composition_circuit(lambda W_E, W_Q, W_K, W_V, W_O: 2 * ind.k_composition_circuit(
            W_E, W_Q, W_K, W_V, W_O).AB)


# --------------------------------------------------------------------------- stubs, inputs and the grader


def test_inputs_are_plain_data_and_travel_through_the_graders_codec():
    """Run every check as the grader's plan pass does and encode what the student's function would
    receive, including top-1's FactoredMatrix (sent as its two factors)."""
    received = {name: [] for name in EXERCISES}
    for name in EXERCISES:
        with grading_session("plan"):
            def stand_in(**kwargs):
                tensors = {}
                decoded = codec.decode(codec.encode(kwargs, tensors), tensors)
                assert not codec.is_opaque(decoded), (name, kwargs.keys())
                received[name].append(decoded)
                return None
            try:
                getattr(check, name)(stand_in)
            except CheckFailure:
                pass
    assert all(len(calls) == N_DEFAULT for calls in received.values())
    kinds = [type(call["M"]).__name__ for call in received["top_1_diagonal_accuracy"]]
    assert kinds == ["Tensor", "FactoredMatrix", "Tensor", "FactoredMatrix"]
    assert received["in_context_learning_score"][0]["early"] == check.IN_CONTEXT_LEARNING_SCORE.make_inputs(
        seed_for("in_context_learning_score", 0))["early"]


@pytest.mark.parametrize("name,fn", [
    ("k_composition_circuit", ind.k_composition_circuit),
    ("k_composition_circuit", kcomp_dense_einsum),
    ("top_1_diagonal_accuracy", top1_dense_tensor),
    ("in_context_learning_score", icl_index_tensor),
], ids=_id)
def test_outputs_sent_back_by_the_grader_still_pass(name, fn):
    """The grader's round trip: plan the arguments, compute the student's outputs on the decoded
    arguments, encode and decode those outputs (a FactoredMatrix travels as its factors), replay."""
    planned = []
    with grading_session("plan"):
        def record(**kwargs):
            planned.append(kwargs)
            return None
        try:
            getattr(check, name)(record)
        except CheckFailure:
            pass
    outputs = []
    for kwargs in planned:
        tensors = {}
        args = codec.decode(codec.encode(kwargs, tensors), tensors)
        out_tensors = {}
        outputs.append(codec.decode(codec.encode(fn(**args), out_tensors), out_tensors))
    replay = iter(outputs)
    with grading_session("grade") as session:
        getattr(check, name)(lambda **kwargs: next(replay))
    assert [o.passed for o in session.outcomes] == [True] * N_DEFAULT


def test_real_model_cases_are_the_models_own_pieces():
    model = check.attn_only_2l()
    assert model.cfg.n_layers == 2 and model.cfg.d_vocab == 4096
    icl = check.IN_CONTEXT_LEARNING_SCORE.extra_inputs[0]()
    assert set(icl) == {"losses"} and icl["losses"].shape == (check.ICL_REAL_SEQS, 127)
    assert ind.in_context_learning_score(icl["losses"]) < -0.1  # the model learns in context
    pos = check.POSITIONAL_ATTENTION_PATTERN.extra_inputs[0]()
    assert torch.equal(pos["W_Q"], model.W_Q[0].detach()) and pos["W_pos"].shape == (128, 128)
    pattern = ind.positional_attention_pattern(**pos)
    assert pattern[check.REAL_PREV_HEAD].diagonal(offset=-1).mean() > 0.9  # the previous-token head
    kc = check.K_COMPOSITION_CIRCUIT.extra_inputs[0]()
    assert torch.equal(kc["W_K"], model.W_K[1, check.REAL_INDUCTION_HEAD].detach())
    assert torch.equal(kc["W_O"], model.W_O[0, check.REAL_PREV_HEAD].detach())
    assert not any(v.requires_grad for v in [*icl.values(), *pos.values(), *kc.values()])
    M = check.TOP_1_DIAGONAL_ACCURACY.extra_inputs[0]()["M"]
    assert isinstance(M, FactoredMatrix) and M.shape == (4096, 4096)
    assert abs(ind.top_1_diagonal_accuracy(M) - 0.075) < 0.005
