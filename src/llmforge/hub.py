"""Where a model or tokenizer comes from: a local dir, or a Hugging Face hub name pinned with `@revision`.

Every place that takes a model dir (finetune.base, model.from_pretrained, tokenizer.path, `llmforge eval`)
loads through `load`, so `org/name@v1.0` (a tag, branch or commit) means the same everywhere, and an
offline machine says so in one line instead of a hub traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmforge.errors import ConfigError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def split(name: str) -> tuple[str, str | None]:
    """`org/model@revision` -> (`org/model`, `revision`); a name without `@`, or an existing local path,
    is returned whole."""
    if "@" not in name or Path(name).expanduser().exists():
        return name, None
    repo, _, revision = name.rpartition("@")
    if not repo or not revision:
        raise ConfigError(f"'{name}' is not NAME@REVISION: give a hub name and a tag, branch or commit after the @.")
    return repo, revision


def is_hub_name(name: str) -> bool:
    """`org/model` or `model@revision`, not a local path: nothing there, and not written like a path."""
    return not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")) and "\\" not in name


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def load(cls: Any, name: str, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` on `name` (a dir, or a hub name with an optional @revision). Offline, a name
    that is no local dir is a ConfigError naming `what`, HF_HUB_OFFLINE and the local-dir alternative;
    other failures are left to the caller, which knows what to suggest."""
    repo, revision = split(name)
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return cls.from_pretrained(repo, **kwargs)
    except OSError as exc:
        if not is_hub_name(name) or not offline():  # a path: the caller says it does not hold a model
            raise
        raise ConfigError(
            f"{what} '{name}' is not a local directory, and HF_HUB_OFFLINE is set, so the hub is not asked "
            f"(nor is it in the local cache). Download it where there is a network (`hf download {repo}"
            f"{f' --revision {revision}' if revision else ''} --local-dir DIR`) and set {what} to that DIR, "
            "or unset HF_HUB_OFFLINE."
        ) from exc
