"""Recipe keys: `from_mapping`, `check_type`, `field_docs` and `Recipe.from_dict/from_yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from llmforge.config.schema import (
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_type,
    field_docs,
    from_mapping,
)
from llmforge.errors import ConfigError, LlmforgeError, PluginError
from llmforge.recipe import Recipe, apply_override

# --- from_mapping ---------------------------------------------------------------------------------


def test_from_mapping_sets_given_keys_and_keeps_defaults():
    cfg = from_mapping(TrainConfig, {"lr": 3e-4, "max_steps": 20, "schedule": "linear"}, "train")
    assert isinstance(cfg, TrainConfig)
    assert (cfg.lr, cfg.max_steps, cfg.schedule) == (3e-4, 20, "linear")
    assert cfg.batch_size == TrainConfig().batch_size
    assert cfg.report_to == ["none"]


@pytest.mark.parametrize("empty", [None, {}])
def test_from_mapping_none_or_empty_gives_defaults(empty):
    assert from_mapping(ModelConfig, empty, "model") == ModelConfig()


def test_from_mapping_passes_an_instance_through():
    cfg = DataConfig(source="jsonl", path="x.jsonl")
    assert from_mapping(DataConfig, cfg, "data") is cfg


def test_from_mapping_rejects_instance_of_another_config():
    with pytest.raises(ConfigError, match=r"'data' must be a mapping of keys to values, got TrainConfig"):
        from_mapping(DataConfig, TrainConfig(), "data")


@pytest.mark.parametrize(("value", "type_name"), [([1, 2], "list"), ("lr: 1", "str"), (3, "int")])
def test_from_mapping_rejects_non_mapping(value, type_name):
    with pytest.raises(ConfigError) as info:
        from_mapping(TrainConfig, value, "train")
    assert str(info.value) == f"'train' must be a mapping of keys to values, got {type_name}."


def test_unknown_key_names_full_key_and_suggests_closest():
    with pytest.raises(ConfigError) as info:
        from_mapping(TrainConfig, {"lrr": 1e-3}, "train")
    msg = str(info.value)
    assert "Unknown key 'train.lrr'" in msg
    assert "(did you mean 'lr'?)" in msg
    assert "Valid keys: epochs, max_steps, max_time, batch_size" in msg


def test_unknown_key_suggestion_in_other_stage():
    with pytest.raises(ConfigError) as info:
        from_mapping(DataConfig, {"text_colum": "body"}, "data")
    assert "Unknown key 'data.text_colum' (did you mean 'text_column'?)" in str(info.value)


def test_unknown_key_far_from_everything_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        from_mapping(ModelConfig, {"zzzzzzzz": 1}, "model")
    msg = str(info.value)
    assert "Unknown key 'model.zzzzzzzz'" in msg
    assert "did you mean" not in msg
    assert "Valid keys: arch, from_pretrained" in msg


def test_unknown_non_string_key_is_named():
    with pytest.raises(ConfigError, match=r"Unknown key 'train\.1'"):
        from_mapping(TrainConfig, {1: "x"}, "train")


def test_config_error_is_an_llmforge_error():
    with pytest.raises(LlmforgeError):
        from_mapping(TrainConfig, {"nope": 1}, "train")


# --- check_type: wrong types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "key", "value", "expected"),
    [
        (TrainConfig, "batch_size", "eight", "'train.batch_size' must be an integer, got 'eight' (str)."),
        (TrainConfig, "batch_size", 8.0, "'train.batch_size' must be an integer, got 8.0 (float)."),
        (TrainConfig, "batch_size", True, "'train.batch_size' must be an integer, got True (bool)."),
        (TrainConfig, "lr", "fast", "'train.lr' must be a number or null, got 'fast' (str)."),
        (TrainConfig, "lr", True, "'train.lr' must be a number or null, got True (bool)."),
        (TrainConfig, "torch_compile", "yes", "'train.torch_compile' must be true or false, got 'yes' (str)."),
        (TrainConfig, "torch_compile", 1, "'train.torch_compile' must be true or false, got 1 (int)."),
        (TrainConfig, "max_steps", "10", "'train.max_steps' must be an integer or null, got '10' (str)."),
        (ModelConfig, "arch", 2, "'model.arch' must be a string or null, got 2 (int)."),
        (ModelConfig, "extra", ["a"], "'model.extra' must be a mapping, got ['a'] (list)."),
        (
            TrainConfig,
            "schedule",
            "cosin",
            "'train.schedule' must be one of 'cosine', 'linear', 'wsd', 'constant', got 'cosin' (str).",
        ),
        (
            TrainConfig,
            "report_to",
            "wandb",
            "'train.report_to' must be a list of strings, got 'wandb' (str).",
        ),
        (
            TrainConfig,
            "report_to",
            ["wandb", 3],
            "'train.report_to' must be a list of strings, got ['wandb', 3] (list).",
        ),
    ],
)
def test_wrong_type_names_key_and_expected_type(cls, key, value, expected):
    where = {TrainConfig: "train", ModelConfig: "model"}[cls]
    with pytest.raises(ConfigError) as info:
        from_mapping(cls, {key: value}, where)
    assert str(info.value) == expected


# --- check_type: accepted values and coercions ----------------------------------------------------


def test_int_is_coerced_to_float():
    value = check_type(1, float, "train.epochs")
    assert value == 1.0 and type(value) is float
    cfg = from_mapping(TrainConfig, {"epochs": 2, "warmup": 100}, "train")
    assert type(cfg.epochs) is float and cfg.epochs == 2.0
    assert type(cfg.warmup) is float and cfg.warmup == 100.0


@pytest.mark.parametrize(("text", "number"), [("6e-4", 6e-4), ("1E-3", 1e-3), ("3", 3.0), ("-2.5", -2.5)])
def test_yaml_11_number_strings_accepted_for_floats(text, number):
    value = check_type(text, float, "train.lr")
    assert type(value) is float and value == pytest.approx(number)


def test_yaml_string_lr_from_recipe_becomes_float():
    import yaml

    mapping = yaml.safe_load("train:\n  lr: 6e-4\n")
    assert mapping["train"]["lr"] == "6e-4"  # PyYAML is YAML 1.1: no dot, so a string
    assert Recipe.from_dict(mapping).train.lr == pytest.approx(6e-4)


def test_number_string_not_accepted_for_int():
    with pytest.raises(ConfigError, match=r"'train.max_steps' must be an integer or null, got '1e3'"):
        check_type("1e3", int | None, "train.max_steps")


def test_bool_is_not_an_int_but_int_is_fine():
    assert check_type(5, int, "k") == 5
    with pytest.raises(ConfigError):
        check_type(False, int, "k")


def test_literal_values():
    hint = Literal["file", "paragraph", "line"]
    for ok in ("file", "paragraph", "line"):
        assert check_type(ok, hint, "data.documents") == ok
    with pytest.raises(ConfigError) as info:
        check_type("sentence", hint, "data.documents")
    assert str(info.value) == ("'data.documents' must be one of 'file', 'paragraph', 'line', got 'sentence' (str).")
    cfg = from_mapping(TrainConfig, {"precision": "bf16"}, "train")
    assert cfg.precision == "bf16"


def test_list_of_str():
    assert check_type(["a", "b"], list[str], "tokenizer.special_tokens") == ["a", "b"]
    assert check_type([], list[str], "tokenizer.special_tokens") == []
    with pytest.raises(ConfigError, match=r"'tokenizer.special_tokens' must be a list of strings, got \['a', None\]"):
        check_type(["a", None], list[str], "tokenizer.special_tokens")
    with pytest.raises(ConfigError):
        check_type(("a", "b"), list[str], "tokenizer.special_tokens")


def test_list_items_are_coerced():
    out = check_type([1, "2e-1", 0.5], list[float], "k")
    assert out == [1.0, 0.2, 0.5]
    assert all(type(x) is float for x in out)


def test_optional_accepts_none_and_the_type():
    assert check_type(None, int | None, "train.max_steps") is None
    assert check_type(7, int | None, "train.max_steps") == 7
    assert from_mapping(TokenizerConfig, {"pad_token": None}, "tokenizer").pad_token is None
    with pytest.raises(ConfigError, match=r"'tokenizer.pad_token' must be a string or null, got 3 \(int\)\."):
        from_mapping(TokenizerConfig, {"pad_token": 3}, "tokenizer")


def test_none_rejected_when_not_optional():
    with pytest.raises(ConfigError, match=r"'train.weight_decay' must be a number, got None \(NoneType\)\."):
        from_mapping(TrainConfig, {"weight_decay": None}, "train")


def test_union_of_str_list_and_dict():
    for value in ("a.json", ["a.json", "b.json"], {"train": "a.json"}, None):
        assert from_mapping(DataConfig, {"data_files": value}, "data").data_files == value
    with pytest.raises(ConfigError) as info:
        from_mapping(DataConfig, {"data_files": 5}, "data")
    msg = str(info.value)
    assert msg.startswith("'data.data_files' must be a string or a list of strings or a mapping or null")
    assert msg.endswith("got 5 (int).")


def test_data_path_accepts_str_or_list():
    assert from_mapping(DataConfig, {"path": "a.txt"}, "data").path == "a.txt"
    assert from_mapping(DataConfig, {"path": ["a.txt", "b/"]}, "data").path == ["a.txt", "b/"]
    with pytest.raises(ConfigError, match=r"'data.path' must be"):
        from_mapping(DataConfig, {"path": ["a.txt", 3]}, "data")


def test_any_accepts_anything():
    sentinel = object()
    assert check_type(sentinel, Any, "k") is sentinel


def test_default_lists_are_not_shared():
    a, b = TrainConfig(), TrainConfig()
    a.report_to.append("wandb")
    assert b.report_to == ["none"]
    c = TokenizerConfig()
    c.special_tokens.clear()
    assert TokenizerConfig().special_tokens == ["<|endoftext|>", "<|pad|>"]


# --- field_docs -----------------------------------------------------------------------------------


def test_field_docs_rows():
    rows = field_docs(TrainConfig)
    by_name = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == [f for f in TrainConfig.__dataclass_fields__]
    assert by_name["lr"][:3] == ("lr", "a number or null", None)
    assert by_name["weight_decay"] == ("weight_decay", "a number", 0.1, "AdamW weight decay.")
    assert by_name["max_steps"][1] == "an integer or null"
    assert by_name["max_steps"][2] is None
    assert by_name["schedule"][1] == "one of 'cosine', 'linear', 'wsd', 'constant'"
    assert by_name["report_to"][1:3] == ("a list of strings", ["none"])
    assert by_name["torch_compile"][1:3] == ("true or false", False)


@pytest.mark.parametrize("cls", [DataConfig, TokenizerConfig, ModelConfig, TrainConfig])
def test_every_field_is_documented(cls):
    for name, type_desc, _default, help_text in field_docs(cls):
        assert type_desc, name
        assert help_text and help_text.endswith("."), f"{cls.__name__}.{name} has no help sentence"


def test_field_docs_default_factory_values():
    rows = {r[0]: r for r in field_docs(DataConfig)}
    assert rows["options"][1:3] == ("a mapping", {})
    assert rows["documents"][1] == "one of 'file', 'paragraph', 'line'"
    assert rows["path"][1] == "a string or a list of strings or null"
    tok = {r[0]: r for r in field_docs(TokenizerConfig)}
    assert tok["special_tokens"][2] == ["<|endoftext|>", "<|pad|>"]


# --- Recipe.from_dict -----------------------------------------------------------------------------


def test_recipe_from_dict_builds_every_stage():
    recipe = Recipe.from_dict(
        {
            "name": "tiny",
            "plugins": ["llmforge_sources"],
            "data": {"source": "jsonl", "path": "/abs/x.jsonl"},
            "tokenizer": {"vocab_size": 512},
            "model": {"n_layer": 2},
            "train": {"max_steps": 5, "lr": "1e-3"},
        }
    )
    assert recipe.name == "tiny"
    assert recipe.plugins == ["llmforge_sources"]
    assert recipe.data.source == "jsonl" and recipe.data.path == "/abs/x.jsonl"
    assert recipe.tokenizer.vocab_size == 512
    assert recipe.model.n_layer == 2
    assert recipe.train.max_steps == 5 and recipe.train.lr == pytest.approx(1e-3)


def test_a_plugin_that_does_not_import_fails_when_the_recipe_loads():
    with pytest.raises(PluginError, match="Plugin 'my_plugin' .* failed to import: ModuleNotFoundError"):
        Recipe.from_dict({"plugins": ["my_plugin"]})


def test_recipe_from_dict_empty_is_defaults():
    recipe = Recipe.from_dict({})
    assert recipe == Recipe()
    assert recipe.name == "llmforge-run" and recipe.plugins == []


def test_recipe_null_stage_is_defaults():
    assert Recipe.from_dict({"train": None}).train == TrainConfig()


def test_recipe_unknown_top_level_key_suggests():
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"trian": {"lr": 1e-3}})
    msg = str(info.value)
    assert "Unknown key 'trian' in recipe (did you mean 'train'?)" in msg
    assert "Valid keys: name, plugins, data, tokenizer, model, train, finetune, evaluate." in msg


def test_recipe_stage_key_error_names_stage():
    with pytest.raises(ConfigError, match=r"Unknown key 'train\.lrr' \(did you mean 'lr'\?\)"):
        Recipe.from_dict({"train": {"lrr": 1e-3}})


def test_recipe_not_a_mapping():
    with pytest.raises(ConfigError, match=r"recipe must be a YAML mapping with keys name, plugins"):
        Recipe.from_dict(["train"])  # type: ignore[arg-type]


def test_recipe_name_and_plugins_types():
    with pytest.raises(ConfigError, match=r"'name' must be a string, got 3 \(int\)\."):
        Recipe.from_dict({"name": 3})
    with pytest.raises(ConfigError, match=r"'plugins' must be a list of strings, got 'one' \(str\)\."):
        Recipe.from_dict({"plugins": "one"})


def test_recipe_round_trips_through_yaml(tmp_path):
    recipe = Recipe.from_dict({"name": "rt", "train": {"max_steps": 3}, "data": {"path": "/abs/c.txt"}})
    f = tmp_path / "r.yaml"
    f.write_text(recipe.to_yaml())
    again = Recipe.from_yaml(f)
    assert again == recipe


# --- apply_override (--set) -----------------------------------------------------------------------


def test_apply_override_parses_yaml_values():
    mapping: dict[str, Any] = {"train": {"lr": 1e-3}}
    apply_override(mapping, "train.max_steps=10")
    apply_override(mapping, "train.torch_compile=true")
    apply_override(mapping, "data.path=[a.txt, b.txt]")
    apply_override(mapping, "name=my run")
    apply_override(mapping, "train.lr=6e-4")
    assert mapping == {
        "train": {"lr": "6e-4", "max_steps": 10, "torch_compile": True},
        "data": {"path": ["a.txt", "b.txt"]},
        "name": "my run",
    }


def test_apply_override_value_may_contain_equals():
    mapping: dict[str, Any] = {}
    apply_override(mapping, "data.options={sep: a=b}")
    assert mapping == {"data": {"options": {"sep": "a=b"}}}


def test_apply_override_without_equals():
    with pytest.raises(ConfigError, match=r"Override 'train.max_steps' must look like stage.key=value"):
        apply_override({}, "train.max_steps")


def test_apply_override_invalid_yaml_value():
    with pytest.raises(ConfigError, match=r"Override 'train.lr=\[1, 2': the value is not valid YAML"):
        apply_override({}, "train.lr=[1, 2")


def test_apply_override_through_non_mapping():
    with pytest.raises(ConfigError, match=r"Override 'name.x=1': 'name' is not a mapping\."):
        apply_override({"name": "run"}, "name.x=1")


def test_apply_override_into_null_stage():
    mapping: dict[str, Any] = {"train": None}
    apply_override(mapping, "train.max_steps=3")
    assert mapping == {"train": {"max_steps": 3}}


# --- Recipe.from_yaml -----------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_from_yaml_with_overrides(tmp_path):
    f = _write(tmp_path / "r.yaml", "name: base\ntrain:\n  max_steps: 100\n  lr: 6e-4\n")
    recipe = Recipe.from_yaml(f, overrides=["train.max_steps=7", "model.n_layer=1"])
    assert recipe.name == "base"
    assert recipe.train.max_steps == 7
    assert recipe.train.lr == pytest.approx(6e-4)
    assert recipe.model.n_layer == 1


def test_from_yaml_override_with_unknown_key_is_rejected(tmp_path):
    f = _write(tmp_path / "r.yaml", "name: base\n")
    with pytest.raises(ConfigError, match=r"Unknown key 'train\.max_step' \(did you mean 'max_steps'\?\)"):
        Recipe.from_yaml(f, overrides=["train.max_step=7"])


def test_from_yaml_override_with_wrong_type_is_rejected(tmp_path):
    f = _write(tmp_path / "r.yaml", "name: base\n")
    with pytest.raises(ConfigError, match=r"'train.batch_size' must be an integer, got 'big' \(str\)\."):
        Recipe.from_yaml(f, overrides=["train.batch_size=big"])


def test_from_yaml_unknown_top_level_key_names_file(tmp_path):
    f = _write(tmp_path / "r.yaml", "nmae: x\n")
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(f)
    assert f"Unknown key 'nmae' in '{f}' (did you mean 'name'?)" in str(info.value)


def test_from_yaml_relative_data_path_is_relative_to_recipe_file(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    f = _write(recipes / "r.yaml", "data:\n  path: corpus/a.txt\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = Recipe.from_yaml(Path("..") / "recipes" / "r.yaml")
    assert recipe.data.path == str(recipes.resolve() / "corpus" / "a.txt")
    assert Recipe.from_yaml(f).data.path == str(recipes.resolve() / "corpus" / "a.txt")


def test_from_yaml_list_of_data_paths_resolved_and_absolute_kept(tmp_path):
    absolute = str(tmp_path / "abs" / "b.txt")
    f = _write(tmp_path / "r" / "r.yaml", f"data:\n  path: [a.txt, '{absolute}', 'docs/*.txt']\n")
    recipe = Recipe.from_yaml(f)
    base = (tmp_path / "r").resolve()
    assert recipe.data.path == [str(base / "a.txt"), absolute, str(base / "docs" / "*.txt")]


def test_from_yaml_without_data_path_keeps_none(tmp_path):
    f = _write(tmp_path / "r.yaml", "data:\n  source: hub\n  name: json\n")
    assert Recipe.from_yaml(f).data.path is None


def test_from_yaml_invalid_yaml(tmp_path):
    f = _write(tmp_path / "bad.yaml", "train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(f)
    assert str(info.value).startswith(f"'{f}' is not valid YAML:")


def test_from_yaml_missing_file(tmp_path):
    f = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(f)
    assert str(info.value) == f"Recipe file '{f}' does not exist."


def test_from_yaml_not_utf8(tmp_path):
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"Cannot read recipe file"):
        Recipe.from_yaml(f)


def test_from_yaml_empty_file_is_defaults(tmp_path):
    f = _write(tmp_path / "empty.yaml", "")
    assert Recipe.from_yaml(f) == Recipe()


def test_from_yaml_top_level_list(tmp_path):
    f = _write(tmp_path / "list.yaml", "- train\n- data\n")
    with pytest.raises(ConfigError, match=r"must be a YAML mapping"):
        Recipe.from_yaml(f)


def test_example_recipe_loads():
    example = Path(__file__).resolve().parents[1] / "examples" / "pretrain_tiny.yaml"
    recipe = Recipe.from_yaml(example)
    assert recipe.name
    # its data path is resolved next to the example file, where the corpus lives
    paths = recipe.data.path if isinstance(recipe.data.path, list) else [recipe.data.path]
    assert all(Path(p).is_absolute() for p in paths)
    assert all(str(p).startswith(str(example.parent)) for p in paths)
