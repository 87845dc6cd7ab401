import torch
from transformers import GPT2LMHeadModel

from conftest import packed_document_logits, tiny_gpt2
from llmforge.data.batches import DocumentMaskGuard, PackedCollator, document_position_ids
from llmforge.errors import TrainingError

EOS = 0


def test_positions_restart_after_each_eos():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 4], [EOS, 1, 2, 3, 4, 5, 6, 7]])
    pos = document_position_ids(ids, EOS)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 5, 6]]


def test_collator_gives_labels_equal_inputs_and_no_attention_mask():
    batch = PackedCollator(EOS)([{"input_ids": [3, EOS, 4, 5]}, {"input_ids": [6, 7, EOS, 8]}])
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert torch.equal(batch["labels"][:, 1:], batch["input_ids"][:, 1:])
    assert batch["labels"][:, 0].tolist() == [-100, -100]  # never a target: keeps Trainer's token count exact
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 2, 0]]
    plain = PackedCollator(EOS, document_aware=False)([{"input_ids": [3, EOS, 4, 5]}])
    assert "position_ids" not in plain


def _model(attn: str) -> GPT2LMHeadModel:
    return tiny_gpt2(attn, eos=EOS).eval()


def test_second_document_in_a_packed_row_sees_only_itself():
    """The promise of document-aware packing, checked on the real model forward as training calls it."""
    doc1, doc2 = [11, 12, 13, 14, EOS], [21, 22, 23, 24, 25, 26, EOS]
    for attn in ("sdpa", "eager"):
        in_row, by_itself, leaky = packed_document_logits(_model(attn), doc1, doc2, EOS)
        assert torch.allclose(in_row, by_itself, atol=1e-5), attn
        assert not torch.allclose(leaky, by_itself, atol=1e-3), attn


def test_guard_refuses_attention_mask_and_cache_in_training():
    model = _model("sdpa").train()
    handle = DocumentMaskGuard().attach(model)
    ids = torch.tensor([[1, 2, EOS, 3]])
    model(input_ids=ids, position_ids=document_position_ids(ids, EOS), use_cache=False)  # allowed
    for bad in ({"attention_mask": torch.ones_like(ids)}, {"use_cache": True}):
        try:
            model(input_ids=ids, **bad)
        except TrainingError as exc:
            assert "attention_mask" in str(exc) and "document_aware" in str(exc)
        else:
            raise AssertionError(f"guard let {bad} through")
    model.eval()
    model(input_ids=ids, attention_mask=torch.ones_like(ids))  # evaluation and generation are free
    handle.remove()
