"""Chapter 02's checks: the data tests/test_check_contract.py runs the contract on (correct
implementations written other ways), and the tests particular to this chapter: the mistakes the
issue lists (W_E vs W_E^T, Q and K swapped, OV product in the wrong order, top tokens along the wrong
axis, positions in the OV circuit, no baseline subtracted) catalogued and named as a student writes
them, factored outputs, square and rectangular cases, the real-model cases."""
import math

import check_harness as harness
import pytest
import torch
from transformer_lens import FactoredMatrix

from utils import attention as at
from utils import circuits as C
from utils.checks import CheckFailure, ch02_skip_trigrams, toolkit
from utils.checks import ch02 as check
from utils.checks.core import seed_for

SQUARE = ("full_ov_circuit", "full_qk_circuit", "ov_from_activations", "positional_qk_pattern")


# --------------------------------------------------------------------------- other correct versions


def ov_tl_algebra(W_E, W_V, W_O, W_U):
    """TransformerLens's way: sandwich the head's OV FactoredMatrix between W_E and W_U."""
    return W_E @ FactoredMatrix(W_V, W_O) @ W_U


def ov_per_head_stacked(W_E, W_V, W_O, W_U):
    lefts = torch.stack([W_E.double() @ W_V[h].double() for h in range(W_V.shape[0])])
    rights = torch.stack([W_O[h].double() @ W_U.double() for h in range(W_V.shape[0])])
    return FactoredMatrix(lefts, rights)


def ov_as_factor_pair(W_E, W_V, W_O, W_U):
    """The two factors as a pair: how the sandboxed grader transports a FactoredMatrix."""
    return torch.einsum("vd,hdk->hvk", W_E, W_V), torch.einsum("hkd,du->hku", W_O, W_U)


def qk_tl_algebra(W_E, W_Q, W_K):
    return W_E @ FactoredMatrix(W_Q, W_K.transpose(-1, -2)) @ W_E.T


def qk_einsum(W_E, W_Q, W_K):
    return FactoredMatrix(torch.einsum("vd,hdk->hvk", W_E, W_Q), torch.einsum("vd,hdk->hkv", W_E, W_K))


def ov_acts_from_circuit(embed, pos_embed, W_V, W_O, W_U, out_tokens):
    """Materialise each head's W_V W_O W_U[:, out] (d_model x n_out) and apply it."""
    per_head = torch.stack([W_V[h] @ W_O[h] @ W_U[:, out_tokens] for h in range(W_V.shape[0])])
    return torch.einsum("bpd,hdo->bpho", embed, per_head)


def ov_acts_loops(embed, pos_embed, W_V, W_O, W_U, out_tokens):
    b, p, _ = embed.shape
    out = torch.zeros(b, p, W_V.shape[0], len(out_tokens))
    for i in range(b):
        for j in range(p):
            for h in range(W_V.shape[0]):
                out[i, j, h] = (embed[i, j] @ W_V[h] @ W_O[h] @ W_U)[out_tokens]
    return out


def pos_via_chapter_01(W_pos, W_Q, W_K):
    """Chapter 01's attention_pattern with the positions as the only input and zero biases."""
    k = W_Q.shape[-1]
    return torch.stack([at.attention_pattern(W_pos[None], W_Q[h], W_K[h], torch.zeros(k), torch.zeros(k))[0]
                        for h in range(W_Q.shape[0])])


def pos_tl_style(W_pos, W_Q, W_K):
    q = torch.einsum("pd,hdk->hpk", W_pos.double(), W_Q.double())
    k = torch.einsum("pd,hdk->hpk", W_pos.double(), W_K.double())
    scores = q @ k.transpose(-1, -2) / math.sqrt(W_Q.shape[-1])
    n = scores.shape[-1]
    scores = torch.where(torch.ones(n, n, dtype=torch.bool).triu(1), torch.tensor(-1e5, dtype=torch.float64), scores)
    return scores.softmax(-1)


