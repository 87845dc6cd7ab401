"""Recipe: the stage configs, loaded from YAML or built in Python, and run stage by stage.

A stage whose fingerprint (its config and its inputs' fingerprints) matches a complete artefact in
the run directory is skipped; any other stage runs, and a training stage resumes from its last
complete checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import transformers
import yaml
from rich.console import Console
from rich.table import Table

from llmforge import rundir
from llmforge.config.schema import (
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_type,
    from_mapping,
)
from llmforge.config.tracking import check_recipe as check_tracking
from llmforge.data.blocks import open_blocks
from llmforge.errors import ConfigError, RunDirError, did_you_mean
from llmforge.eval.harness import evaluate
from llmforge.eval.perplexity import perplexity
from llmforge.models.families import AUTO, apply_preset, check
from llmforge.models.loading import load_model_dir
from llmforge.plugin.manager import get_plugins
from llmforge.stages import STAGES
from llmforge.stages.context import Context
from llmforge.tools import plots
from llmforge.tools.generate import chat as chat_reply
from llmforge.tools.generate import generate
from llmforge.training.distributed import distributed_state

STAGE_CONFIGS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
}
OPTIONAL_STAGES = ("finetune", "evaluate")  # absent from a recipe: not run
PRETRAINING = ("data", "tokenizer", "model", "train")  # all absent and finetune.base set: not run
TOP_KEYS = ["name", "plugins", *STAGE_CONFIGS]
PARALLEL_STAGES = ("train", "finetune")  # run by every process under torchrun / accelerate launch
SMOKE_KEY = "smoke"  # a recipe file's block of overrides for a quick check run (`llmforge run --smoke`)


class _UnsetTokenizer(TokenizerConfig):
    """The tokenizer field's default: a tokenizer trained on the data, or for `model.from_pretrained` the
    weights' own (decided in `Recipe.__post_init__`, when the model block is known)."""


