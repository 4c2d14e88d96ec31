"""Chapter 07's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter: the edge check's
expected values come from interventions and agree with the reference formula; the cases hold what
the mistakes need (rows with fewer than k positive pre-activations, a square first case, inactive
sources, scrambled node orders)."""
import numpy as np
import pytest
import torch

from utils.attribution import exercises as ref
from utils.checks import CheckFailure
from utils.checks import ch07 as check
from utils.checks.ch07_edges import edge_inputs, edges_by_intervention, real_edge_inputs
from utils.checks.ch07_influence import random_graph
from utils.checks.ch07_transcoder import transcoder_inputs
from utils.checks.core import seed_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- correct alternatives


def transcoder_loops(x, W_enc, b_enc, W_dec, b_dec, k):
    f = torch.zeros(x.shape[0], W_enc.shape[1])
    for row in range(x.shape[0]):
        pre = x[row] @ W_enc + b_enc
        for j in sorted(range(len(pre)), key=lambda j: -pre[j].item())[:k]:
            f[row, j] = max(pre[j].item(), 0.0)
    return f @ W_dec + b_dec, f


def transcoder_threshold(x, W_enc, b_enc, W_dec, b_dec, k):
    """Keep what reaches the k-th largest value (ties at the line are zeros after the ReLU)."""
    acts = torch.einsum("bi,it->bt", x, W_enc).add(b_enc).clamp(min=0)
    kth = acts.sort(dim=-1, descending=True).values[:, k - 1:k]
    f = torch.where(acts >= kth, acts, 0.0)
    return torch.einsum("bt,to->bo", f, W_dec) + b_dec, f


def edges_loops(acts, W_dec, pattern, W_V, W_O, ln1_w, ln1_scale, ln2_w, ln2_scale, W_enc):
    pos, n_src = acts.shape
    out = torch.zeros(pos, n_src, pos, W_enc.shape[1], dtype=acts.dtype)
    for k in range(pos):
        for i in range(n_src):
            v = acts[k, i] * W_dec[i]
            ln1 = (v - v.mean()) / ln1_scale[k] * ln1_w
            for q in range(k, pos):
                change = v.clone() if q == k else torch.zeros_like(v)
                for h in range(pattern.shape[0]):
                    change += pattern[h, q, k] * (ln1 @ W_V[h] @ W_O[h])
                out[k, i, q] = ((change - change.mean()) / ln2_scale[q] * ln2_w) @ W_enc
    return out


def edges_autograd(acts, W_dec, pattern, W_V, W_O, ln1_w, ln1_scale, ln2_w, ln2_scale, W_enc):
    """The Jacobian of the frozen linear map, times each source's activation."""
    def pre(a):
        resid = a @ W_dec
        x = (resid - resid.mean(-1, keepdim=True)) / ln1_scale[:, None] * ln1_w
        mid = resid + torch.einsum("hqk,kd,hde,hef->qf", pattern, x, W_V, W_O)
        return ((mid - mid.mean(-1, keepdim=True)) / ln2_scale[:, None] * ln2_w) @ W_enc

    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(pre, acts.clone())  # [q, j, k, i]
    return jac.permute(2, 3, 0, 1) * acts[:, :, None, None]


def influence_series(A):
    M = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-300)
    total, power = torch.zeros_like(M), M.clone()
    for _ in range(len(A)):  # a DAG: paths are at most n - 1 edges long
        total += power
        power = power @ M
    return total


def influence_solve(A):
    M = np.abs(A.numpy())
    sums = M.sum(1, keepdims=True)
    M = np.divide(M, sums, out=np.zeros_like(M), where=sums > 0)
    eye = np.eye(len(M))
    return torch.from_numpy(np.linalg.solve(eye - M, M))  # (I - M)^-1 M = (I - M)^-1 - I


def prune_loop(influence, share):
    order = sorted(range(len(influence)), key=lambda i: -influence[i].item())
    total, running, kept = influence.sum().item(), 0.0, []
    for i in order:
        kept.append(i)
        running += influence[i].item()
        if running >= share * total:
            break
    return torch.tensor([i in kept for i in range(len(influence))])


