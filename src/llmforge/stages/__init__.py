"""The stages of a recipe, in the order they run.

Each stage module has: `ARTEFACT` (its output dir in the run dir, complete only with a manifest),
`enabled(recipe)`, `fingerprint(ctx)` (its config and its inputs' fingerprints), `run(ctx) -> dict`
and `describe(outputs) -> str` (its line in the summary table).
"""

from llmforge.stages import data, evaluate, finetune, model, tokenizer, train

STAGES = {"data": data, "tokenizer": tokenizer, "model": model, "train": train, "finetune": finetune}
STAGES["evaluate"] = evaluate  # always last: it scores the model the stages before it made