@dataclass
class Recipe:
    """An ordered set of stage configs. Build it in Python or with `Recipe.from_yaml`."""

    name: str = "llmforge-run"
    data: DataConfig | None = field(default_factory=DataConfig)  # None: the stage is off (fine-tune only)
    tokenizer: TokenizerConfig | None = field(default_factory=_UnsetTokenizer)
    model: ModelConfig | None = field(default_factory=ModelConfig)
    train: TrainConfig | None = field(default_factory=TrainConfig)
    finetune: FinetuneConfig | None = None
    evaluate: EvaluateConfig | None = None
    plugins: list[str] = field(default_factory=list)
    folder: ClassVar[Path | None] = None  # a recipe file's folder (relative data paths are taken from it)

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, _UnsetTokenizer):
            pretrained = self.model is not None and self.model.from_pretrained and self.data is not None
            self.tokenizer = TokenizerConfig(path=self.model.from_pretrained) if pretrained else TokenizerConfig()
        self._prepare_model()
        check_plugin_names(self, get_plugins(self.plugins))

    def _prepare_model(self) -> None:
        """Fill the model's unset sizes from its preset (a plugin registry: the recipe's plugins count) and
        check arch, sizes and extra keys now, before any stage runs."""
        if self.model is not None:
            if self.model.preset is not None:
                self.model = apply_preset(self.model, get_plugins(self.plugins))
            if self.model.preset == AUTO and None in (self.data, self.tokenizer, self.train):
                raise ConfigError(
                    "model.preset auto sizes the model for the data and the train block's budget: the recipe needs "
                    "data, tokenizer and train blocks."
                )
            if not self.model.from_pretrained:
                check(self.model)
        if self.tokenizer is not None and self.tokenizer.vocab_size == AUTO:
            if not self.tokenizer.train or None in (self.data, self.model, self.train):
                raise ConfigError(
                    "tokenizer.vocab_size auto sizes a trained tokenizer for the train block's budget: the recipe "
                    "needs data, model and train blocks and tokenizer.train true (a loaded tokenizer keeps its size)."
                )
            if self.model.from_pretrained:
                raise ConfigError(
                    "tokenizer.vocab_size auto sizes a new tokenizer for a new model; model.from_pretrained has "
                    "its own vocabulary: leave the tokenizer block out to use the weights' own tokenizer."
                )

    @classmethod
    def from_dict(cls, mapping: dict[str, Any], where: str = "recipe") -> Recipe:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where} must be a YAML mapping with keys {', '.join(TOP_KEYS)}.")
        for key in mapping:
            if key not in TOP_KEYS:
                raise ConfigError(
                    f"Unknown key '{key}' in {where}{did_you_mean(str(key), TOP_KEYS)}. "
                    f"Valid keys: {', '.join(TOP_KEYS)}."
                )
        kwargs: dict[str, Any] = {
            stage: from_mapping(cfg_cls, mapping.get(stage), stage)
            for stage, cfg_cls in STAGE_CONFIGS.items()
            if stage not in OPTIONAL_STAGES or mapping.get(stage) is not None
        }
        if kwargs.get("finetune") is not None and not any(map(mapping.get, PRETRAINING)):
            if not kwargs["finetune"].base:
                raise ConfigError(
                    f"{where} has a finetune block and no pretraining blocks: set finetune.base to the model dir "
                    "to fine-tune, or add the data, tokenizer, model and train blocks that make one."
                )
            kwargs.update(dict.fromkeys(PRETRAINING))  # fine-tune only: finetune.base is the model
        if mapping.get("tokenizer") is None and "tokenizer" in kwargs and kwargs["tokenizer"] is not None:
            del kwargs["tokenizer"]  # the field's default: trained, or the weights' own
        kwargs["name"] = check_type(mapping.get("name", "llmforge-run"), str, "name")
        kwargs["plugins"] = check_type(mapping.get("plugins") or [], list[str], "plugins")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> Recipe:
        """Load a recipe file; `overrides` are `stage.key=value` strings (values parsed as YAML).

        A top-level `smoke:` block in the file holds overrides for a quick check of the recipe (a local
        stand-in for a hub dataset, a few steps, a small model); `smoke=True` (`llmforge run --smoke`)
        merges it into the recipe before `overrides`, otherwise it is ignored."""
        path = Path(path)

        def source_of_suffix() -> str | None:  # the data source whose files end like this one (a plugin's word)
            registry = get_plugins().registries["data_source"]
            suffix = path.suffix.lower()
            return next((n for n in registry.names() if suffix in getattr(registry.get(n), "suffixes", ())), None)

        def not_a_recipe(source: str | None) -> ConfigError:
            """A data file given where the recipe goes: say so, with a recipe that reads it."""
            example = {"data": {"source": source or "SOURCE", "path": str(path)}, "train": {"max_steps": 1000}}
            flow = yaml.safe_dump(example, default_flow_style=True, sort_keys=False, width=10**6).strip()
            which = "" if source else " (SOURCE: a data source that reads such files; `llmforge plugins` lists them)"
            return ConfigError(
                f"'{path}' is a data file, not a recipe: a recipe is a YAML file like `{flow}`{which}, which "
                "pretrains a model on it (a finetune block with base, source and path fine-tunes one on its rows "
                "instead). Save it as recipe.yaml and run `llmforge run recipe.yaml --out runs/first`."
            )

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"Recipe file '{path}' does not exist.") from exc
        except UnicodeDecodeError as exc:  # not text: a data file, unless it is named as YAML
            if path.suffix.lower() in (".yaml", ".yml"):
                raise ConfigError(f"Cannot read recipe file '{path}': {exc}") from exc
            raise not_a_recipe(source_of_suffix()) from exc
        except OSError as exc:
            raise ConfigError(f"Cannot read recipe file '{path}': {exc}") from exc
        try:
            mapping = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            if source := source_of_suffix():
                raise not_a_recipe(source) from exc
            raise ConfigError(f"'{path}' is not valid YAML: {exc}") from exc
        recipe_like = isinstance(mapping, dict) and any(key in (*TOP_KEYS, SMOKE_KEY) for key in mapping)
        if not recipe_like and (source := source_of_suffix()):  # a CSV, text or JSON file can parse as YAML
            raise not_a_recipe(source)
        if not isinstance(mapping, dict):
            raise ConfigError(
                f"'{path}' must be a YAML mapping with keys {', '.join(TOP_KEYS)}, not a {type(mapping).__name__}."
            )
        smoke_block = mapping.pop(SMOKE_KEY, None)
        if smoke:
            if not smoke_block:
                raise ConfigError(f"--smoke: '{path}' has no '{SMOKE_KEY}:' block of overrides to apply.")
            if not isinstance(smoke_block, dict):
                raise ConfigError(f"'{SMOKE_KEY}' in '{path}' must be a mapping of recipe keys, like the recipe.")
            merge_overrides(mapping, smoke_block, SMOKE_KEY)
        for item in overrides or []:
            apply_override(mapping, item)
        recipe = cls.from_dict(mapping, where=f"'{path}'")
        base = path.resolve().parent
        if recipe.data is not None:
            recipe.data = _resolve_paths(recipe.data, base)
        if recipe.finetune is not None:
            recipe.finetune = _resolve_paths(recipe.finetune, base)
            if recipe.finetune.base and (base / Path(recipe.finetune.base).expanduser()).exists():
                recipe.finetune.base = str(base / Path(recipe.finetune.base).expanduser())  # else a hub name
        if recipe.evaluate is not None and recipe.evaluate.data_dir:  # relative to the recipe file, like data.path
            recipe.evaluate.data_dir = str(base / Path(recipe.evaluate.data_dir).expanduser())
        recipe.folder = base
        return recipe

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run(
        self,
        out: str | Path,
        only: str | None = None,
        console: Console | None = None,
        until: str | None = None,
        restart: str | list[str] | None = None,
        resume: bool = False,
        discard: bool = False,
    ) -> Run:
        """Run every stage (or `only` one, or those `until` a stage) in `out`; finished, unchanged stages
        are skipped.

        A training stage whose settings changed trains afresh, resumes or trains on as
        llmforge.training.reruns decides and prints. `restart` redoes the named stages and every stage
        after them from scratch; `resume` makes training stages go on from their last checkpoint whatever
        setting changed; `discard` deletes a run trained afresh instead of keeping it in RUN/previous/."""
        if only is not None and only not in STAGES:
            raise ConfigError(
                f"--only '{only}' is not a stage{did_you_mean(only, STAGES)}. Stages: {', '.join(STAGES)}."
            )
        restarted = _restarted_stages(self, [restart] if isinstance(restart, str) else list(restart or []))
        if restarted and resume:
            raise ConfigError("--restart and --resume contradict each other: give one of them.")
        console = console or Console()
        datasets.disable_progress_bars()  # llmforge prints its own progress
        transformers.utils.logging.disable_progress_bar()
        out = Path(out)
        check_tracking(self)  # a missing tracking back-end fails now, not after the data is prepared
        plugins = get_plugins(self.plugins)
        self._prepare_model()  # again: the blocks may have been replaced since the recipe was built
        check_plugin_names(self, plugins)
        check_recipe_paths(self)
        dist = distributed_state()
        main = dist is None or dist.is_main_process
        if not main:
            console = Console(quiet=True)  # one process reports; every process trains
        ctx = Context(out, self, plugins, console, restart=restarted, resume=resume, discard=discard)
        summary: list[tuple[str, str, float | None]] = []
        if out.exists() and not out.is_dir():
            raise RunDirError(f"--out '{out}' exists and is not a directory. Choose another --out.")
        fresh = main and not out.exists()  # a run dir this call creates: removed again if it fails at once
        try:
            with rundir.locked(out) if main else contextlib.nullcontext():
                if main:
                    check_run_dir(out, self)
                    resolved = out / "recipe.yaml"
                    if not resolved.exists() or resolved.read_text() != self.to_yaml():
                        rundir.write_text(resolved, self.to_yaml())
                for name, stage in STAGES.items():
                    if until is not None and list(STAGES).index(name) > list(STAGES).index(until):
                        break
                    if not stage.enabled(self):
                        continue
                    # Under torchrun / accelerate launch every process trains; the main process alone runs the
                    # other stages while the rest wait, then find them up to date.
                    serial = dist is not None and name not in PARALLEL_STAGES
                    with dist.main_process_first() if serial else contextlib.nullcontext():
                        ctx.fingerprints[name] = stage.fingerprint(ctx)
                        artefact = out / stage.ARTEFACT
                        if main:
                            rundir.clean_stale(artefact.parent)
                        up_to_date = rundir.is_complete(artefact, ctx.fingerprints[name]) and name not in restarted
                        if up_to_date and only != name:
                            ctx.outputs[name] = rundir.read_manifest(artefact)["info"]
                            summary.append((name, "up to date", None))
                            continue
                        if only is not None and only != name and not up_to_date:
                            raise RunDirError(
                                f"--only {only} needs the '{name}' stage, which is missing or out of date in {out}. "
                                "Run the whole recipe first."
                            )
                        console.rule(f"[bold]{name}")
                        plugins.call("on_stage_start", stage=name, run_dir=out)
                        started = time.perf_counter()
                        ctx.outputs[name] = stage.run(ctx)
                        summary.append((name, "ran", time.perf_counter() - started))
                        plugins.call("on_stage_end", stage=name, run_dir=out, outputs=ctx.outputs[name])
                        if main:
                            draw_pictures(name, ctx)
                    if only == name:
                        break
        except BaseException:
            made = [p for p in out.rglob("*") if p.is_file() and p.name not in (".lock", "recipe.yaml")]
            if fresh and not made:  # it failed before writing anything: leave no lock or recipe behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        run = Run(out)
        print_summary(console, summary, ctx.outputs)
        return run


