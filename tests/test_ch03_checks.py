"""Chapter 03's checks of sections 1-3 (copying, induction, composition; the circuit's and
patching's are in test_ch03_circuit_checks.py and test_ch03_patching_checks.py): the data
tests/test_check_contract.py runs the contract on (correct implementations written other ways),
and the tests particular to them: the mistakes the issue lists (eigenvalues of W_OV alone, singular
values instead of eigenvalues, |lambda| in the copying score's numerator, composition products in
the wrong order or with QK untransposed for K-composition, the induction stripe at offset seq_len,
softmax applied twice, log-probabilities misused or unshifted, missing Frobenius normalisation)
catalogued and named as a student writes them, eigenvalue specifics, the cases, the grader's codec."""

import check_harness as harness
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformer_lens import FactoredMatrix

from utils import induction as ind
from utils.checks import CheckFailure, ch03_composition, ch03_induction, toolkit
from utils.checks import ch03 as check
from utils.checks.core import grading_session, seed_for
from utils.grading import codec

SQUARE = ("full_ov_circuit_eigenvalues", "composition_score", "composition_scores")


# --------------------------------------------------------------------------- other correct versions


def small_via_factored_matrix(A, B):
    return FactoredMatrix(A, B).eigenvalues


def small_via_transposes(A, B):
    """(B A)^T = A^T B^T has the same eigenvalues; numpy, float64, complex128, sorted by size."""
    out = np.linalg.eigvals((A.double().transpose(-1, -2) @ B.double().transpose(-1, -2)).numpy())
    out = torch.from_numpy(out)
    return out.gather(-1, out.abs().argsort(-1, descending=True))


def ov_eigs_tl_algebra(W_E, W_V, W_O, W_U):
    return (W_E @ FactoredMatrix(W_V, W_O) @ W_U).eigenvalues


def ov_eigs_per_head(W_E, W_V, W_O, W_U):
    """One head at a time, W_O (W_U W_E) W_V: d_head x d_head, in float64."""
    middle = W_U.double() @ W_E.double()  # [d_model, d_model]
    return torch.stack([torch.linalg.eigvals(W_O[h].double() @ middle @ W_V[h].double()).flip(-1)
                        for h in range(W_V.shape[0])])


def copying_sum_then_real(eigenvalues):
    return eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1)


def copying_loops(eigenvalues):
    out = []
    for head in eigenvalues.tolist():
        out.append(sum(complex(v).real for v in head) / sum(abs(complex(v)) for v in head))
    return torch.tensor(out)


def copying_forgot_real(eigenvalues):
    """No .real: complex with a zero imaginary part (conjugate pairs cancel); accepted."""
    return eigenvalues.sum(-1) / eigenvalues.abs().sum(-1)


def top_k_dense_topk(W_E, W_V, W_O, W_U, k):
    fractions = []
    for h in range(W_V.shape[0]):
        circuit = W_E @ W_V[h] @ W_O[h] @ W_U
        top = circuit.topk(k, dim=-1).indices
        fractions.append((top == torch.arange(len(circuit))[:, None]).any(-1).float().mean())
    return torch.stack(fractions)


def top_k_by_threshold(W_E, W_V, W_O, W_U, k):
    """t passes when its own logit reaches the k-th largest value of its row (float64, per head)."""
    out = []
    for h in range(W_V.shape[0]):
        circuit = (W_E.double() @ W_V[h].double()) @ (W_O[h].double() @ W_U.double())
        kth = circuit.topk(k, dim=-1).values[:, -1]
        out.append((torch.diagonal(circuit) >= kth).double().mean())
    return torch.stack(out)


def loss_cross_entropy(logits, tokens):
    b, p, v = logits.shape
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), reduction="none").view(b, p - 1)


def loss_logsumexp(logits, tokens):
    target = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return torch.logsumexp(logits[:, :-1], dim=-1) - target


def induction_loops(pattern, seq_len):
    b, h, n, _ = pattern.shape
    out = torch.zeros(h)
    for head in range(h):
        out[head] = sum(pattern[i, head, q, q - seq_len + 1]
                        for i in range(b) for q in range(seq_len + 1, n)) / (b * seq_len)
    return out


def induction_indexing(pattern, seq_len):
    q = torch.arange(seq_len + 1, 2 * seq_len + 1)
    return pattern[:, :, q, q - (seq_len - 1)].mean((0, -1))


