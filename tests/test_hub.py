"""Hub names (llmforge.hub): NAME@REVISION everywhere a model dir is accepted, and one clear line offline."""

from __future__ import annotations

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from llmforge import Recipe, hub
from llmforge.errors import ConfigError
from llmforge.models.loading import load_model_dir


class Recorder:
    calls: list = []

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        cls.calls.append((name, kwargs))
        return "loaded"


def test_a_revision_is_split_off_and_passed_to_transformers():
    Recorder.calls = []
    assert hub.load(Recorder, "org/model@v1.0", "finetune.base", attn_implementation="sdpa") == "loaded"
    assert hub.load(Recorder, "org/model", "finetune.base") == "loaded"
    assert Recorder.calls == [("org/model", {"attn_implementation": "sdpa", "revision": "v1.0"}), ("org/model", {})]
    assert hub.split("org/model@4f2a") == ("org/model", "4f2a")
    with pytest.raises(ConfigError, match="is not NAME@REVISION"):
        hub.split("org/model@")


def test_a_local_dir_with_an_at_in_its_name_is_never_split(tmp_path):
    local = tmp_path / "model@v2"
    local.mkdir()
    assert hub.split(str(local)) == (str(local), None)


def test_offline_a_hub_name_is_one_line_naming_the_variable_and_the_local_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        hub.load(AutoTokenizer, "nobody-here/no-model@v1", "tokenizer.path")
    message = str(info.value)
    assert message.startswith("tokenizer.path 'nobody-here/no-model@v1' is not a local directory, and HF_HUB_OFFLINE")
    assert "hf download nobody-here/no-model --revision v1 --local-dir DIR" in message and "\n" not in message


def test_every_place_that_takes_a_model_says_so_offline(monkeypatch, tmp_path, corpus_file):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quiet = Console(quiet=True)
    finetune = {"finetune": {"base": "nobody-here/no-model", "path": str(corpus_file), "format": "alpaca"}}
    with pytest.raises(ConfigError, match="finetune.base 'nobody-here/no-model' is not a local directory"):
        Recipe.from_dict(finetune).run(tmp_path / "ft", console=quiet)
    data = {"source": "text", "path": str(corpus_file)}
    pretrain = {"data": data, "model": {"from_pretrained": "nobody-here/m@main"}}
    with pytest.raises(ConfigError, match="tokenizer.path 'nobody-here/m@main' is not a local directory"):
        Recipe.from_dict(pretrain).run(tmp_path / "cpt", console=quiet)  # its own tokenizer comes first
    with pytest.raises(ConfigError, match="the model 'nobody-here/m' is not a local directory"):
        load_model_dir("nobody-here/m")  # llmforge eval, generate and compare


def test_a_missing_path_is_not_taken_for_a_hub_name(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.is_hub_name(str(tmp_path / "gone")) and not hub.is_hub_name("./gone")
    assert hub.is_hub_name("org/model@v1") and hub.is_hub_name("gpt2")
    with pytest.raises(OSError):  # the caller's own message says the dir holds no model
        hub.load(AutoTokenizer, str(tmp_path / "gone"), "tokenizer.path")