def check_recipe_paths(recipe: Recipe) -> None:
    """A data path that a recipe file gave relative to its folder and that does not exist there is
    reported before anything runs, saying where it was looked for and where it does exist."""
    folder = recipe.folder
    if folder is None:
        return
    for block, cfg in (("data", recipe.data), ("finetune", recipe.finetune)):
        for key in PATH_KEYS if cfg is not None else ():
            named: list[str] = []
            _map_paths(getattr(cfg, key), named.append)
            for path in named:
                if any(ch in path for ch in "*?[") or Path(path).exists() or not Path(path).is_relative_to(folder):
                    continue  # a glob, a file that is there, or one written absolute (its source reports it)
                relative = Path(path).relative_to(folder)
                here = Path.cwd() / relative
                hint = (
                    f" It does exist relative to the current directory ({here}): write the path relative to the "
                    "recipe's folder, or absolute."
                    if here.exists()
                    else ""
                )
                raise ConfigError(
                    f"{block}.{key} '{relative}' does not exist: a relative path in a recipe file is taken from the "
                    f"recipe's folder ({folder}), which gives {path}.{hint}"
                )


def check_plugin_names(recipe: Recipe, plugins: Any) -> None:
    """Every plugin name in the recipe exists, checked before anything runs (a misspelt chat template
    must not fail after an hour of pretraining): the key, the closest names, what to do."""
    named: list[tuple[str, str, str]] = []  # (recipe key, registry, name)
    if recipe.data is not None:
        named.append(("data.source", "data_source", recipe.data.source))
    if recipe.finetune is not None:
        ft = recipe.finetune
        named += [
            ("finetune.source", "data_source", ft.source),
            ("finetune.format", "format", ft.format),
            ("finetune.chat_template", "chat_template", ft.chat_template),
            ("finetune.loss_mask", "loss_mask", ft.loss_mask),
        ]
    if recipe.evaluate is not None:
        named += [("evaluate.benchmarks", "benchmark", name) for name in recipe.evaluate.benchmarks]
    for key, kind, name in named:
        known = plugins.registries[kind].names()
        if name not in known:
            what = kind.replace("_", " ")
            raise ConfigError(
                f"{key}: no {what} named '{name}'{did_you_mean(name, known)}. Known: {', '.join(known) or 'none'}. "
                f"Fix the name, or install or list (recipe 'plugins:') the plugin that provides it; "
                "`llmforge plugins` shows what is installed."
            )