def previous_loops(pattern):
    b, h, n, _ = pattern.shape
    return torch.tensor([sum(float(pattern[i, head, q, q - 1]) for i in range(b) for q in range(1, n)) / (b * (n - 1))
                         for head in range(h)])


def previous_indexing(pattern):
    q = torch.arange(1, pattern.shape[-1])
    return pattern[:, :, q, q - 1].mean((0, -1))


def drop_loops(losses, seq_len):
    first = [float(x) for row in losses for x in row[1:seq_len]]
    second = [float(x) for row in losses for x in row[seq_len + 1:]]
    return sum(first) / len(first) - sum(second) / len(second)


def drop_tensor(losses, seq_len):
    halves = torch.stack([losses[:, 1:seq_len], losses[:, seq_len + 1:]])
    return (halves[0] - halves[1]).mean()  # a 0-d tensor is fine


def ablate_in_place(z, heads, mean=False):
    """What a hook does: edit z in place and return it."""
    for h in heads:
        z[:, :, h] = z[:, :, h].mean(dim=(0, 1)) if mean else 0.0
    return z


def ablate_by_mask(z, heads, mean=False):
    keep = torch.ones(z.shape[2])
    keep[heads] = 0.0
    keep = keep[None, None, :, None]
    replacement = z.mean(dim=(0, 1), keepdim=True) if mean else torch.zeros_like(z)
    return z * keep + replacement * (1 - keep)


def score_einsum(W_A, W_B):
    prod = torch.einsum("...mn,...np->...mp", W_A, W_B)
    return prod.pow(2).sum((-2, -1)).sqrt() / (W_A.pow(2).sum((-2, -1)).sqrt() * W_B.pow(2).sum((-2, -1)).sqrt())


def score_factored(W_A, W_B):
    eye = torch.eye(W_A.shape[-1])
    return ind.composition_score(FactoredMatrix(W_A, eye), W_B)


def scores_loops(W_Q, W_K, W_V, W_O, kind):
    h = W_Q.shape[1]
    out = torch.zeros(h, h)
    for i in range(h):
        for j in range(h):
            ov0 = W_V[0, i] @ W_O[0, i]
            right = {"Q": W_Q[1, j] @ W_K[1, j].T, "K": W_K[1, j] @ W_Q[1, j].T, "V": W_V[1, j] @ W_O[1, j]}[kind]
            out[i, j] = torch.linalg.norm(ov0 @ right) / (torch.linalg.norm(ov0) * torch.linalg.norm(right))
    return out


def scores_transformer_lens(W_Q, W_K, W_V, W_O, kind):
    try:
        from transformer_lens.utilities import composition_scores
    except ImportError:
        from transformer_lens.utils import composition_scores
    left = FactoredMatrix(W_V[0], W_O[0])
    qk = FactoredMatrix(W_Q[1], W_K[1].transpose(-1, -2))
    right = {"Q": qk, "K": qk.T, "V": FactoredMatrix(W_V[1], W_O[1])}[kind]
    return composition_scores(left, right, broadcast_dims=True)


CORRECT = {
    "eigenvalues_via_small_product": [ind.eigenvalues_via_small_product, small_via_factored_matrix,
                                      small_via_transposes],
    "full_ov_circuit_eigenvalues": [ind.full_ov_circuit_eigenvalues, ov_eigs_tl_algebra, ov_eigs_per_head],
    "copying_score": [ind.copying_score, copying_sum_then_real, copying_loops, copying_forgot_real],
    "self_top_k_fraction": [lambda W_E, W_V, W_O, W_U, k: ind.self_top_k_fraction(W_E, W_V, W_O, W_U, k),
                            top_k_dense_topk, top_k_by_threshold],
    "per_token_loss": [ind.per_token_loss, loss_cross_entropy, loss_logsumexp],
    "induction_scores": [ind.induction_scores, induction_loops, induction_indexing],
    "previous_token_scores": [ind.previous_token_scores, previous_loops, previous_indexing],
    "induction_loss_drop": [ind.induction_loss_drop, drop_loops, drop_tensor],
    "ablate_heads": [ind.ablate_heads, ablate_in_place, ablate_by_mask],
    "composition_score": [ind.composition_score, score_einsum, score_factored],
    "composition_scores": [ind.composition_scores, scores_loops, scores_transformer_lens],
}
HIDDEN_CASES = (11, 12, 13, 14, 15, 16)
# On later cases some variants agree with the reference or with each other (a spectrum with no
# imaginary parts to drop; with mean=False every mean variant is zero ablation; for kind "V",
# swapping Q- and K-composition changes nothing). The first case tells every variant apart.
TOLD_APART_ON_THE_FIRST_CASE_ONLY = {"eigenvalues_via_small_product", "ablate_heads", "composition_scores"}
EXERCISES = {name: harness.exercise(check, name) for name in CORRECT}


