import pytest
import torch

from llmforge.training.loss import linear_cross_entropy_sum


def _reference(hidden, weight, labels):
    logits = hidden @ weight.T
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, weight.size(0)), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_matches_cross_entropy_and_its_gradients_in_fp32(chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = -100  # ignored positions carry no loss and no gradient
    ours = linear_cross_entropy_sum(hidden, weight, labels, chunk_rows=chunk_rows)
    ours.backward(torch.tensor(0.5))
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = _reference(hidden, weight, labels)
    ref.backward(torch.tensor(0.5))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_hidden, hidden.grad, atol=1e-6)
    assert torch.allclose(g_weight, weight.grad, atol=1e-5)
    assert torch.count_nonzero(g_hidden[0, :4]) == 0


def test_runs_its_matmuls_in_the_autocast_dtype():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 32, requires_grad=True)
    weight = torch.randn(70, 32, requires_grad=True)
    labels = torch.randint(0, 70, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy_sum(hidden, weight, labels, chunk_rows=5)
        ref = _reference(hidden, weight, labels)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=2e-2)
    ours.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    assert torch.isfinite(weight.grad).all()
