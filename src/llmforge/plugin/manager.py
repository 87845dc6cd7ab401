"""The plugin manager: entry-point loading, the registries, and `llmforge plugins`.

Built-in features under `plugins/` are loaded the same way as third-party ones, through the
`llmforge` entry-point group, so the core never special-cases a plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pluggy

from llmforge.errors import PluginError, closest
from llmforge.plugin import hookspecs
from llmforge.plugin.types import DataSource

ENTRY_POINT_GROUP = "llmforge"
KINDS = {
    "data_source": "register_data_sources",
    "chat_template": "register_chat_templates",
    "format": "register_formats",
    "loss_mask": "register_loss_masks",
    "benchmark": "register_benchmarks",
    "model_preset": "register_model_presets",
}
# Names the core gives a meaning of its own, which no plugin may register.
RESERVED = {"model_preset": {"auto": "model.preset: auto sizes the model for the training budget"}}


@dataclass
class PluginInfo:
    """One loaded plugin, for `llmforge plugins` and for error messages."""

    name: str
    module: str
    package: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Named things of one kind (data sources, chat templates, ...) contributed by plugins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._owner: dict[str, str] = {}

    def add(self, plugin: str, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"Plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}.")
        if name in RESERVED.get(self.kind, {}):
            raise PluginError(
                f"Plugin '{plugin}' registered {self.kind} '{name}', a name llmforge reserves "
                f"({RESERVED[self.kind][name]}). Rename it."
            )
        if name in self._items:
            raise PluginError(
                f"Plugin '{plugin}' registered {self.kind} '{name}', which plugin '{self._owner[name]}' "
                "already registered. Uninstall one of them or rename the plugin's entry."
            )
        self._items[name] = obj
        self._owner[name] = plugin

    def get(self, name: str) -> Any:
        if name not in self._items:
            known = ", ".join(closest(name, self._items)) or "none"
            raise PluginError(
                f"No {self.kind.replace('_', ' ')} named '{name}'. Known (closest first): {known}. "
                "Install the plugin that provides it, or fix the name."
            )
        return self._items[name]

    def owner(self, name: str) -> str:
        return self._owner[name]

    def names(self) -> list[str]:
        return sorted(self._items)


class Plugins:
    """A pluggy manager with llmforge's hooks, the loaded plugins and their registries."""

    def __init__(self, modules: list[str] | None = None, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        if entry_points:
            for ep in md.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist
                self._load(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        for module in modules or []:
            self._load(module, module, "recipe 'plugins:' list", "-")
        self.registries = {kind: self._collect(kind, hook) for kind, hook in KINDS.items()}

    def _load(self, name: str, target: str, package: str, version: str) -> None:
        if any(info.name == name for info in self.infos):
            return
        try:
            if ":" in target:
                module_name, attr = target.split(":", 1)
                obj = getattr(importlib.import_module(module_name), attr)
            else:
                obj = importlib.import_module(target)
        except Exception as exc:  # a broken plugin must be named, whatever it raised
            raise PluginError(
                f"Plugin '{name}' (package {package} {version}, module {target}) failed to import: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall it (pip uninstall {package})."
            ) from exc
        if self.pm.is_registered(obj):  # listed in a recipe's plugins: and installed as an entry point too
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            raise PluginError(f"Plugin '{name}' (package {package}) could not be registered: {exc}") from exc
        try:
            self.pm.check_pending()  # a misspelt hook name is an error, not silently ignored
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(
                f"Plugin '{name}' (package {package}) implements an unknown hook: {exc}. "
                "Check the function names against llmforge.plugin.hookspecs."
            ) from exc
        self.infos.append(PluginInfo(name, target, package, version))

    def _collect(self, kind: str, hook_name: str) -> Registry:
        registry = Registry(kind)
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            try:
                impl.function(partial(self._register, registry, plugin))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"Plugin '{plugin}' raised in {hook_name}: {type(exc).__name__}: {exc}. "
                    "Fix or uninstall the plugin."
                ) from exc
        return registry

    def _register(self, registry: Registry, plugin: str, name: str, obj: Any) -> None:
        registry.add(plugin, name, obj)
        for info in self.infos:
            if info.name == plugin:
                info.registered.setdefault(registry.kind, []).append(name)

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook on every plugin, naming the plugin if one raises."""
        hook = getattr(self.pm.hook, hook_name)
        results = []
        for impl in reversed(hook.get_hookimpls()):
            try:
                results.append(impl.function(**{k: kwargs[k] for k in impl.argnames}))
            except Exception as exc:
                raise PluginError(
                    f"Plugin '{impl.plugin_name}' raised in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
        return results

    def data_source(self, name: str) -> DataSource:
        """The data source `name`; a plugin that registered a plain function registered its `load`."""
        registry = self.registries["data_source"]
        source = registry.get(name)
        if isinstance(source, DataSource):
            return source
        if callable(source):
            return DataSource(load=source)
        raise PluginError(
            f"Plugin '{registry.owner(name)}' registered data source '{name}' as a {type(source).__name__}, not a "
            "function or a llmforge.DataSource."
        )


_DEFAULT: dict[tuple[str, ...], Plugins] = {}


def get_plugins(modules: list[str] | None = None) -> Plugins:
    """The process-wide plugin manager for this list of extra modules (loaded once)."""
    key = tuple(modules or [])
    if key not in _DEFAULT:
        _DEFAULT[key] = Plugins(list(key))
    return _DEFAULT[key]