# --------------------------------------------------------------------------- mistakes the issue lists


def test_the_issues_mistakes_are_all_catalogued():
    names = {(n, m.name) for n, ex in EXERCISES.items() for m in ex.misconceptions}
    for required in [("full_ov_circuit_eigenvalues", "eigenvalues of W_OV alone"),
                     ("full_ov_circuit_eigenvalues", "singular values instead of eigenvalues"),
                     ("eigenvalues_via_small_product", "singular values instead of eigenvalues"),
                     ("copying_score", "|lambda| in the numerator"),
                     ("composition_score", "product in the wrong order"),
                     ("composition_scores", "product in the wrong order"),
                     ("composition_scores", "Q- and K-composition swapped"),
                     ("composition_score", "missing Frobenius normalisation"),
                     ("composition_scores", "missing Frobenius normalisation"),
                     ("induction_scores", "offset seq_len (duplicate-token stripe)"),
                     ("per_token_loss", "softmax twice"), ("per_token_loss", "log of log-probabilities"),
                     ("per_token_loss", "sign"), ("per_token_loss", "no shift"),
                     ("per_token_loss", "sliced alike ([:, 1:])")]:
        assert required in names, required


# --------------------------------------------------------------------------- mistakes as a student writes them


def student_w_ov_alone(W_E, W_V, W_O, W_U):
    return torch.linalg.eigvals(W_V @ W_O)  # all d_model eigenvalues of the head's OV matrix


def student_svd(W_E, W_V, W_O, W_U):
    return torch.linalg.svd((W_O @ W_U) @ (W_E @ W_V)).S


def student_abs_numerator(eigenvalues):
    return eigenvalues.abs().sum(dim=-1) / eigenvalues.abs().sum(dim=-1)


def student_k_with_q_pair(W_Q, W_K, W_V, W_O, kind):
    ov0 = FactoredMatrix(W_V[0], W_O[0])
    right = FactoredMatrix(W_Q[1], W_K[1].transpose(-1, -2))  # QK^1 for Q, K and V alike
    if kind == "V":
        right = FactoredMatrix(W_V[1], W_O[1])
    return torch.stack([torch.stack([ind.composition_score(ov0[i], right[j]) for j in range(W_Q.shape[1])])
                        for i in range(W_Q.shape[1])])


def student_wrong_order(W_A, W_B):
    return torch.linalg.matrix_norm(W_B @ W_A) / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B))


def student_no_normalisation(W_A, W_B):
    return (W_A @ W_B).norm(dim=(-2, -1))


def student_duplicate_stripe(pattern, seq_len):
    q = torch.arange(seq_len + 1, 2 * seq_len + 1)
    return pattern[:, :, q, q - seq_len].mean((0, -1))


def student_softmax_twice(logits, tokens):
    probs = logits.softmax(-1)
    b, p, v = logits.shape
    return F.cross_entropy(probs[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), reduction="none").view(b, p - 1)


