"""mkdocs hooks (mkdocs.yml `hooks:`).

* Regenerate docs/reference/recipe.md and cli.md from the code before every build (llmforge.docgen), so
  the site never shows a stale reference; tests/test_docs.py checks the committed copies.
* Drop nav entries whose page does not exist yet (guides other people are still writing) and list
  every page that is not in the nav under "Guides", so a new page is never unreachable.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.llmforge")


def on_config(config, **kwargs):
    from llmforge.docgen import write

    docs = Path(config["docs_dir"])
    for path in write(docs):
        log.info("regenerated %s", path.relative_to(docs))
    listed: set[str] = set()
    config["nav"] = _existing(config["nav"], docs, listed)
    extra = sorted(str(p.relative_to(docs)) for p in docs.rglob("*.md") if str(p.relative_to(docs)) not in listed)
    if extra:
        for item in config["nav"]:
            if isinstance(item, dict) and "Guides" in item:
                item["Guides"].extend(extra)
                break
        else:
            config["nav"].append({"More": extra})
    return config


def _existing(nav, docs: Path, listed: set[str]):
    out = []
    for item in nav:
        if isinstance(item, str):
            if (docs / item).exists():
                listed.add(item)
                out.append(item)
            continue
        ((title, value),) = item.items()
        if isinstance(value, list):
            kept = _existing(value, docs, listed)
            if kept:
                out.append({title: kept})
        elif "://" in value or (docs / value).exists():
            listed.add(value)
            out.append({title: value})
        else:
            log.info("nav: %s (%s) is not written yet; left out", title, value)
    return out
