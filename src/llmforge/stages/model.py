"""Model stage: build a causal LM from the recipe's sizes (any transformers family), or load weights.

Saved in `model/` as a plain HF model dir, so training never depends on rebuilding the same
initialisation from a seed (llmforge.models.build). When training is document-aware the model is
checked to keep packed documents apart before it is saved.
"""

from __future__ import annotations

from typing import Any

from llmforge import rundir
from llmforge.config.schema import ModelConfig
from llmforge.models.build import CHINCHILLA_TOKENS_PER_PARAM, build_model, check_document_aware
from llmforge.models.families import AUTO
from llmforge.stages.context import Context
from llmforge.training import sizing
from llmforge.training.distributed import world_size

ARTEFACT = "model"


def enabled(recipe: Any) -> bool:
    return recipe.model is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "parameters" not in out:
        return ""
    return f"{out['arch']} {out['parameters'] / 1e6:.2f}M params, {out['tokens_per_parameter']:.2f} tokens/param"


def fingerprint(ctx: Context) -> str:
    # preset auto sizes the model on the run dir's first run, for its data and budget: new data builds
    # (and sizes) afresh, while a later budget trains the same model on, as with any other model
    data = [ctx.fingerprints["blocks"]] if ctx.recipe.model.preset == AUTO else []
    recipe = ctx.recipe
    return rundir.fingerprint("model", vars(recipe.model), ctx.fingerprints["tokenizer"], recipe.train.seed, *data)


def run(ctx: Context) -> dict[str, Any]:
    cfg: ModelConfig = ctx.recipe.model  # its preset was applied when the recipe was built (auto: below)
    tok = ctx.tokenizer()
    sized = None
    if cfg.preset == AUTO:
        train = ctx.outputs["blocks"]["train"]  # a stream's blocks are a sample of it: its size is unknown
        tokens = None if ctx.recipe.data.streaming else train["tokens"]
        cfg, sized = sizing.for_budget(cfg, tok, ctx.recipe.train, train["blocks"], tokens, world_size())
        ctx.console.print(f"  model.preset auto: {sizing.describe(sized)}")
    model = build_model(cfg, tok, seed=ctx.recipe.train.seed, console=ctx.console)
    if ctx.recipe.train.document_aware:  # refuse a family that would silently attend across documents
        check_document_aware(model, tok.eos_token_id, cfg)
    params = sum(p.numel() for p in model.parameters())
    train_tokens = ctx.outputs["blocks"]["train"]["tokens"]
    info = {
        "arch": model.config.model_type,
        "preset": ctx.recipe.model.preset,
        **({"sized": sized} if sized else {}),  # preset auto: the shape it chose, and why
        "parameters": params,
        "train_tokens": train_tokens,
        "tokens_per_parameter": round(train_tokens / params, 4),
    }
    with rundir.atomic_dir(ctx.path(ARTEFACT), ctx.fingerprints["model"], info) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    preset = f" (preset {info['preset']})" if info["preset"] else ""
    ctx.console.print(
        f"  {info['arch']}{preset} with {params / 1e6:.2f}M parameters; "
        f"{train_tokens:,} training tokens = {info['tokens_per_parameter']:.2f} tokens/parameter (Chinchilla's "
        f"guide: {CHINCHILLA_TOKENS_PER_PARAM}, i.e. {CHINCHILLA_TOKENS_PER_PARAM * params / 1e6:.1f}M tokens "
        "for this size)"
    )
    return info
