"""The stages of a recipe, in the order they run.

Each stage module has: `ARTEFACT` (its output dir in the run dir, complete only with a manifest),
`enabled(recipe)`, `fingerprint(ctx)` (its config and its inputs' fingerprints), `run(ctx) -> dict`
and `describe(outputs) -> str` (its line in the summary table). A stage reads what another stage
made only through the run directory and `ctx.outputs`.
"""

from llmforge.stages import blocks, data, evaluate, finetune, model, tokenizer, train

STAGES = {
    "data": data,
    "tokenizer": tokenizer,
    "blocks": blocks,
    "model": model,
    "train": train,
    "finetune": finetune,
    "evaluate": evaluate,  # always last: it scores the model the stages before it made
}
