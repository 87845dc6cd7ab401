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


# --- the model's own loss, in fewer passes (causal_lm_loss) ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_bytes", [4 * 50, 4 * 50 * 5, 2**21])  # one row a chunk, 5 rows, all at once
@pytest.mark.parametrize("items", [None, 9])
@pytest.mark.parametrize("grad_scale", [3.0, -2.0])
def test_causal_lm_loss_is_transformers_loss_with_the_same_gradients(
    dtype, chunk_bytes, items, grad_scale, monkeypatch
):
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llmforge.training import loss

    monkeypatch.setattr(loss, "VOCAB_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 50, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = -100
    n = None if items is None else torch.tensor(items)
    ref = ForCausalLMLoss(logits, labels, 50, num_items_in_batch=n)
    (ref_grad,) = torch.autograd.grad(ref * grad_scale, logits)
    ours = loss.causal_lm_loss(logits, labels, 50, num_items_in_batch=n)
    (our_grad,) = torch.autograd.grad(ours * grad_scale, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    if dtype == torch.bfloat16:  # fp32 inside, one rounding at the end, as transformers' upcast gives
        assert torch.equal(our_grad, ref_grad)
    else:
        assert torch.allclose(our_grad, ref_grad, atol=1e-7)
    assert torch.count_nonzero(our_grad[0, :2]) == 0  # positions whose next label is ignored get no gradient


def test_a_models_own_loss_runs_through_it_with_the_same_value_and_gradients(caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmforge.training.loss import causal_lm_loss, use_vocab_cross_entropy

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()  # no dropout: the two forwards must see the same network
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[1, 5:] = -100
    ref = model(input_ids=ids, labels=labels).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    caplog.clear()
    assert use_vocab_cross_entropy(model) and model._loss_function is causal_lm_loss
    assert "loss_type" not in caplog.text  # deciding it must not make transformers warn
    ours = model(input_ids=ids, labels=labels).loss
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), ref_grads, strict=True))
    model.loss_function = lambda **kw: None  # a model with a loss of its own kind is left alone
    assert not use_vocab_cross_entropy(model)
