"""Security promises: safetensors only, no unsafe torch.load, remote code off, plugins only when asked."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from conftest import REPO
from llmforge.plugin.manager import Plugins


def test_finished_model_dir_holds_no_pickle(tiny_recipe, tmp_path):
    tiny_recipe.run(tmp_path / "run")
    final = tmp_path / "run" / "train" / "final"
    names = {p.name for p in final.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names
    model_dir = tmp_path / "run" / "model"
    assert not [p for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_llmforge_never_calls_torch_load_unsafely():
    offenders = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        for match in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text()):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path}: {match.group(0)}")
    assert not offenders


def test_trust_remote_code_is_off_by_default_and_said_aloud_when_on(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmforge.config.schema import ModelConfig
    from llmforge.models.build import load_pretrained_model as load_pretrained

    assert ModelConfig().trust_remote_code is False
    d = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(d)

    class Tok:
        eos_token_id, bos_token_id, pad_token_id = 1, 1, 2

        def __len__(self) -> int:
            return 64

    from rich.console import Console

    console = Console(record=True, width=200)
    load_pretrained(ModelConfig(from_pretrained=str(d), context_length=16), Tok(), console)
    assert "trust_remote_code" not in console.export_text()
    load_pretrained(ModelConfig(from_pretrained=str(d), context_length=16, trust_remote_code=True), Tok(), console)
    assert "trust_remote_code is on" in console.export_text()


def test_a_module_is_only_a_plugin_when_installed_or_listed(tmp_path, monkeypatch):
    (tmp_path / "llmforge_sneaky.py").write_text(
        textwrap.dedent("""
        from llmforge import hookimpl

        @hookimpl
        def register_data_sources(register):
            register("sneaky", lambda config: None)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "sneaky" not in Plugins().registries["data_source"].names()
    assert "sneaky" in Plugins(modules=["llmforge_sneaky"]).registries["data_source"].names()


def test_chat_templates_render_in_a_sandbox(tmp_path):
    """Templates go through transformers' apply_chat_template, whose Jinja environment is sandboxed."""
    import jinja2.exceptions
    import pytest
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<e>")
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert Path(REPO / "src" / "llmforge").is_dir()
