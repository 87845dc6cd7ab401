import types

import pytest
import torch
from transformers import GPT2LMHeadModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from conftest import tiny_gpt2
from llmforge.data.batches import PackedCollator
from llmforge.models.attention import BLOCK, MATH_MAX_KEYS, NAME, document_attention, document_sdpa, key_starts

EOS = 0


def packed_mask(doc_lengths_per_row: list[list[int]]) -> torch.Tensor:
    """The bool mask transformers builds for packed rows: causal and block-diagonal, [batch, 1, T, T]."""
    rows = []
    for lengths in doc_lengths_per_row:
        doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
        T = len(doc)
        rows.append((doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool).tril())
    return torch.stack(rows)[:, None]


def test_each_query_block_starts_at_the_first_document_it_can_see():
    T = 3 * BLOCK + 44
    mask = packed_mask([[100, 200, T - 300]])  # documents start at 0, 100 and 300
    assert key_starts(mask) == [0, 100, 100, 300]
    # the same mask object is answered from the cache; a copy is computed again and agrees
    assert key_starts(mask) is key_starts(mask)
    assert key_starts(mask.clone()) == [0, 100, 100, 300]
    # with two rows, a block starts at the earlier of the two
    two = packed_mask([[100, 200, T - 300], [T - 20, 20]])
    assert key_starts(two) == [0, 0, 0, 0]


def test_a_mask_that_sees_later_keys_is_not_treated_as_causal():
    T = 2 * BLOCK + 1
    mask = packed_mask([[T]])
    mask[0, 0, 3, BLOCK + 5] = True
    assert key_starts(mask) is None


def _attention_module(groups: int = 1) -> torch.nn.Module:
    module = torch.nn.Module()
    module.num_key_value_groups = groups
    module.is_causal = True
    return module


@pytest.mark.parametrize(
    "docs,heads,kv_heads",
    [
        ([[40, 150, 90, 60]], 4, 4),  # short documents: every block runs as matmuls
        ([[30, 620, 50], [700]], 4, 2),  # a long document (flash kernel for its late blocks), two rows, GQA
    ],
)
def test_equals_full_sdpa_with_the_same_mask_forward_and_backward(docs, heads, kv_heads):
    mask = packed_mask(docs)
    B, T = mask.shape[0], mask.shape[-1]
    if T > MATH_MAX_KEYS + BLOCK:
        assert T - key_starts(mask)[-1] > MATH_MAX_KEYS  # the flash branch is exercised
    g = torch.Generator().manual_seed(0)
    q0 = torch.randn(B, heads, T, 16, generator=g)
    k0, v0 = (torch.randn(B, kv_heads, T, 16, generator=g) for _ in range(2))
    module = _attention_module(heads // kv_heads)
    results = []
    for fn in (sdpa_attention_forward, document_sdpa):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        out, _ = fn(module, q, k, v, mask, dropout=0.0, scaling=0.25)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out, q.grad, k.grad, v.grad])
    assert results[1][0].shape == (B, T, heads, 16)
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_without_a_mask_it_is_plain_sdpa():
    module = _attention_module()
    q, k, v = (torch.randn(1, 2, 300, 8) for _ in range(3))
    expected, _ = sdpa_attention_forward(module, q, k, v, None)
    got, _ = document_sdpa(module, q, k, v, None)
    assert torch.equal(got, expected)


def _gpt2(context: int) -> GPT2LMHeadModel:
    return tiny_gpt2("sdpa", vocab_size=64, n_positions=context, eos=EOS)


def test_a_packed_document_sees_only_itself_while_training():
    """As the train stage runs it: train mode, document_attention on, rows longer than one block."""
    g = torch.Generator().manual_seed(1)
    doc1 = torch.randint(1, 64, (180,), generator=g).tolist() + [EOS]
    doc2 = torch.randint(1, 64, (150,), generator=g).tolist() + [EOS]
    model = _gpt2(512).train()
    collate = PackedCollator(EOS)
    packed, alone = collate([{"input_ids": doc1 + doc2}]), collate([{"input_ids": doc2}])
    with document_attention(model):
        assert model.config._attn_implementation == NAME
        in_row = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        in_row.sum().backward()  # the backward pass runs through the block path too
    by_itself = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"]).logits
    torch.testing.assert_close(in_row[0, len(doc1) :], by_itself[0], atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # saved models load without llmforge


def test_other_kernels_are_left_alone():
    model = GPT2LMHeadModel._from_config(_gpt2(256).config, attn_implementation="eager")
    with document_attention(model):
        assert model.config._attn_implementation == "eager"


def test_a_failure_inside_still_restores_sdpa():
    model = _gpt2(256)
    with pytest.raises(RuntimeError), document_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_dropout_goes_through_sdpa_blocks():
    """With dropout the math branch is skipped; the output still has the right shape and differs from no dropout."""
    mask = packed_mask([[300]])
    module = types.SimpleNamespace(num_key_value_groups=1, training=True)
    q, k, v = (torch.randn(1, 2, 300, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    plain, _ = document_sdpa(module, q, k, v, mask, dropout=0.0)
    dropped, _ = document_sdpa(module, q, k, v, mask, dropout=0.5)
    assert dropped.shape == plain.shape == (1, 300, 2, 8)
    assert not torch.allclose(dropped, plain)


def test_padding_beyond_a_sliding_window_gets_zeros_not_nan_forward_and_backward():
    """A right-padded row of a sliding-window model (Mistral): a pad query whose window holds only pads may
    see no key. torch's SDPA gives it zeros; the blocks must too, or the NaN reaches the weights."""
    T, real, window = 2 * BLOCK, 150, 8
    i = torch.arange(T)
    causal = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    mask = (causal & (i[None, :] < real))[None, None]  # keys beyond `real` are padding
    assert not bool(mask[0, 0, real + window].any())  # a query that sees nothing
    g = torch.Generator().manual_seed(0)
    q0, k0, v0 = (torch.randn(1, 2, T, 16, generator=g) for _ in range(3))
    results = []
    for fn in (sdpa_attention_forward, document_sdpa):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        out, _ = fn(_attention_module(), q, k, v, mask, dropout=0.0, scaling=0.25)
        out[:, :real].sum().backward()  # the loss sees the real tokens only
        results.append([out[:, :real], q.grad, k.grad, v.grad])
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