def student_log_of_log_probs(logits, tokens):
    log_probs = torch.log(F.log_softmax(logits, dim=-1))
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def student_not_shifted(logits, tokens):
    return -F.log_softmax(logits[:, 1:], dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def student_log_probs_positive(logits, tokens):
    return F.log_softmax(logits, dim=-1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def student_ablate_positions(z, heads, mean=False):
    z = z.clone()
    z[:, heads] = z[:, heads].mean(dim=(0, 1)) if mean else 0.0  # z[:, heads] selects positions
    return z


def student_split_at_seq_len(losses, seq_len):
    return (losses[:, :seq_len].mean() - losses[:, seq_len:].mean()).item()


@pytest.mark.parametrize("name,fn,key", [
    ("full_ov_circuit_eigenvalues", student_w_ov_alone, "eigenvalues of W_OV alone"),
    ("full_ov_circuit_eigenvalues", student_svd, "singular values instead of eigenvalues"),
    ("copying_score", student_abs_numerator, "|lambda| in the numerator"),
    ("composition_scores", student_k_with_q_pair, "Q- and K-composition swapped"),
    ("composition_score", student_wrong_order, "product in the wrong order"),
    ("composition_score", student_no_normalisation, "missing Frobenius normalisation"),
    ("induction_scores", student_duplicate_stripe, "offset seq_len (duplicate-token stripe)"),
    ("per_token_loss", student_softmax_twice, "softmax twice"),
    ("per_token_loss", student_log_of_log_probs, "log of log-probabilities"),
    ("per_token_loss", student_not_shifted, "sliced alike ([:, 1:])"),
    ("per_token_loss", student_log_probs_positive, "sign"),
    ("ablate_heads", student_ablate_positions, "positions ablated instead of heads"),
    ("induction_loss_drop", student_split_at_seq_len, "unpredictable entries included"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_student_written_mistakes_are_named(name, fn, key, capsys):
    harness.assert_student_mistake_named(getattr(check, name), fn, harness.explanation(EXERCISES[name], key), capsys)


# --------------------------------------------------------------------------- eigenvalue specifics


def test_eigenvalues_in_any_order_and_conjugate_pairs_swapped_pass():
    def shuffled(A, B):
        eig = ind.eigenvalues_via_small_product(A, B)
        perm = torch.randperm(eig.shape[-1], generator=torch.Generator().manual_seed(eig.shape[-1]))
        return eig[..., perm].conj()  # conjugating swaps each pair a + bi <-> a - bi
    check.eigenvalues_via_small_product(shuffled)


def test_dense_eigenvalues_and_eig_pairs_fail_clearly():
    with pytest.raises(CheckFailure, match="small .* product"):
        check.eigenvalues_via_small_product(lambda A, B: torch.linalg.eigvals(A @ B))
    with pytest.raises(CheckFailure, match="big"):
        check.full_ov_circuit_eigenvalues(lambda W_E, W_V, W_O, W_U: torch.linalg.eigvals(W_E @ W_V @ W_O @ W_U))
    with pytest.raises(CheckFailure, match="eigenvectors"):
        check.eigenvalues_via_small_product(lambda A, B: torch.linalg.eig(B @ A))
    with pytest.raises(CheckFailure, match="torch.Tensor"):
        check.full_ov_circuit_eigenvalues(lambda W_E, W_V, W_O, W_U: [1.0])


def test_eigenvalue_comparison_is_relative_to_the_largest():
    """The real model's eigenvalues reach the thousands: a float32 computation in another order is
    accepted, an error of 1% of the largest is not."""
    check.full_ov_circuit_eigenvalues(lambda W_E, W_V, W_O, W_U: torch.linalg.eigvals(
        W_O @ ((W_U @ W_E) @ W_V)))
    with pytest.raises(CheckFailure, match="times 1.01 everywhere"):
        check.full_ov_circuit_eigenvalues(lambda W_E, W_V, W_O, W_U: ind.full_ov_circuit_eigenvalues(
            W_E, W_V, W_O, W_U) * 1.01)


def test_a_complex_copying_score_is_refused():
    with pytest.raises(CheckFailure, match="imaginary"):
        check.copying_score(lambda eigenvalues: eigenvalues.sum(-1) * (1 + 1j) / eigenvalues.abs().sum(-1))


def test_ablate_heads_must_return_z():
    with pytest.raises(CheckFailure, match="returned None"):
        check.ablate_heads(lambda z, heads, mean: None)


# --------------------------------------------------------------------------- inputs and cases


def test_square_first_case_and_rectangular_hidden_cases():
    for name in SQUARE:
        ex = EXERCISES[name]
        first = ex.make_inputs(seed_for(name, 0))
        dims = {d for v in first.values() if isinstance(v, torch.Tensor) and v.ndim >= 2 for d in v.shape[-2:]}
        hidden = [ex.make_inputs(seed_for(name, c)) for c in range(101, 107)]
        hidden_dims = [{d for v in h.values() if isinstance(v, torch.Tensor) and v.ndim >= 2 for d in v.shape[-2:]}
                       for h in hidden]
        assert len(dims) == 1, (name, dims)
        assert any(len(d) > 1 for d in hidden_dims), name
        for case in (1, 2):
            later = ex.make_inputs(seed_for(name, case))
            assert len({d for v in later.values() if isinstance(v, torch.Tensor) and v.ndim >= 2
                        for d in v.shape[-2:]}) > 1, (name, case)


def test_default_cases_cover_every_kind_and_both_ablations():
    kinds = [check.COMPOSITION_SCORES.make_inputs(seed_for("composition_scores", c))["kind"] for c in range(3)]
    assert kinds == ["K", "Q", "V"]
    means = [check.ABLATE_HEADS.make_inputs(seed_for("ablate_heads", c))["mean"] for c in range(3)]
    assert means == [True, False, True]


def test_real_model_cases_are_used_by_default():
    assert all(len(ex.extra_inputs) == 1 for ex in EXERCISES.values())


def test_real_model_cases_are_the_models_own_pieces():
    model = toolkit.attn_only_1l()
    eig = check.COPYING_SCORE.extra_inputs[0]()["eigenvalues"]
    assert eig.shape == (model.cfg.n_heads, model.cfg.d_head)
    assert (ind.copying_score(eig) > 0.5).all()  # attn-only-1l's heads copy
    top = check.SELF_TOP_K_FRACTION.extra_inputs[0]()
    assert top["W_E"].shape == (4096, model.cfg.d_model) and top["k"] == 5
    loss = check.PER_TOKEN_LOSS.extra_inputs[0]()
    assert loss["tokens"].shape == (2, 1 + 2 * check.REAL_SEQ_LEN)
    torch.testing.assert_close(loss["tokens"][:, 1:1 + check.REAL_SEQ_LEN], loss["tokens"][:, 1 + check.REAL_SEQ_LEN:])
    scores = check.COMPOSITION_SCORES.extra_inputs[0]()
    assert scores["W_Q"].shape[:2] == (2, 8) and scores["kind"] == "K"
    z = check.ABLATE_HEADS.extra_inputs[0]()["z"]
    assert z.shape[:2] == (2, 1 + 2 * check.REAL_SEQ_LEN)


def test_real_cases_work_with_a_two_layer_model(monkeypatch, capsys):
    """The real-model cases are built from any 2-layer model of attn-only-2l's family: patterns,
    losses and z from layer 1 (here a seeded random one standing in for the bundled model)."""
    from utils.models import HookedTinyTransformer, ModelConfig

    family = ModelConfig(n_layers=2, d_model=128, n_heads=8, d_head=32, d_vocab=4096, n_ctx=128, seed=11)
    stand_in = HookedTinyTransformer(family).eval()
    cached = (ch03_induction.repeated_run, ch03_composition.real_score_inputs)
    for fn in cached:
        fn.cache_clear()
    monkeypatch.setattr(ch03_induction, "attn_only_2l", lambda: stand_in)
    try:
        run = ch03_induction.repeated_run()
        assert run["z"].shape == (2, 1 + 2 * check.REAL_SEQ_LEN, 8, 32)
        for name in ("per_token_loss", "induction_scores", "previous_token_scores", "induction_loss_drop",
                     "ablate_heads", "composition_score", "composition_scores"):
            getattr(check, name)(CORRECT[name][0])
        assert capsys.readouterr().err == ""
    finally:
        for fn in cached:
            fn.cache_clear()


def test_unknown_wrong_answers_report_the_difference():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.composition_score(lambda W_A, W_B: ind.composition_score(W_A, W_B) + 0.01)
    with pytest.raises(CheckFailure, match="Got"):
        check.induction_loss_drop(lambda losses, seq_len: ind.induction_loss_drop(losses, seq_len) + 0.05)
    with pytest.raises(CheckFailure, match="shape"):
        check.induction_scores(lambda pattern, seq_len: ind.induction_scores(pattern, seq_len)[None])


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(pattern, seq_len):
        out = ind.induction_scores(pattern, seq_len)
        pattern.zero_()
        return out

    check.induction_scores(mutating)


def test_inputs_are_plain_data():
    """Only tensors, numbers, strings, bools and lists of ints (the sandboxed grader sends them as
    JSON + safetensors); the contract checks they are deterministic."""
    for ex in EXERCISES.values():
        a = ex.make_inputs(seed_for(ex.name, 0))
        for inputs in [a, *(make() for make in ex.extra_inputs)]:
            assert all(isinstance(v, (torch.Tensor, int, float, str, list)) for v in inputs.values()), ex.name


def test_planned_arguments_travel_through_the_graders_codec():
    """Run every check as the grader's plan pass does and encode what the student's function would
    receive, including copying_score's complex eigenvalues (sent as real and imaginary parts)."""
    opaque, called = set(), set()
    for name in EXERCISES:
        with grading_session("plan"):
            def stand_in(**kwargs):
                called.add(name)
                tensors = {}
                if codec.is_opaque(codec.decode(codec.encode(kwargs, tensors), tensors)):
                    opaque.add(name)
                return None
            try:
                getattr(check, name)(stand_in)
            except CheckFailure:
                pass
    assert called == set(EXERCISES)
    assert not opaque, opaque