def scores_loops(pattern):
    h, n, _ = pattern.shape
    out = torch.zeros(h, 3)
    for a in range(h):
        out[a, 0] = sum(pattern[a, i, i - 1] for i in range(1, n)) / (n - 1)
        out[a, 1] = sum(pattern[a, i, 0] for i in range(1, n)) / (n - 1)
        out[a, 2] = sum(sum(pattern[a, i, j] * (i - j) for j in range(i + 1)) / (i / 2) for i in range(1, n)) / (n - 1)
    return out


def scores_einsum(pattern):
    n = pattern.shape[-1]
    i = torch.arange(n, dtype=pattern.dtype)
    dist = torch.relu(i[:, None] - i[None, :])
    mean_dist = torch.einsum("hqk,qk->hq", pattern, dist)[:, 1:]
    return torch.stack([torch.diagonal(pattern, -1, -2, -1).mean(-1), pattern[:, 1:, 0].mean(-1),
                        (2 * mean_dist / i[1:]).mean(-1)], dim=-1)


def top_dense(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
    """Materialise both circuits, centre the QK matrix, sort with argsort, return Python lists."""
    qk, ov = qk_A @ qk_B, ov_A @ ov_B
    centred = qk - qk.mean(dim=1, keepdim=True)
    dest = centred[:, source].masked_fill(~allowed, -1e30)
    out = ov[source].masked_fill(~allowed, -1e30)
    return dest.argsort(descending=True)[:k].tolist(), out.argsort(descending=True)[:k].tolist()


def top_factored(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
    qk = C.source_centred(FactoredMatrix(qk_A, qk_B))
    dest = (qk.A @ qk.B[:, source]).masked_fill(~allowed, float("-inf"))
    out = (ov_A[source] @ ov_B).masked_fill(~allowed, float("-inf"))
    return tuple(dest.topk(k).indices), out.topk(k).indices


def trigrams_loops(W_E, W_Q, W_K, W_V, W_O, W_U, allowed, n, context_len):
    """Source by source in float64, with the dense circuits centred after the product (the real
    model's 4096 x 4096 circuits fit in memory)."""
    W_E, W_Q, W_K, W_V, W_O, W_U = (w.double() for w in (W_E, W_Q, W_K, W_V, W_O, W_U))
    qk = (W_E @ W_Q) @ (W_E @ W_K).T / math.sqrt(W_Q.shape[1])
    qk = qk - qk.mean(1, keepdim=True)
    ov = W_E @ W_V @ W_O @ W_U
    ov = ov - ov.mean(1, keepdim=True)
    rows = []
    for s in torch.nonzero(allowed)[:, 0].tolist():
        q, d = qk[:, s].masked_fill(~allowed, -math.inf).max(0)
        o, c = ov[s].masked_fill(~allowed, -math.inf).max(0)
        rows.append((float(o) / (1 + math.exp(-(float(q) - math.log(context_len)))), s, int(d), int(c)))
    rows.sort(key=lambda r: -r[0])
    return [list(r[1:]) for r in rows[:n]], [r[0] for r in rows[:n]]


def trigrams_from_circuits(W_E, W_Q, W_K, W_V, W_O, W_U, allowed, n, context_len):
    """From the chapter's factored circuits: centre the QK columns with source_centred, mask with -inf."""
    qk = C.source_centred(C.full_qk_circuit(W_E, W_Q[None], W_K[None])[0]).AB / math.sqrt(W_Q.shape[1])
    ov = C.full_ov_circuit(W_E, W_V[None], W_O[None], W_U)[0].AB
    ov = ov - ov.mean(1, keepdim=True)
    off = ~allowed
    best_q, dest = qk.masked_fill(off[:, None], float("-inf")).max(0)
    best_o, out = ov.masked_fill(off[None, :], float("-inf")).max(1)
    score = (best_o * torch.sigmoid(best_q - math.log(context_len))).masked_fill(off, float("-inf"))
    top = score.topk(n).indices
    return torch.stack([top, dest[top], out[top]], 1), score[top]


def effect_loops(logits_with, logits_without, out_tokens):
    gains, lp = [], []
    for b in range(len(out_tokens)):
        c = int(out_tokens[b])
        w, wo = logits_with[b, -1].double(), logits_without[b, -1].double()
        gains.append(float(w[c] - wo[c]))
        lp.append(float((w[c] - torch.logsumexp(w, 0)) - (wo[c] - torch.logsumexp(wo, 0))))
    return torch.tensor(gains), torch.tensor(lp)


def effect_via_softmax(logits_with, logits_without, out_tokens):
    idx = out_tokens[:, None]
    pw, po = logits_with[:, -1].softmax(-1), logits_without[:, -1].softmax(-1)
    return ((logits_with - logits_without)[:, -1].gather(1, idx).squeeze(1),
            (pw.gather(1, idx) / po.gather(1, idx)).log().squeeze(1))


def spearman_loops(x, y):
    def ranks(v):
        v = v.tolist()
        return [sum(u < a for u in v) + (sum(u == a for u in v) - 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def spearman_unique(x, y):
    """Average ranks from torch.unique: the mean of a group's places is (first + last) / 2."""
    def ranks(v):
        values, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        return (starts + (counts - 1) / 2).double()[inverse]

    return torch.corrcoef(torch.stack([ranks(x), ranks(y)]))[0, 1]


CORRECT = {
    "full_ov_circuit": [C.full_ov_circuit, ov_tl_algebra, ov_per_head_stacked, ov_as_factor_pair],
    "full_qk_circuit": [C.full_qk_circuit, qk_tl_algebra, qk_einsum],
    "ov_from_activations": [C.ov_from_activations, ov_acts_from_circuit, ov_acts_loops],
    "positional_qk_pattern": [lambda W_pos, W_Q, W_K: C.positional_qk_pattern(W_pos, W_Q, W_K), pos_via_chapter_01,
                              pos_tl_style],
    "positional_head_scores": [C.positional_head_scores, scores_loops, scores_einsum],
    "top_for_source": [C.top_for_source, top_dense, top_factored],
    "head_skip_trigrams": [C.head_skip_trigrams, trigrams_loops, trigrams_from_circuits],
    "confirmation_effect": [C.confirmation_effect, effect_loops, effect_via_softmax],
    "spearman": [C.spearman, spearman_loops, spearman_unique],
}
HIDDEN_CASES = (11, 12, 13, 14, 15, 16)
# top_for_source: on case 1 the reference's top tokens are also those of two variants; spearman: on
# cases 1 and 2 two kinds of ranks agree. The first case tells every variant apart.
TOLD_APART_ON_THE_FIRST_CASE_ONLY = {"top_for_source", "spearman"}
EXERCISES = {name: harness.exercise(check, name) for name in CORRECT}


# --------------------------------------------------------------------------- mistakes the issue lists


def test_the_issues_mistakes_are_all_catalogued():
    names = {(n, m.name) for n, ex in EXERCISES.items() for m in ex.misconceptions}
    for required in [("full_ov_circuit", "W_E transposed"), ("full_qk_circuit", "W_E transposed"),
                     ("full_qk_circuit", "Q and K swapped"), ("positional_qk_pattern", "Q and K swapped"),
                     ("full_ov_circuit", "W_O before W_V"), ("full_ov_circuit", "paper order typed literally"),
                     ("top_for_source", "QK row instead of column"), ("top_for_source", "OV column instead of row"),
                     ("ov_from_activations", "positional embedding in the values"),
                     ("confirmation_effect", "no baseline subtracted")]:
        assert required in names, required


# --------------------------------------------------------------------------- mistakes as a student writes them


def student_ov_transposed_embedding(W_E, W_V, W_O, W_U):
    return FactoredMatrix(torch.einsum("dv,hdk->hvk", W_E, W_V), W_O @ W_U)  # W_E read as [d_model, d_vocab]


def student_ov_wrong_order(W_E, W_V, W_O, W_U):
    return W_E @ FactoredMatrix(W_O, W_V) @ W_U  # "W_O W_V" from the paper, in code order


def student_qk_swapped(W_E, W_Q, W_K):
    return W_E @ FactoredMatrix(W_K, W_Q.transpose(-1, -2)) @ W_E.T


def student_positions_in_values(embed, pos_embed, W_V, W_O, W_U, out_tokens):
    resid = embed + pos_embed  # as in a standard-position model
    return torch.einsum("bpd,hdk,hke,ev->bphv", resid, W_V, W_O, W_U[:, out_tokens])


def student_top_wrong_axis(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
    qk = qk_A @ qk_B
    qk = qk - qk.mean(1, keepdim=True)
    dest = qk[source].masked_fill(~allowed, -1e9)  # a row: what `source` attends to
    out = (ov_A[source] @ ov_B).masked_fill(~allowed, -1e9)
    return dest.topk(k).indices, out.topk(k).indices


def student_top_wrong_ov_axis(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
    dest = (qk_A @ (qk_B[:, source] - qk_B.mean(1))).masked_fill(~allowed, -1e9)
    out = (ov_A @ ov_B)[:, source].masked_fill(~allowed, -1e9)  # a column
    return dest.topk(k).indices, out.topk(k).indices


def student_no_baseline(logits_with, logits_without, out_tokens):
    last = logits_with[:, -1]
    rows = torch.arange(len(out_tokens))
    return last[rows, out_tokens], last.log_softmax(-1)[rows, out_tokens]


@pytest.mark.parametrize("name,fn,key", [
    ("full_ov_circuit", student_ov_transposed_embedding, "W_E transposed"),
    ("full_ov_circuit", student_ov_wrong_order, "W_O before W_V"),
    ("full_qk_circuit", student_qk_swapped, "Q and K swapped"),
    ("ov_from_activations", student_positions_in_values, "positional embedding in the values"),
    ("top_for_source", student_top_wrong_axis, "QK row instead of column"),
    ("top_for_source", student_top_wrong_ov_axis, "OV column instead of row"),
    ("confirmation_effect", student_no_baseline, "no baseline subtracted"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_student_written_mistakes_are_named(name, fn, key, capsys):
    harness.assert_student_mistake_named(getattr(check, name), fn, harness.explanation(EXERCISES[name], key), capsys)


# --------------------------------------------------------------------------- factored outputs


def test_circuits_must_stay_factored():
    with pytest.raises(CheckFailure, match="not a dense tensor"):
        check.full_ov_circuit(lambda W_E, W_V, W_O, W_U: W_E @ W_V @ W_O @ W_U)
    with pytest.raises(CheckFailure, match="inner dimension"):
        check.full_qk_circuit(lambda W_E, W_Q, W_K: FactoredMatrix(
            W_E @ W_Q @ (W_E @ W_K).transpose(-1, -2), torch.eye(W_E.shape[0]).expand(W_Q.shape[0], -1, -1)))
    with pytest.raises(CheckFailure, match="leading head axis"):
        check.full_ov_circuit(lambda W_E, W_V, W_O, W_U: "circuit")
    with pytest.raises(CheckFailure, match="do not multiply"):
        check.full_ov_circuit(lambda W_E, W_V, W_O, W_U: (W_E @ W_V, torch.zeros(1, 1)))


def test_square_first_case_and_rectangular_hidden_cases():
    for name in SQUARE:
        ex = EXERCISES[name]
        first = ex.make_inputs(seed_for(name, 0))
        shapes = {tuple(v.shape) for v in first.values() if isinstance(v, torch.Tensor) and v.ndim >= 2}
        dims = {d for s in shapes for d in s[-2:]}
        hidden = [ex.make_inputs(seed_for(name, c)) for c in range(101, 107)]
        hidden_dims = [{d for v in h.values() if isinstance(v, torch.Tensor) and v.ndim >= 2 for d in v.shape[-2:]}
                       for h in hidden]
        assert len(dims) <= 2, (name, shapes)  # one size (plus the batch or head axis at most)
        assert any(len(d) > 2 for d in hidden_dims), name


def test_real_model_cases_are_used_by_default():
    assert all(len(ex.extra_inputs) == 1 for ex in EXERCISES.values())


def test_real_model_cases_are_the_models_own_pieces():
    model = toolkit.attn_only_1l()
    acts = check.OV_FROM_ACTIVATIONS.extra_inputs[0]()
    tokens = __import__("utils.data", fromlist=["analysis_tokens"]).analysis_tokens(seq_len=12, n_seqs=2)
    torch.testing.assert_close(acts["embed"], model.W_E[tokens].detach())
    top = check.TOP_FOR_SOURCE.extra_inputs[0]()
    dests, outs = C.top_for_source(**top)
    assert model.to_single_token("except") == int(outs[0])
    effect = check.CONFIRMATION_EFFECT.extra_inputs[0]()
    _, logprob_gain = C.confirmation_effect(**effect)
    assert (logprob_gain > math.log(2)).all()  # " try ... ):" really raises " except"
    sp = check.SPEARMAN.extra_inputs[0]()
    assert len(sp["x"]) == model.cfg.d_vocab and (sp["y"] == 0).sum() > 1000  # many ties


def test_unknown_wrong_answers_report_the_difference():
    with pytest.raises(CheckFailure, match="max abs error"):
        check.positional_head_scores(lambda pattern: C.positional_head_scores(pattern) + 0.01)
    with pytest.raises(CheckFailure, match="Got"):
        check.spearman(lambda x, y: C.spearman(x, y) + 0.05)
    with pytest.raises(CheckFailure, match="pair"):
        check.top_for_source(lambda **kw: C.top_for_source(**kw)[0])
    with pytest.raises(CheckFailure, match="a pair"):
        check.confirmation_effect(lambda **kw: torch.stack(C.confirmation_effect(**kw)))
    with pytest.raises(CheckFailure, match="shape"):
        check.confirmation_effect(lambda **kw: tuple(g[None] for g in C.confirmation_effect(**kw)))


def test_in_place_edits_cannot_corrupt_the_reference():
    def mutating(qk_A, qk_B, ov_A, ov_B, source, k, allowed):
        out = C.top_for_source(qk_A, qk_B, ov_A, ov_B, source, k, allowed)
        qk_B.zero_()
        allowed.fill_(False)
        return out

    check.top_for_source(mutating)


def test_inputs_are_plain_data():
    """Only tensors and numbers (the sandboxed grader sends them); the contract checks they are
    deterministic."""
    for ex in EXERCISES.values():
        a = ex.make_inputs(seed_for(ex.name, 0))
        for inputs in [a, *(make() for make in ex.extra_inputs)]:
            assert all(isinstance(v, (torch.Tensor, int, float)) for v in inputs.values()), ex.name


def test_head_skip_trigrams_is_the_search_the_chapter_tabulates():
    """The reference against utils.circuits.skip_trigrams (chunked over sources, all heads at once) on
    attn-only-1l's frequent tokens: the same triples and scores for every head."""
    model = toolkit.attn_only_1l()
    allowed = ch02_skip_trigrams.real_head_trigram_inputs()["allowed"]
    table = C.skip_trigrams(model, allowed, k=1)
    for head in range(model.cfg.n_heads):
        weights = [getattr(model, m)[0, head].detach() for m in ("W_Q", "W_K", "W_V", "W_O")]
        triples, scores = C.head_skip_trigrams(model.W_E.detach(), *weights, model.W_U.detach(), allowed, 8)
        expected = table.top(8, head=head)
        assert torch.equal(triples, expected.triples())
        torch.testing.assert_close(scores, expected.score, rtol=1e-4, atol=1e-5)


def test_head_skip_trigrams_refuses_bad_arguments():
    inputs = ch02_skip_trigrams.head_trigram_inputs(0)
    with pytest.raises(ValueError, match="n must be between"):
        C.head_skip_trigrams(**{**inputs, "n": int(inputs["allowed"].sum()) + 1})
    with pytest.raises(ValueError, match="allowed"):
        C.head_skip_trigrams(**{**inputs, "allowed": inputs["allowed"].float()})
