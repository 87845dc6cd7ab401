"""Recipe: the stage configs, loaded from YAML or built in Python, and run stage by stage.

A stage whose fingerprint (its config and its inputs' fingerprints) matches a complete artefact in
the run directory is skipped; any other stage runs, and a training stage resumes from its last
complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
import yaml
from rich.console import Console
from rich.table import Table

from llmforge import rundir
from llmforge.config import (
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_type,
    from_mapping,
)
from llmforge.context import Context
from llmforge.errors import ConfigError, RunDirError, did_you_mean
from llmforge.plugins import get_plugins

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


@dataclass
class Recipe:
    """An ordered set of stage configs. Build it in Python or with `Recipe.from_yaml`."""

    name: str = "llmforge-run"
    data: DataConfig | None = field(default_factory=DataConfig)  # None: the stage is off (fine-tune only)
    tokenizer: TokenizerConfig | None = field(default_factory=TokenizerConfig)
    model: ModelConfig | None = field(default_factory=ModelConfig)
    train: TrainConfig | None = field(default_factory=TrainConfig)
    finetune: FinetuneConfig | None = None
    evaluate: EvaluateConfig | None = None
    plugins: list[str] = field(default_factory=list)

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
        if kwargs.get("finetune") is not None and kwargs["finetune"].base and not any(map(mapping.get, PRETRAINING)):
            kwargs.update(dict.fromkeys(PRETRAINING))  # fine-tune only: finetune.base is the model
        kwargs["name"] = check_type(mapping.get("name", "llmforge-run"), str, "name")
        kwargs["plugins"] = check_type(mapping.get("plugins") or [], list[str], "plugins")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Load a recipe file; `overrides` are `stage.key=value` strings (values parsed as YAML)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"Recipe file '{path}' does not exist.") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read recipe file '{path}': {exc}") from exc
        try:
            mapping = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"'{path}' is not valid YAML: {exc}") from exc
        if not isinstance(mapping, dict):
            raise ConfigError(
                f"'{path}' must be a YAML mapping with keys {', '.join(TOP_KEYS)}, not a {type(mapping).__name__}."
            )
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
        return recipe

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run(self, out: str | Path, only: str | None = None, console: Console | None = None) -> Run:
        """Run every stage (or `only` one) in `out`; finished, unchanged stages are skipped."""
        from llmforge.stages import STAGES

        if only is not None and only not in STAGES:
            raise ConfigError(
                f"--only '{only}' is not a stage{did_you_mean(only, STAGES)}. Stages: {', '.join(STAGES)}."
            )
        console = console or Console()
        datasets.disable_progress_bars()  # llmforge prints its own progress
        transformers.utils.logging.disable_progress_bar()
        out = Path(out)
        plugins = get_plugins(self.plugins)
        ctx = Context(out, self, plugins, console)
        with rundir.locked(out):
            check_run_dir(out, self)
            rundir.write_text(out / "recipe.yaml", self.to_yaml())
            summary = []
            for name, stage in STAGES.items():
                if not stage.enabled(self):
                    continue
                ctx.fingerprints[name] = stage.fingerprint(ctx)
                artefact = out / stage.ARTEFACT
                rundir.clean_stale(artefact.parent)
                up_to_date = rundir.is_complete(artefact, ctx.fingerprints[name])
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
                if only == name:
                    break
        run = Run(out)
        print_summary(console, summary, ctx.outputs)
        return run


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


def _resolve_paths(cfg: DataConfig | FinetuneConfig, base: Path) -> DataConfig | FinetuneConfig:
    """Relative data paths in a recipe file are relative to the file, like the seeds' scripts."""

    def fix(p: str) -> str:
        return p if Path(p).expanduser().is_absolute() else str(base / p)

    if isinstance(cfg.path, str):
        cfg.path = fix(cfg.path)
    elif isinstance(cfg.path, list):
        cfg.path = [fix(p) for p in cfg.path]
    if isinstance(cfg.data_files, str):
        cfg.data_files = fix(cfg.data_files)
    elif isinstance(cfg.data_files, list):
        cfg.data_files = [fix(p) for p in cfg.data_files]
    elif isinstance(cfg.data_files, dict):
        cfg.data_files = {k: [fix(p) for p in v] if isinstance(v, list) else fix(v) for k, v in cfg.data_files.items()}
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
    from llmforge.stages import STAGES

    table = Table(title="llmforge run", show_header=True)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for name, status, seconds in summary:
        took = f"{seconds:.1f}s" if seconds is not None else "-"
        table.add_row(name, status, took, STAGES[name].describe(outputs.get(name, {})))
    console.print(table)


class Run:
    """A run directory: its finished model, generation and perplexity."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def model_dir(self) -> Path:
        """The run's latest finished model: finetune/final if there is one, else train/final."""
        for final in (self.path / "finetune" / "final", self.path / "train" / "final"):
            if rundir.is_complete(final):
                return final
        raise RunDirError(f"{self.path} has no finished model (finetune/final or train/final). Run the recipe first.")

    def recipe(self) -> Recipe:
        return Recipe.from_dict(yaml.safe_load((self.path / "recipe.yaml").read_text()))

    def generate(self, prompt: str, chat: bool = False, **kwargs: Any) -> str:
        """Continue `prompt`, or with `chat=True` answer it as a user message through the chat template."""
        from llmforge.generate import chat as chat_reply
        from llmforge.generate import generate, load

        model, tok = load(self.model_dir)
        if chat:
            return chat_reply(model, tok, prompt, **kwargs).text
        return generate(model, tok, prompt, **kwargs)

    def perplexity(self, batch_size: int = 8) -> dict[str, float]:
        """Loss and perplexity of the finished model on the validation blocks."""
        import datasets

        from llmforge.generate import load
        from llmforge.perplexity import perplexity

        model, _ = load(self.model_dir)
        blocks = datasets.load_from_disk(str(self.path / "data" / "blocks"))["validation"]
        recipe = self.recipe()
        return perplexity(
            model,
            blocks,
            batch_size=batch_size,
            eos_id=model.config.eos_token_id,
            document_aware=recipe.train.document_aware,
        )

    def evaluate(self, **kwargs: Any) -> dict[str, Any]:
        """Benchmarks and perplexity of the run's latest model: `llmforge.evaluate(run_dir, **kwargs)`."""
        from llmforge.evaluate import evaluate

        return evaluate(self.path, **kwargs)

    def metrics(self) -> list[dict[str, Any]]:
        import json

        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