def _restarted_stages(recipe: Recipe, names: list[str]) -> frozenset[str]:
    """The stages `--restart` names and every enabled stage after them: they used what is redone."""
    for name in names:
        if name not in STAGES:
            raise ConfigError(
                f"--restart '{name}' is not a stage{did_you_mean(name, STAGES)}. Stages: {', '.join(STAGES)}."
            )
        if not STAGES[name].enabled(recipe):
            raise ConfigError(f"--restart {name}: this recipe has no {name} stage.")
    if not names:
        return frozenset()
    first = min(list(STAGES).index(name) for name in names)
    return frozenset(name for name in list(STAGES)[first:] if STAGES[name].enabled(recipe))


def merge_overrides(mapping: dict[str, Any], block: dict[str, Any], where: str) -> None:
    """Merge `block` into `mapping` key by key: mappings merge, anything else (lists too) replaces."""
    for key, value in block.items():
        if isinstance(value, dict) and isinstance(mapping.get(key), dict):
            merge_overrides(mapping[key], value, f"{where}.{key}")
        else:
            mapping[key] = value


def draw_pictures(stage: str, ctx: Context) -> None:
    """data/lengths.png once the tokenizer exists; loss.png after each training stage (llmforge.tools.plots)."""
    try:
        if stage == "tokenizer" and rundir.is_complete(ctx.path("data", "documents")):  # not when streaming
            path = plots.write_lengths_plot(ctx.run_dir, ctx.recipe.model.context_length)
        elif stage in plots.TRAINING_STAGES and plots.read_metrics(ctx.run_dir):
            path = plots.write_loss_plot(ctx.run_dir)
        else:
            return
    except Exception as exc:  # a picture is never worth a failed run; say so and go on
        ctx.console.print(f"  [yellow]could not draw the {stage} picture: {exc}[/]")
        return
    ctx.console.print(f"  wrote {path}")


def apply_override(mapping: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"Override '{item}' must look like stage.key=value (e.g. train.max_steps=10).")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override '{item}': the value is not valid YAML ({exc}).") from exc
    node = mapping
    for key in keys[:-1]:
        if node.get(key) is None:  # 'train:' with nothing under it
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{item}': '{key}' is not a mapping.")
    node[keys[-1]] = value


