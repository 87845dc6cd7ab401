"""The plugin manager: registries, loading and naming broken plugins, lifecycle calls, built-ins."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from llmforge.errors import LlmforgeError, PluginError, closest
from llmforge.plugin.manager import KINDS, Plugins, Registry, get_plugins


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """Write a throwaway plugin module into tmp_path (on sys.path); forget it from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


SOURCE_PLUGIN = """
    from llmforge import hookimpl

    def load(config):
        return {loaded!r}

    @hookimpl
    def register_data_sources(register):
        {body}
"""


def source_plugin(loaded: str = "x", body: str = "register('mine', load)") -> str:
    return SOURCE_PLUGIN.format(loaded=loaded, body=body)


# --- Registry -------------------------------------------------------------------------------------


def test_registry_add_get_names_owner():
    reg = Registry("data_source")
    reg.add("plug_a", "beta", 1)
    reg.add("plug_b", "alpha", 2)
    assert reg.get("beta") == 1 and reg.get("alpha") == 2
    assert reg.names() == ["alpha", "beta"]
    assert reg.owner("alpha") == "plug_b"


def test_registry_unknown_name_lists_known_closest_first():
    reg = Registry("data_source")
    for name in ["text", "jsonl", "json", "parquet", "csv", "hub"]:
        reg.add("sources", name, object())
    with pytest.raises(PluginError) as info:
        reg.get("jsnl")
    msg = str(info.value)
    assert msg.startswith("No data source named 'jsnl'. Known (closest first): ")
    known = msg.split("Known (closest first): ", 1)[1].split(". ", 1)[0].split(", ")
    assert sorted(known) == ["csv", "hub", "json", "jsonl", "parquet", "text"]
    assert known[:2] == ["jsonl", "json"]
    assert "Install the plugin that provides it, or fix the name." in msg


def test_registry_unknown_name_when_empty_says_none():
    reg = Registry("chat_template")
    with pytest.raises(PluginError) as info:
        reg.get("chatml")
    assert "No chat template named 'chatml'. Known (closest first): none." in str(info.value)


def test_closest_orders_by_similarity():
    assert closest("parket", ["text", "parquet", "csv"])[0] == "parquet"
    assert closest("anything", []) == []
    assert sorted(closest("zz", ["b", "a"])) == ["a", "b"]


def test_registry_duplicate_names_both_plugins():
    reg = Registry("data_source")
    reg.add("first_plugin", "text", 1)
    with pytest.raises(PluginError) as info:
        reg.add("second_plugin", "text", 2)
    msg = str(info.value)
    assert "Plugin 'second_plugin' registered data_source 'text'" in msg
    assert "plugin 'first_plugin' already registered" in msg
    assert reg.get("text") == 1  # the first registration is kept


def test_a_plugin_cannot_register_a_preset_named_auto():
    reg = Registry("model_preset")
    with pytest.raises(PluginError, match="Plugin 'mine' registered model_preset 'auto', a name llmforge reserves"):
        reg.add("mine", "auto", object())
    Registry("data_source").add("mine", "auto", 1)  # reserved for presets only


@pytest.mark.parametrize("bad", ["", None, 3])
def test_registry_invalid_name(bad):
    reg = Registry("format")
    with pytest.raises(PluginError, match=r"Plugin 'p' registered a format with an invalid name"):
        reg.add("p", bad, object())
    assert reg.names() == []


def test_plugin_error_is_llmforge_error():
    assert issubclass(PluginError, LlmforgeError)


# --- loading plugins from modules -----------------------------------------------------------------


def test_module_plugin_registers_data_source(make_plugin):
    mod = make_plugin("lf_test_plugin_ok", source_plugin(loaded="from-ok"))
    plugins = Plugins(modules=[mod], entry_points=False)
    load = plugins.data_source("mine").load  # a plain function is registered as DataSource(load=function)
    assert load(None) == "from-ok"
    assert plugins.registries["data_source"].owner("mine") == mod
    (info,) = plugins.infos
    assert (info.name, info.module, info.package) == (mod, mod, "recipe 'plugins:' list")
    assert info.registered == {"data_source": ["mine"]}
    assert set(plugins.registries) == set(KINDS)
    assert plugins.registries["chat_template"].names() == []


def test_unknown_data_source_lists_registered(make_plugin):
    mod = make_plugin("lf_test_plugin_unknown", source_plugin())
    plugins = Plugins(modules=[mod], entry_points=False)
    with pytest.raises(PluginError, match=r"No data source named 'mien'\. Known \(closest first\): mine\."):
        plugins.data_source("mien")


