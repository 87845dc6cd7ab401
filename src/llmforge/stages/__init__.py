"""The stages of a recipe, in the order they run. Each module has `fingerprint(ctx)` and `run(ctx)`."""

from llmforge.stages import data, model, tokenizer, train

STAGES = {"data": data, "tokenizer": tokenizer, "model": model, "train": train}
