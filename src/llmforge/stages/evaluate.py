"""Evaluate stage: lm-eval benchmarks and perplexity of the run's finished model.

Scores the model the earlier stage left in memory (no reload), or loads it once when that stage was
up to date. Perplexity is measured on the blocks stage's validation blocks when the recipe pretrains,
else on the fine-tune validation examples (their loss-carrying tokens), and labelled by which. Writes
`eval/results.json` (lm-eval's full output, perplexity, the table) and `eval/results.md`, with the
generated lm-eval task folders in `eval/tasks/` so that plain `lm_eval --include_path eval/tasks`
reproduces the scores.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

import datasets

from llmforge import rundir
from llmforge.chat.examples import base_model
from llmforge.config.schema import EvaluateConfig
from llmforge.errors import ConfigError
from llmforge.eval.harness import evaluate, markdown, rich_table, row_name
from llmforge.models.loading import causal_lm_loss, load_model_dir
from llmforge.stages.context import Context

ARTEFACT = "eval"
MODEL_STAGES = ("train", "finetune")


def enabled(recipe: Any) -> bool:
    return recipe.evaluate is not None


def describe(out: dict[str, Any]) -> str:
    """The headline numbers: MMLU overall, HellaSwag acc_norm, perplexity (categories stay in the table)."""
    shown = [
        f"{row_name(label, [out])} {value:.2f}" if "perplexity" in label else f"{label} {value:.3f}"
        for label, value in (out.get("table") or {}).items()
        if value is not None and not label.startswith("MMLU ") and label != "HellaSwag acc"
    ]
    return f"{out.get('model', '')}: {', '.join(shown[:4])}" if shown else ""


def fingerprint(ctx: Context) -> str:
    cfg: EvaluateConfig = ctx.recipe.evaluate
    stage = model_stage(ctx)
    local = [p for p in Path(cfg.data_dir).rglob("*") if p.is_file()] if cfg.data_dir else []
    plugins = {
        name: ctx.plugins.registries["benchmark"].owner(name)
        for name in cfg.benchmarks
        if name in ctx.plugins.registries["benchmark"].names()
    }
    versions = {info.name: info.version for info in ctx.plugins.infos if info.name in plugins.values()}
    return rundir.fingerprint(
        "evaluate",
        vars(cfg),
        ctx.fingerprints[stage],
        ctx.fingerprints.get("blocks"),
        rundir.file_stats(local),
        md.version("lm_eval"),
        versions,
    )


def run(ctx: Context) -> dict[str, Any]:
    cfg: EvaluateConfig = ctx.recipe.evaluate
    stage = model_stage(ctx)
    model_dir = ctx.path(stage, "final")
    model, tok = in_memory(ctx, stage)
    blocks = examples = None
    document_aware = ctx.outputs[stage].get("document_aware", True)
    if cfg.perplexity and "blocks" in ctx.outputs:  # the pretraining text, prepared exactly as training's
        blocks = ctx.blocks()["validation"]
        document_aware = ctx.outputs.get("train", {}).get("document_aware", True)
    elif cfg.perplexity and "finetune" in ctx.outputs:  # fine-tune only: the held-out examples
        path = ctx.outputs["finetune"].get("examples") or ctx.path("finetune", "data")  # older runs did not say
        examples = datasets.load_from_disk(str(path))["validation"]
    info: dict[str, Any] = {}  # filled below; the manifest is written when the block ends
    with rundir.atomic_dir(ctx.path(ARTEFACT), ctx.fingerprints["evaluate"], info) as tmp:

        def score(scored: Any, workdir: Path) -> dict[str, Any]:
            return evaluate(
                scored,
                tasks=cfg.benchmarks,
                data_dir=cfg.data_dir,
                limit=cfg.limit,
                num_fewshot=cfg.num_fewshot,
                batch_size=cfg.batch_size,
                tokenizer=tok,
                perplexity=cfg.perplexity,
                blocks=blocks,
                examples=examples,
                document_aware=document_aware,
                workdir=workdir,
                plugins=ctx.plugins,
                console=ctx.console,
            )

        results = score(model, tmp / "tasks")
        results["model"] = f"{stage}/final"
        results["model_dir"] = str(model_dir)
        compared = [results]
        if cfg.base and stage == "finetune":  # before and after, as a model card's table shows them
            base = ctx.outputs["finetune"]["base"]
            ctx.console.print(f"  the base too, for the table: {base}")
            before = score(started_from(ctx, base, tok, like=model), tmp / "tasks-base")
            before["model"], before["model_dir"] = "base", base
            results["base"] = before
            compared = [before, results]
        rundir.write_json(tmp / "results.json", results)
        rundir.write_text(tmp / "results.md", markdown(compared, ctx.path(ARTEFACT, "tasks")))
        info.update(model=results["model"], table=results["table"], measured_on=results.get("measured_on", {}))
        if len(compared) == 2:
            info["base_table"] = compared[0]["table"]
    ctx.console.print(rich_table(compared, title=f"evaluation of {stage}/final"))
    return info


def started_from(ctx: Context, base: str, tok: Any, like: Any) -> Any:
    """The model fine-tuning started from: the base with the template's new rows drawn as training drew
    them (the same seed), on the device of `like` (the fine-tuned model)."""
    from rich.console import Console

    model = base_model(base, tok, ctx.recipe.finetune, Console(quiet=True)).eval()
    causal_lm_loss(model)
    return model.to(next(like.parameters()).device)


def model_stage(ctx: Context) -> str:
    """The stage whose model `evaluate.model` names: latest is finetune when the recipe has it."""
    choice = ctx.recipe.evaluate.model
    trained = [stage for stage in MODEL_STAGES if stage in ctx.fingerprints]
    if not trained:
        raise ConfigError("The recipe has an evaluate block but no train or finetune stage to make a model.")
    if choice == "latest":
        return trained[-1]
    if choice not in trained:
        raise ConfigError(
            f"evaluate.model is '{choice}' but the recipe has no {choice} stage. Use latest or {' or '.join(trained)}."
        )
    return choice


def in_memory(ctx: Context, stage: str) -> tuple[Any, Any]:
    """The model the stage left in memory in this process, else loaded once from its final dir."""
    import torch
    from transformers import AutoTokenizer

    model_dir = ctx.path(stage, "final")
    model = ctx.cache.get("models", {}).get(stage)
    if model is None:
        model, tok = load_model_dir(model_dir)
        return (model.to("cuda") if torch.cuda.is_available() else model), tok
    return model, AutoTokenizer.from_pretrained(str(model_dir))
