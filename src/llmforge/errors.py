"""The few errors llmforge raises on purpose.

Every message names the culprit (file, key, row, plugin) and says what to do. The command line
prints one red line for an `LlmforgeError` and exits with code 2; anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlmforgeError(Exception):
    """Base class: a problem the user can fix."""


class ConfigError(LlmforgeError):
    """A recipe key, value or type is wrong."""


class DataError(LlmforgeError):
    """A data file or dataset cannot be used as given."""


class PluginError(LlmforgeError):
    """A plugin failed to load, registered something invalid, or a name is unknown."""


class RunDirError(LlmforgeError):
    """The run directory holds something that does not belong to this recipe."""


class TrainingError(LlmforgeError):
    """Training cannot start or cannot go on (hardware, precision, diverging loss)."""


def closest(name: str, candidates: Iterable[str]) -> list[str]:
    """Candidates ordered by similarity to `name`, the closest first."""
    cands = sorted(set(candidates))
    if not cands:  # difflib.get_close_matches raises ValueError for n=0
        return []
    close = difflib.get_close_matches(name, cands, n=len(cands), cutoff=0.0)
    return close or cands


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when one candidate is close enough, else ''."""
    hits = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{hits[0]}'?)" if hits else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's traceback text is not the user's to read)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
