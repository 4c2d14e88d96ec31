"""The shared tensor helpers, against independent computations."""
import pytest
import torch

from utils.tensors import causal_mask, is_factored, kron, require_equal, require_ndim


def test_causal_mask_allows_exactly_the_keys_at_or_before_the_query():
    n = 5
    mask = causal_mask(n)
    assert mask.dtype == torch.bool
    assert all(mask[i, j] == (j <= i) for i in range(n) for j in range(n))
    with pytest.raises(ValueError, match="at least one position"):
        causal_mask(0)


def test_kron_matches_its_definition_on_transposed_views():
    a, b = torch.randn(3, 2).T, torch.randn(4, 3).T  # non-contiguous views
    got = kron(a, b)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(got[i * 3:(i + 1) * 3, j * 4:(j + 1) * 4], a[i, j] * b)


def test_shape_checks_fail_in_words():
    assert require_ndim(torch.zeros(2, 3), "x", (2, 3)).shape == (2, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        require_ndim([1, 2], "x", 1)
    with pytest.raises(ValueError, match=r"x must have 3 dimensions, got shape \(2, 3\)"):
        require_ndim(torch.zeros(2, 3), "x", 3)
    require_equal(4, 4, "d_model")
    with pytest.raises(ValueError, match="d_model: 4 != 5"):
        require_equal(4, 5, "d_model")


def test_is_factored_recognises_a_factored_matrix_and_not_a_tensor():
    from transformer_lens import FactoredMatrix

    assert is_factored(FactoredMatrix(torch.randn(3, 2), torch.randn(2, 3)))
    assert not is_factored(torch.randn(3, 3))