PATH_KEYS = ("path", "data_files")  # the data and finetune keys that name local files


def _map_paths(value: Any, fn: Any) -> Any:
    """`value` (a path, a list of them, or data_files' mapping of split -> path or list) with fn on each path."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [fn(p) if isinstance(p, str) else p for p in value]
    if isinstance(value, dict):
        return {k: _map_paths(v, fn) for k, v in value.items()}
    return value


def _resolve_paths(cfg: DataConfig | FinetuneConfig, base: Path) -> DataConfig | FinetuneConfig:
    """Relative data paths in a recipe file are relative to the file, like the seeds' scripts."""

    def fix(p: str) -> str:
        return p if Path(p).expanduser().is_absolute() or "://" in p else str(base / p)

    for key in PATH_KEYS:
        setattr(cfg, key, _map_paths(getattr(cfg, key), fix))
    return cfg


def check_run_dir(out: Path, recipe: Recipe) -> None:
    """Refuse an output dir that holds another recipe's run (nothing is overwritten)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out '{out}' exists and is not a directory.")
    previous = out / "recipe.yaml"
    if previous.exists():
        try:
            name = (yaml.safe_load(previous.read_text()) or {}).get("name")
        except yaml.YAMLError:
            name = None
        if name != recipe.name:
            raise RunDirError(
                f"'{out}' holds a run of recipe '{name}', not '{recipe.name}'. Choose another --out "
                "(or delete that directory if you no longer need it)."
            )
    elif out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise RunDirError(f"'{out}' is not empty and holds no llmforge run. Choose another --out.")


def print_summary(console: Console, summary: list[tuple[str, str, float | None]], outputs: dict[str, Any]) -> None:
    table = Table(title="llmforge run", show_header=True)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for name, status, seconds in summary:
        took = f"{seconds:.1f}s" if seconds is not None else "-"
        if status == "ran":  # a training stage says what it did: trained, resumed, or only saved
            status = outputs.get(name, {}).get("status", status)
        table.add_row(name, status, took, STAGES[name].describe(outputs.get(name, {})))
    console.print(table)


class Run:
    """A run directory: its finished model, generation and perplexity."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def model_dir(self) -> Path:
        """The run's latest finished model: finetune/final if there is one, else train/final."""
        latest = rundir.latest_model(self.path)
        if latest is not None:
            return latest
        raise RunDirError(f"{self.path} has no finished model (finetune/final or train/final). Run the recipe first.")

    def recipe(self) -> Recipe:
        return Recipe.from_dict(yaml.safe_load((self.path / "recipe.yaml").read_text()))

    def generate(self, prompt: str, chat: bool = False, **kwargs: Any) -> str:
        """Continue `prompt`, or with `chat=True` answer it as a user message through the chat template."""
        model, tok = load_model_dir(self.model_dir)
        if chat:
            return chat_reply(model, tok, prompt, **kwargs).text
        return generate(model, tok, prompt, **kwargs)

    def perplexity(self, batch_size: int = 8) -> dict[str, float]:
        """Loss and perplexity of the finished model on the validation blocks."""
        model, _ = load_model_dir(self.model_dir)
        blocks = open_blocks(self.path / "data" / "blocks")["validation"]
        recipe = self.recipe()
        return perplexity(
            model,
            blocks,
            batch_size=batch_size,
            eos_id=model.config.eos_token_id,
            document_aware=recipe.train.document_aware if recipe.train is not None else True,
        )

    def evaluate(self, **kwargs: Any) -> dict[str, Any]:
        """Benchmarks and perplexity of the run's latest model: `llmforge.evaluate(run_dir, **kwargs)`."""
        return evaluate(self.path, **kwargs)

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def finetune(
    base: str | Path, config: FinetuneConfig | dict[str, Any] | None, out: str | Path, console: Console | None = None
) -> Run:
    """Fine-tune any local HF causal-LM dir: `llmforge.finetune("gpt2-dir", FinetuneConfig(...), "runs/ft")`.

    `config` is a FinetuneConfig or a mapping of its keys (as in a recipe's finetune block); the result
    is a `Run` whose `model_dir` is `out/finetune/final`. The same as a recipe with only a finetune block."""
    if config is None or isinstance(config, dict):
        config = from_mapping(FinetuneConfig, config or {}, "finetune")
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig or a mapping, got {type(config).__name__}.")
    config = dataclasses.replace(config, base=str(Path(base).expanduser()))
    recipe = Recipe(name="finetune", data=None, tokenizer=None, model=None, train=None, finetune=config)
    return recipe.run(out, console=console)
