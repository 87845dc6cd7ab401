"""The family matrix: a recipe of only `finetune:` and `evaluate:` on each family's stand-in
(tests/family_bases.py, made with plain transformers), full fine-tuning, LoRA merged and LoRA saved as an
adapter; the result loads in plain transformers (an adapter through peft's loader in transformers), keeps
the family's template and stops at the family's end of turn."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from chat_helpers import INSTRUCT, write_jsonl
from family_bases import FAMILY_SPECS, build_base
from llmforge import Recipe
from llmforge.models.loading import load_model_dir

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def sharegpt_rows(system: bool, n: int = 16) -> list[dict]:
    """The bundled chat rows as ShareGPT conversations, with or without their system line."""
    rows = []
    for line in (INSTRUCT / "chat.jsonl").read_text().splitlines()[:n]:
        messages = json.loads(line)["messages"]
        row = {
            "conversations": [
                {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                for m in messages
                if m["role"] != "system"
            ]
        }
        if system and messages[0]["role"] == "system":
            row["system"] = messages[0]["content"]
        rows.append(row)
    return rows


class ForceAfter(LogitsProcessor):
    """Write `token` at the `step`-th new position: a stand-in for a model that has learnt to end its turn."""

    def __init__(self, start: int, step: int, token: int) -> None:
        self.at, self.token = start + step, token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.at:
            scores[:] = -float("inf")
            scores[:, self.token] = 0.0
        return scores


@pytest.fixture(scope="module")
def bases(tmp_path_factory, corpus_text):
    root = tmp_path_factory.mktemp("families")
    return {name: build_base(spec, root / name, corpus_text) for name, spec in FAMILY_SPECS.items()}


@pytest.mark.parametrize("lora", [None, {"r": 8}, {"r": 8, "merge": False}], ids=["full", "lora", "adapter"])
@pytest.mark.parametrize("family", list(FAMILY_SPECS))
def test_a_family_fine_tunes_and_chats_in_plain_transformers(bases, tmp_path, family, lora):
    spec = FAMILY_SPECS[family]
    rows = write_jsonl(tmp_path / "rows.jsonl", sharegpt_rows(spec.system_turns))
    template = "tokenizer" if spec.template else "chatml"
    finetune = {
        "base": str(bases[family]),
        "path": str(rows),
        "format": "sharegpt",
        "chat_template": template,
        "max_steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "log_every": 1,
        **({"lora": lora} if lora else {}),
    }
    out = tmp_path / "run"
    console = Console(record=True, width=200)
    run = Recipe.from_dict({"finetune": finetune, "evaluate": {"perplexity": True}}).run(out, console=console)
    final = run.model_dir
    tok = AutoTokenizer.from_pretrained(str(final))
    adapter = (final / "adapter_config.json").is_file()
    assert adapter == (lora is not None and lora.get("merge") is False)
    if adapter and len(tok) > len(AutoTokenizer.from_pretrained(str(bases[family]))):
        model, _ = load_model_dir(final)  # new token rows: the base must be resized first, as llmforge does
    else:
        model = AutoModelForCausalLM.from_pretrained(str(final))  # transformers loads an adapter dir via peft
        if adapter:  # which takes the base's generation config: the adapter dir's stops at the end of turn
            model.generation_config = GenerationConfig.from_pretrained(str(final))
    model.eval()
    base_tok = AutoTokenizer.from_pretrained(str(bases[family]))
    if spec.template:
        assert tok.chat_template == base_tok.chat_template  # the family's own template, byte for byte
    eot = tok.convert_tokens_to_ids(spec.end_of_turn)
    stops = model.generation_config.eos_token_id
    assert eot in (stops if isinstance(stops, list) else [stops])
    conversation = [{"role": "user", "content": "Who is Mr. Darcy?"}]
    prompt = tok.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]
    with torch.no_grad():
        written = model.generate(
            **prompt,
            max_new_tokens=12,
            do_sample=False,
            logits_processor=LogitsProcessorList([ForceAfter(start, 3, eot)]),
        )
    assert written.shape[1] == start + 4 and written[0, -1].item() == eot  # stopped at the end of turn
    result = json.loads((out / "eval" / "results.json").read_text())
    ppl = result["perplexity"]["finetune validation"]["perplexity"]
    assert 1 < ppl < 10 * len(tok)
