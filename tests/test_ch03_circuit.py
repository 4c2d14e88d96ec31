"""utils.induction.circuit against independent computations: loops over positions and token pairs,
the model's own forward pass, and closed forms."""
import math

import pytest
import torch
from transformer_lens import FactoredMatrix

from utils import induction as ind
from utils.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("attn-only-2l", device="cpu")


def test_in_context_learning_score_is_a_difference_of_token_position_means():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(3, 127, generator=g)
    # loss of the token at position t is column t - 1
    late = sum(losses[b, t - 1] for b in range(3) for t in range(100, 128)) / (3 * 28)
    early = sum(losses[b, t - 1] for b in range(3) for t in range(5, 16)) / (3 * 11)
    assert ind.in_context_learning_score(losses) == pytest.approx(float(late - early), abs=1e-6)
    assert ind.in_context_learning_score(losses, early=(1, 1), late=(127, 127)) == pytest.approx(
        float(losses[:, 126].mean() - losses[:, 0].mean()), abs=1e-6)


@pytest.mark.parametrize("early,late", [((0, 5), (100, 127)), ((5, 15), (100, 128)), ((20, 30), (10, 15))])
def test_in_context_learning_score_refuses_ranges_outside_the_context(early, late):
    with pytest.raises(ValueError, match="token positions"):
        ind.in_context_learning_score(torch.zeros(2, 127), early=early, late=late)


def test_positional_pattern_matches_a_loop_over_query_key_pairs():
    g = torch.Generator().manual_seed(1)
    W_pos = torch.randn(6, 5, generator=g)
    W_Q, W_K = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    got = ind.positional_attention_pattern(W_pos, W_Q, W_K)
    for h in range(2):
        for q in range(6):
            scores = [float(W_pos[q] @ W_Q[h] @ (W_pos[k] @ W_K[h])) / math.sqrt(3) for k in range(q + 1)]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            expected = [w / sum(weights) for w in weights] + [0.0] * (5 - q)
            assert got[h, q].tolist() == pytest.approx(expected, abs=1e-5)


def test_positional_pattern_is_the_models_pattern_when_tokens_carry_nothing(model):
    """With the token embedding and LayerNorm's bias zeroed, layer 0's queries and keys see the
    positional embedding alone (plus the biases b_Q, b_K, zeroed too): the model's pattern is the
    positional one."""
    m = load_model("attn-only-2l", device="cpu")
    with torch.no_grad():
        m.embed.W_E.zero_()
        m.blocks[0].ln1.b.zero_()
        m.blocks[0].attn.b_Q.zero_()
        m.blocks[0].attn.b_K.zero_()
        _, cache = m.run_with_cache(torch.zeros(1, 20, dtype=torch.long), names_filter=lambda n: "hook_pattern" in n)
        got = ind.positional_attention_pattern(m.W_pos[:20], m.W_Q[0], m.W_K[0])
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"][0], got, atol=1e-4)


def test_previous_token_heads_are_positional_in_the_shipped_model(model):
    pattern = ind.positional_attention_pattern(model.W_pos, model.W_Q[0], model.W_K[0])
    previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[:, 4:].mean(-1)
    assert previous[5] > 0.9 and previous[6] > 0.9
    assert sorted(previous.tolist())[-3] < 0.5


def test_k_composition_circuit_entries_are_query_key_dot_products():
    g = torch.Generator().manual_seed(2)
    V, d, k = 7, 5, 3
    W_E, W_Q, W_K = torch.randn(V, d, generator=g), torch.randn(d, k, generator=g), torch.randn(d, k, generator=g)
    W_V, W_O = torch.randn(d, k, generator=g), torch.randn(k, d, generator=g)
    circuit = ind.k_composition_circuit(W_E, W_Q, W_K, W_V, W_O)
    assert isinstance(circuit, FactoredMatrix) and circuit.shape == (V, V)
    for a in range(V):
        for b in range(V):
            query = W_E[a] @ W_Q
            written = W_E[b] @ W_V @ W_O  # what the layer-0 head moves into the key's residual stream
            assert circuit.AB[a, b].item() == pytest.approx(float(query @ (written @ W_K)), rel=1e-4, abs=1e-4)


def test_k_composition_circuit_is_the_models_qk_and_ov_circuits_composed(model):
    """The same circuit from the model's own FactoredMatrix QK (layer 1) and OV (layer 0) properties:
    W_E QK^(1.5) (W_E OV^(0.5))^T."""
    with torch.no_grad():
        W_E = model.W_E
        circuit = ind.k_composition_circuit(W_E, model.W_Q[1, 5], model.W_K[1, 5], model.W_V[0, 5], model.W_O[0, 5])
        expected = (W_E @ model.QK[1, 5]) @ (W_E @ model.OV[0, 5]).T
        rows = torch.arange(0, 4096, 97)
        assert torch.allclose(circuit.A[rows] @ circuit.B, expected.A[rows] @ expected.B, rtol=1e-3, atol=1e-3)


def test_top_1_diagonal_accuracy_counts_rows_whose_maximum_is_on_the_diagonal():
    M = torch.tensor([[3.0, 1.0, 0.0], [5.0, 2.0, 1.0], [0.0, 0.0, 9.0]])
    assert ind.top_1_diagonal_accuracy(M) == pytest.approx(2 / 3)
    assert ind.top_1_diagonal_accuracy(torch.eye(5) * 2 + 1) == 1.0
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(1100, 4, generator=g), torch.randn(4, 1100, generator=g)  # more rows than one chunk
    dense = A @ B
    loop = sum(int(dense[i].argmax() == i) for i in range(1100)) / 1100
    assert ind.top_1_diagonal_accuracy(FactoredMatrix(A, B)) == pytest.approx(loop)
    assert ind.top_1_diagonal_accuracy(dense) == pytest.approx(loop)
    with pytest.raises(ValueError, match="square"):
        ind.top_1_diagonal_accuracy(torch.zeros(3, 4))


@torch.no_grad()
def test_the_shipped_induction_circuit_copies_and_composes(model):
    """What chapter 03 reports: the induction heads' summed OV circuit puts the token itself first for
    about a quarter of the vocabulary; K-composition through head 0.5 finds the right previous token
    far above chance (1 / 4096), and a non-previous-token head does not."""
    W_E, W_U = model.W_E, model.W_U
    ov = sum(ind.full_ov_circuit(W_E, model.W_V[1, h], model.W_O[1, h], W_U).AB for h in (1, 3, 5, 6))
    assert ind.top_1_diagonal_accuracy(ov) > 0.2
    through_prev = ind.k_composition_circuit(W_E, model.W_Q[1, 5], model.W_K[1, 5], model.W_V[0, 5], model.W_O[0, 5])
    through_other = ind.k_composition_circuit(W_E, model.W_Q[1, 5], model.W_K[1, 5], model.W_V[0, 2], model.W_O[0, 2])
    assert ind.top_1_diagonal_accuracy(through_prev) > 0.05
    assert ind.top_1_diagonal_accuracy(through_other) < 0.005
