"""NEFTune (plugins/llmforge_neftune): the noise's scale per example, training only, and transformers' own."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.integrations.neftune import neftune_post_forward_hook

import llmforge_neftune as neft
from llmforge.config.schema import FinetuneConfig, LoraConfig
from llmforge.models.lora import apply_lora
from llmforge.plugin.manager import get_plugins

ALPHA, D = 5.0, 64


def model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=256, n_embd=D, n_layer=1, n_head=2))


def scaled(values: torch.Tensor, length: int) -> torch.Tensor:
    """Noise divided by the formula's bound alpha / sqrt(L * d): uniform in [-1, 1] if the scale is right."""
    return values / (ALPHA / math.sqrt(length * D))


def assert_uniform(u: torch.Tensor) -> None:
    assert u.abs().max() <= 1 + 1e-5
    assert u.abs().max() > 0.99  # it reaches the bound: not a smaller scale
    assert abs(u.mean().item()) < 0.05
    assert u.pow(2).mean().item() == pytest.approx(1 / 3, rel=0.1)


def test_padded_batch_scales_each_example_by_its_own_length():
    lengths = [200, 80, 20]
    mask = torch.zeros(3, 200, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    torch.manual_seed(1)
    noise = neft.noise(torch.zeros(3, 200, D), ALPHA, attention_mask=mask)
    for i, n in enumerate(lengths):
        assert_uniform(scaled(noise[i, :n], n))
        # expected squared norm of the whole example: L * d * (alpha^2 / (L d)) / 3 = alpha^2 / 3, whatever L
        assert noise[i, :n].pow(2).sum().item() == pytest.approx(ALPHA**2 / 3, rel=0.1)
        assert torch.all(noise[i, n:] == 0)  # padding gets none


def test_packed_row_scales_each_example_by_its_own_length_unlike_transformers():
    lengths = [10, 40, 100]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    assert neft.example_lengths(positions).tolist() == [[10] * 10 + [40] * 40 + [100] * 100]
    torch.manual_seed(2)
    noise = neft.noise(torch.zeros(1, 150, D), ALPHA, position_ids=positions)
    start = 0
    for n in lengths:
        part = noise[0, start : start + n]
        assert_uniform(scaled(part, n))
        assert part.pow(2).sum().item() == pytest.approx(ALPHA**2 / 3, rel=0.15)
        start += n
    # transformers scales by the whole packed row (transformers #34659): the 10-token example gets
    # sqrt(10 / 150) of the noise it would get alone
    emb = torch.nn.Embedding(300, D)
    emb.weight.data.zero_()
    emb.neftune_noise_alpha = ALPHA
    emb.register_forward_hook(neftune_post_forward_hook)
    torch.manual_seed(2)
    theirs = emb(torch.zeros(1, 150, dtype=torch.long))
    assert theirs[0, :10].pow(2).sum().item() == pytest.approx(ALPHA**2 / 3 * 10 / 150, rel=0.15)


def test_same_noise_as_transformers_neftune_on_unpacked_rows():
    """On rows of one unpadded example each, ours and transformers' hook draw the same noise."""
    ids = torch.randint(0, 300, (2, 48))
    ours = model()
    handle = neft.NEFTune(ALPHA).attach(ours)
    ours.train()
    torch.manual_seed(3)
    a = ours(input_ids=ids).logits
    handle.remove()

    theirs = model()
    emb = theirs.get_input_embeddings()
    emb.neftune_noise_alpha = ALPHA
    emb.register_forward_hook(neftune_post_forward_hook)
    theirs.train()
    torch.manual_seed(3)
    b = theirs(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)

    plain = model()
    plain.train()
    torch.manual_seed(3)
    assert not torch.allclose(a, plain(input_ids=ids).logits, atol=1e-3)  # there was noise to compare


def test_evaluation_and_generation_see_no_noise():
    ids = torch.randint(0, 300, (1, 12))
    noisy, plain = model(), model()
    neft.NEFTune(ALPHA).attach(noisy)
    noisy.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(noisy(input_ids=ids).logits, plain(input_ids=ids).logits)
        kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(noisy.generate(ids, **kwargs), plain.generate(ids, **kwargs))
    noisy.train()
    emb = noisy.get_input_embeddings()
    assert not torch.equal(emb(ids), emb.weight[ids])  # in training it is there


def test_the_plugin_attaches_only_when_neftune_alpha_is_set():
    plugins = get_plugins()
    with_noise, without = model(), model()
    plugins.call("prepare_model", model=with_noise, stage="finetune", config=FinetuneConfig(neftune_alpha=ALPHA))
    plugins.call("prepare_model", model=without, stage="finetune", config=FinetuneConfig())
    assert len(with_noise.get_input_embeddings()._forward_hooks) == 1
    assert len(without.get_input_embeddings()._forward_hooks) == 0
    with pytest.raises(ValueError, match="positive"):
        neft.NEFTune(-1.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_works_on_a_lora_model_with_new_token_rows():
    peft_model = apply_lora(model(), LoraConfig(r=4), new_token_ids=[298, 299])
    noise = neft.NEFTune(ALPHA).attach(peft_model)
    ids = torch.tensor([[1, 2, 298, 299]])
    emb = peft_model.get_input_embeddings()
    peft_model.eval()
    clean = emb(ids)
    peft_model.train()
    peft_model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert noise.attention_mask is not None  # the model's own forward arguments reach the hook
    assert not torch.equal(emb(ids), clean)


def test_a_loss_that_calls_the_transformer_body_directly_still_scales_per_example():
    """llmforge's fused loss runs model.base_model(...) itself; the lengths must still be each example's."""
    m = model()
    noise = neft.NEFTune(ALPHA).attach(m)
    m.train()
    positions = torch.cat([torch.arange(10), torch.arange(30)]).unsqueeze(0)
    m.base_model(input_ids=torch.zeros(1, 40, dtype=torch.long), position_ids=positions)
    assert torch.equal(noise.position_ids, positions)
