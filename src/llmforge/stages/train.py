"""Train stage: pretrain on packed, document-aware blocks (or a stream) with the one training loop.

The model stage's initial weights, the blocks stage's blocks (or, with `data.streaming`, the stream
packed as it is read from row `data.val_documents` on) and llmforge.training.loop: checkpoints trusted
only when complete, exact resume, metrics.jsonl, progress, early stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM

from llmforge import rundir
from llmforge.config.schema import TrainConfig
from llmforge.data.batches import PackedCollator
from llmforge.data.documents import open_stream
from llmforge.data.streaming import StreamingBlocks, load_state
from llmforge.errors import ConfigError
from llmforge.stages.context import Context
from llmforge.training.arguments import validate
from llmforge.training.checkpoints import best_step
from llmforge.training.loop import TrainingJob, fit
from llmforge.training.reruns import settings

ARTEFACT = "train/final"


def enabled(recipe: Any) -> bool:
    return recipe.train is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "val_loss" not in out:
        return ""
    tps = out.get("tokens_per_second")
    return (
        f"val loss {out['val_loss']:.3f}, perplexity {out['val_perplexity']:.1f} "
        f"(unigram {out['unigram_perplexity']:.1f})" + best_step(out) + (f"; {tps:,.0f} tok/s" if tps else "")
    )


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint("train", settings(ctx.recipe.train), compat_fingerprint(ctx))


def compat_fingerprint(ctx: Context) -> str:
    """What a checkpoint must share with the recipe to be resumed: the model, its data, the optimizer's kind."""
    return rundir.fingerprint(
        "train-compat", ctx.fingerprints["model"], ctx.fingerprints["blocks"], ctx.recipe.train.optimizer
    )


def run(ctx: Context) -> dict[str, Any]:
    cfg: TrainConfig = ctx.recipe.train
    streaming = ctx.recipe.data.streaming
    validate(cfg)
    if streaming:
        validate_streaming(cfg)
    tok = ctx.tokenizer()
    blocks = ctx.blocks()
    model_cfg = ctx.recipe.model
    T = model_cfg.context_length

    def make_model(_: TrainConfig) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            str(ctx.path("model")), attn_implementation=model_cfg.attn_implementation
        )

    def stream(resume: tuple[Path, int] | None, rank: int, world: int) -> StreamingBlocks:
        return streaming_train_set(ctx, tok, resume, rank, world)

    job = TrainingJob(
        stage="train",
        config=cfg,
        run_dir=ctx.run_dir,
        plugins=ctx.plugins,
        console=ctx.console,
        tokenizer=tok,
        make_model=make_model,
        train_set=stream if streaming else blocks["train"].with_format("torch"),
        eval_set=blocks["validation"].with_format("torch"),
        collator=PackedCollator(tok.eos_token_id, cfg.document_aware),
        compat=compat_fingerprint(ctx),
        fingerprint=ctx.fingerprints["train"],
        row_tokens=T,
        block_length=T,
        rows="blocks",
        document_guard=cfg.document_aware,
        streaming=streaming,
        rerun=ctx.rerun("train"),
        discard=ctx.discard,
        outputs={
            "unigram_perplexity": ctx.outputs["blocks"]["validation"]["unigram_perplexity"],
            "document_aware": cfg.document_aware,
        },
    )
    outputs, model = fit(job)
    ctx.cache.setdefault("models", {})["train"] = model  # the evaluate stage scores it without a reload
    return outputs


def validate_streaming(cfg: TrainConfig) -> None:
    if not cfg.max_steps and cfg.max_time is None:
        raise ConfigError(
            "data.streaming: true needs train.max_steps or train.max_time: a stream has no length to count epochs by."
        )
    if cfg.dataloader_workers:
        raise ConfigError(
            "data.streaming: true reads the stream in the training process (its position is checkpointed exactly); "
            "set train.dataloader_workers: 0."
        )


def streaming_train_set(
    ctx: Context, tok: Any, resume: tuple[Path, int] | None, rank: int, world: int
) -> StreamingBlocks:
    """This rank's endless packed blocks from the stream, starting where the checkpoint left off."""
    cfg = ctx.recipe.data
    source = ctx.source(cfg)
    state = load_state(resume[0], rank, world) if resume else None
    train_set = StreamingBlocks(
        open_stream(source),
        tok,
        ctx.recipe.model.context_length,
        first_row=cfg.val_documents,
        max_rows=cfg.max_documents,
        rank=rank,
        world=world,
        state=state,
        where=source.where,
        column=cfg.text_column,
    )
    if state is not None:
        ctx.console.print(
            f"  stream position: epoch {state['epoch']}, row {state['rows']:,}, {len(state['carry'])} carried-over "
            f"tokens, {state['blocks']:,} blocks trained{f' (process {rank})' if world > 1 else ''}"
        )
    return train_set