def prune_numpy(influence, share):
    values = influence.numpy()
    order = np.argsort(-values, kind="stable")
    cumulative = np.cumsum(values[order]) / values.sum()
    keep = np.searchsorted(cumulative, share) + 1  # first index reaching the share, inclusive
    mask = np.zeros(len(values), dtype=bool)
    mask[order[:keep]] = True
    return torch.from_numpy(mask)


def scores_series(A, error_nodes, token_nodes, logit_weights):
    B = influence_series(A)
    influence = logit_weights @ B
    M = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-300)
    r = influence[token_nodes].sum() / influence[token_nodes | error_nodes].sum()
    has_inputs = A.abs().sum(1) > 0
    w = (influence + logit_weights) * has_inputs
    return r, (w * (1 - M[:, error_nodes].sum(1))).sum() / w.sum()  # 0-d tensors are fine


def scores_package(A, error_nodes, token_nodes, logit_weights):
    from utils.attribution.influence import graph_scores

    return graph_scores(A, error_nodes, token_nodes, logit_weights)


CORRECT = {
    "transcoder_forward": [ref.transcoder_forward, transcoder_loops, transcoder_threshold],
    "feature_edges": [ref.feature_edges, edges_loops, edges_autograd],
    "influence_matrix": [ref.influence_matrix, influence_series, influence_solve],
    "prune_mask": [ref.prune_mask, prune_loop, prune_numpy],
    "graph_scores": [ref.graph_scores, scores_series, scores_package],
}
HIDDEN_CASES = (7, 8, 9)


# --------------------------------------------------------------------------- the edge check is an intervention


@pytest.mark.parametrize("case", [0, 1, 2, 7])
def test_reference_edges_equal_interventions(case):
    """The formula (exercises.feature_edges) and the finite interventions the check uses agree."""
    inputs = edge_inputs(seed_for("feature_edges", case))
    assert torch.allclose(ref.feature_edges(**inputs), edges_by_intervention(**inputs), atol=1e-10)


def test_real_edge_case_uses_active_features_of_gelu_2l():
    inputs = real_edge_inputs()
    assert (inputs["acts"] > 0).sum() >= inputs["acts"].shape[0]  # each position has active sources
    assert inputs["acts"].dtype == torch.float64
    assert torch.allclose(ref.feature_edges(**inputs), edges_by_intervention(**inputs), atol=1e-9)
    assert ref.feature_edges(**inputs).abs().max() > 1e-2  # not trivially zero


def test_edge_check_rejects_a_small_error():
    """1e-4 in float64 is the contract: a 1e-3 relative error is caught."""
    with pytest.raises(CheckFailure):
        check.feature_edges(lambda **kw: ref.feature_edges(**kw) * (1 + 1e-3))


# --------------------------------------------------------------------------- cases hold what the mistakes need


def test_transcoder_cases_have_rows_with_fewer_than_k_positive():
    for case in (*check.TRANSCODER.default_cases, *HIDDEN_CASES):
        inputs = transcoder_inputs(seed_for("transcoder_forward", case))
        positive = ((inputs["x"] @ inputs["W_enc"] + inputs["b_enc"]) > 0).sum(-1)
        assert (positive < inputs["k"]).any() and (positive > inputs["k"]).any()
    first = transcoder_inputs(seed_for("transcoder_forward", 0))
    assert first["W_enc"].shape[0] == first["W_dec"].shape[1]  # d_in = d_out: "b_dec subtracted" runs


def test_random_graphs_are_acyclic_and_scrambled():
    for case in range(5):
        g = random_graph(case)
        A = g["A"]
        # acyclic: the normalised matrix is nilpotent
        M = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-300)
        assert torch.matrix_power(M, len(A)).abs().max() < 1e-12
        assert (A.abs().sum(1)[g["token_nodes"] | g["error_nodes"]] == 0).all()
        assert not torch.equal(A, torch.tril(A)) and not torch.equal(A, torch.triu(A))


def test_tuple_answers_say_which_part_is_wrong():
    with pytest.raises(CheckFailure, match="completeness is wrong"):
        check.graph_scores(lambda **kw: (ref.graph_scores(**kw)[0], 0.5))
    with pytest.raises(CheckFailure, match="f is wrong"):
        check.transcoder_forward(lambda **kw: (ref.transcoder_forward(**kw)[0], ref.transcoder_forward(**kw)[1] * 2))