def test_module_listed_twice_is_loaded_once(make_plugin):
    mod = make_plugin("lf_test_plugin_twice", source_plugin())
    plugins = Plugins(modules=[mod, mod], entry_points=False)
    assert [i.name for i in plugins.infos] == [mod]
    assert plugins.registries["data_source"].names() == ["mine"]


def test_module_that_fails_to_import_is_named(make_plugin):
    mod = make_plugin("lf_test_plugin_broken", "import os\nraise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError) as info:
        Plugins(modules=[mod], entry_points=False)
    msg = str(info.value)
    assert f"Plugin '{mod}'" in msg
    assert f"module {mod}) failed to import: RuntimeError: boom at import" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert mod not in sys.modules


def test_module_with_syntax_error_is_named(make_plugin):
    mod = make_plugin("lf_test_plugin_syntax", "def broken(:\n")
    with pytest.raises(PluginError, match=rf"Plugin '{mod}' .* failed to import: SyntaxError"):
        Plugins(modules=[mod], entry_points=False)


def test_missing_module_is_named():
    with pytest.raises(PluginError) as info:
        Plugins(modules=["lf_test_no_such_module_xyz"], entry_points=False)
    msg = str(info.value)
    assert "Plugin 'lf_test_no_such_module_xyz'" in msg
    assert "failed to import: ModuleNotFoundError" in msg


def test_module_attribute_target(make_plugin):
    mod = make_plugin(
        "lf_test_plugin_attr",
        """
        from llmforge import hookimpl

        class Impl:
            @hookimpl
            def register_data_sources(self, register):
                register("from_attr", lambda config: "value")

        plugin = Impl()
        """,
    )
    plugins = Plugins(modules=[f"{mod}:plugin"], entry_points=False)
    assert plugins.data_source("from_attr").load(None) == "value"
    with pytest.raises(PluginError, match=r"failed to import: AttributeError"):
        Plugins(modules=[f"{mod}:nothing_here"], entry_points=False)


def test_plugin_raising_in_register_hook_is_named(make_plugin):
    mod = make_plugin("lf_test_plugin_raises", source_plugin(body="raise KeyError('oops')"))
    with pytest.raises(PluginError) as info:
        Plugins(modules=[mod], entry_points=False)
    msg = str(info.value)
    assert f"Plugin '{mod}' raised in register_data_sources: KeyError: 'oops'." in msg
    assert "Fix or uninstall the plugin." in msg


def test_two_plugins_registering_same_name_are_both_named(make_plugin):
    first = make_plugin("lf_test_plugin_dup_a", source_plugin(body="register('shared', load)"))
    second = make_plugin("lf_test_plugin_dup_b", source_plugin(body="register('shared', load)"))
    with pytest.raises(PluginError) as info:
        Plugins(modules=[first, second], entry_points=False)
    msg = str(info.value)
    assert first in msg and second in msg
    assert "data_source 'shared'" in msg


def test_plugin_clashing_with_builtin_source_names_both(make_plugin):
    mod = make_plugin("lf_test_plugin_clash", source_plugin(body="register('text', load)"))
    with pytest.raises(PluginError) as info:
        Plugins(modules=[mod])
    msg = str(info.value)
    assert "data_source 'text'" in msg
    assert f"'{mod}'" in msg and "'sources'" in msg


def test_hookimpl_with_wrong_argument_name_is_named(make_plugin):
    mod = make_plugin(
        "lf_test_plugin_badargs",
        """
        from llmforge import hookimpl

        @hookimpl
        def register_data_sources(reg):
            reg("x", 1)
        """,
    )
    with pytest.raises(
        PluginError, match=rf"Plugin '{mod}' \(package recipe 'plugins:' list\) could not be registered"
    ):
        Plugins(modules=[mod], entry_points=False)


# --- lifecycle hooks ------------------------------------------------------------------------------


LIFECYCLE = """
    from llmforge import hookimpl

    CALLS = []

    @hookimpl
    def on_stage_start(stage, run_dir):
        CALLS.append(({tag!r}, stage, run_dir))
        return {tag!r}

    @hookimpl
    def on_log(stage, metrics):
        {on_log}
"""


def test_call_runs_every_plugin_in_pluggy_order(make_plugin, tmp_path):
    a = make_plugin("lf_test_life_a", LIFECYCLE.format(tag="a", on_log="return None"))
    b = make_plugin("lf_test_life_b", LIFECYCLE.format(tag="b", on_log="return None"))
    plugins = Plugins(modules=[a, b], entry_points=False)
    results = plugins.call("on_stage_start", stage="data", run_dir=tmp_path)
    assert results == ["b", "a"]  # like pluggy itself: the last registered plugin first
    assert sys.modules[a].CALLS == [("a", "data", tmp_path)]
    assert sys.modules[b].CALLS == [("b", "data", tmp_path)]
    assert plugins.pm.hook.on_stage_start(stage="data", run_dir=tmp_path) == results


def test_call_passes_only_the_arguments_a_hook_takes(make_plugin):
    mod = make_plugin(
        "lf_test_life_args",
        """
        from llmforge import hookimpl

        SEEN = []

        @hookimpl
        def on_stage_end(stage):
            SEEN.append(stage)
        """,
    )
    plugins = Plugins(modules=[mod], entry_points=False)
    plugins.call("on_stage_end", stage="train", run_dir=Path("."), outputs={})
    assert sys.modules[mod].SEEN == ["train"]


def test_call_names_raising_plugin(make_plugin):
    ok = make_plugin("lf_test_life_ok", LIFECYCLE.format(tag="ok", on_log="return None"))
    bad = make_plugin("lf_test_life_bad", LIFECYCLE.format(tag="bad", on_log="raise ValueError('nan loss')"))
    plugins = Plugins(modules=[ok, bad], entry_points=False)
    with pytest.raises(PluginError) as info:
        plugins.call("on_log", stage="train", metrics={"loss": float("nan")})
    assert str(info.value) == f"Plugin '{bad}' raised in on_log: ValueError: nan loss"
    assert isinstance(info.value.__cause__, ValueError)


def test_call_without_implementations_returns_empty():
    plugins = Plugins(entry_points=False)
    assert plugins.call("on_checkpoint", stage="train", path=Path("x")) == []


# --- built-in plugins via entry points ------------------------------------------------------------


BUILTIN_SOURCES = ["csv", "hub", "json", "jsonl", "parquet", "text", "token_store"]


def test_builtin_entry_points_register_sources():
    import llmforge_sources

    plugins = Plugins()
    # other installed plugins may add sources of their own; the built-ins are always there
    assert set(BUILTIN_SOURCES) <= set(plugins.registries["data_source"].names())
    info = next(i for i in plugins.infos if i.name == "sources")
    assert info.package == "llmforge"
    assert info.module == "llmforge_sources"
    assert info.version == "0.1.0"
    assert sorted(info.registered["data_source"]) == BUILTIN_SOURCES
    assert plugins.data_source("text").load is llmforge_sources.load_text
    assert plugins.data_source("hub").load is llmforge_sources.load_hub
    assert plugins.data_source("token_store").packed is not None  # blocks read as they are
    assert all(plugins.registries["data_source"].owner(n) == "sources" for n in BUILTIN_SOURCES)


def test_no_entry_points_means_no_builtin_sources():
    plugins = Plugins(entry_points=False)
    assert plugins.infos == []
    assert plugins.registries["data_source"].names() == []
    with pytest.raises(PluginError, match=r"No data source named 'text'\. Known \(closest first\): none\."):
        plugins.data_source("text")


def test_get_plugins_is_cached_per_module_list(make_plugin, monkeypatch):
    import llmforge.plugin.manager

    monkeypatch.setattr(llmforge.plugin.manager, "_DEFAULT", {})  # leave the process-wide cache as it was
    mod = make_plugin("lf_test_plugin_cached", source_plugin())
    first = get_plugins([mod])
    assert get_plugins([mod]) is first
    assert "mine" in first.registries["data_source"].names()
    assert "text" in first.registries["data_source"].names()
    assert get_plugins() is not first


def test_misspelt_hook_name_is_an_error_naming_the_plugin(make_plugin):
    mod = make_plugin(
        "typo_plugin",
        """
        from llmforge import hookimpl

        @hookimpl
        def register_data_source(register):
            register("never", object())
        """,
    )
    with pytest.raises(PluginError, match=r"Plugin 'typo_plugin' .*unknown hook.*register_data_source"):
        Plugins(modules=[mod], entry_points=False)


def test_a_registered_non_callable_data_source_is_named(make_plugin):
    mod = make_plugin(
        "lf_test_plugin_bad_source",
        """
        from llmforge import hookimpl

        @hookimpl
        def register_data_sources(register):
            register("broken", 42)
        """,
    )
    plugins = Plugins(modules=[mod], entry_points=False)
    with pytest.raises(PluginError, match=r"registered data source 'broken' as a int, not a function or a llmforge"):
        plugins.data_source("broken")
