"""Experiment tracking: `train.report_to` / `finetune.report_to` go straight to transformers' Trainer
integrations (TensorBoard, Weights & Biases, MLflow, ...); llmforge keeps no tracker of its own.

`check_report_to` runs before any stage, so a misspelt or uninstalled back-end fails at once with the
package to install, not after the data has been prepared.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from llmforge.errors import ConfigError, did_you_mean

# back-end name -> (module Trainer imports, what to install)
BACKENDS = {
    "tensorboard": ("tensorboard", "pip install 'llmforge[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'llmforge[wandb]'  (or: pip install wandb)"),
    "mlflow": ("mlflow", "pip install 'llmforge[mlflow]'  (or: pip install mlflow-skinny)"),
}


def check_report_to(report_to: list[str], where: str) -> None:
    """Every named back-end is a Trainer integration whose package is installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    valid = ["none", *INTEGRATION_TO_CALLBACK]
    for name in report_to:
        if name == "none":
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(
                f"{where}.report_to names '{name}'{did_you_mean(name, valid)}, which is not a Trainer integration. "
                f"Choose from: {', '.join(valid)}."
            )
        module, install = BACKENDS.get(name, (name, f"pip install {name}"))
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{where}.report_to names '{name}', but the {module} package is not installed: {install}. "
                "Or remove it from report_to."
            )


def check_recipe(recipe: Any) -> None:
    for where in ("train", "finetune"):
        cfg = getattr(recipe, where, None)
        if cfg is not None:
            check_report_to(cfg.report_to, where)
