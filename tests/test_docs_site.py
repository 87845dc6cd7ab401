"""The docs site: example outputs come from runs of the current code, recipes on the home page name files
that exist, the site is configured as documented, and (-m slow) its pages lay out at 1280 px.

The outputs are docs/outputs/*.txt, written by docs/outputs/generate.py and included by the pages with
pymdownx.snippets; the screenshots are docs/screenshots.py's."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
INCLUDE = re.compile(r'^(?P<indent>\s*)--8<-- "outputs/(?P<name>[a-z-]+)\.txt:(?P<section>[a-z]+)"\s*$')
FENCE = re.compile(r"^(?P<indent>\s*)```\s*(?P<info>.*)$")
BOX_TABLE = re.compile(r"[┏┃┡╇┌│└├]|─{4,}")  # a rich table or rule
COVERED = ("run", "data-report", "generate", "eval", "show-example", "compare")
ROOT_RELATIVE_PAGES = ("index.md", "quickstart.md")  # recipes saved at the repository root


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


generate = load("llmforge_docs_outputs", DOCS / "outputs" / "generate.py")


def blocks(page: Path) -> list[dict]:
    """Fenced blocks of a page: info string, first line number, lines (dedented), preceding block."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[dict] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = len(m.group("indent")), i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip() == "```" and len(lines[i]) - len(lines[i].lstrip()) <= indent):
            body.append(lines[i][indent:])
            i += 1
        between = lines[found[-1]["end"] + 1 : start] if found else lines[:start]
        found.append(
            {
                "info": m.group("info").strip(),
                "line": start + 1,
                "end": i,
                "body": body,
                "previous": found[-1] if found else None,
                "adjacent": bool(found) and not any(line.strip() for line in between),
            }
        )
        i += 1
    return found


def language(info: str) -> str:
    m = re.match(r"\{?\s*\.?([\w-]+)", info)
    return m.group(1) if m else ""


def llmforge_commands(body: list[str]) -> list[str]:
    return [line.split("#")[0].strip() for line in body if re.match(r"\s*llmforge [a-z-]+", line)]


# --- the outputs ------------------------------------------------------------------------------------------


def test_every_output_file_records_its_command_and_code():
    names = {o.name for o in generate.OUTPUTS_LIST}
    assert {p.stem for p in (DOCS / "outputs").glob("*.txt")} == names, "docs/outputs/ and generate.py disagree"
    for output in generate.OUTPUTS_LIST:
        stored = generate.read(DOCS / "outputs" / f"{output.name}.txt")
        assert stored.get("command") == output.command, f"{output.name}.txt: rerun python docs/outputs/generate.py"
        assert stored["after"] == [generate.BY_NAME[n].command for n in generate._chain(output)], output.name
        assert re.fullmatch(r"sha256:[0-9a-f]{16}", str(stored.get("code", ""))), f"{output.name}.txt: no fingerprint"
        assert "torch" in str(stored.get("environment", "")), output.name
        assert str(stored.get("output", "")).strip(), f"{output.name}.txt: empty output"
        if output.summary:
            assert str(stored.get("summary", "")).strip(), f"{output.name}.txt: no summary section"


def test_pages_include_outputs_after_their_command():
    """Every include names a stored file and section, sits in a ``` { .text .output } block, and the
    command that printed it is on the page before it."""
    included = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in blocks(page):
            for line in block["body"]:
                m = INCLUDE.match(line)
                if not m:
                    continue
                where = f"{page.relative_to(DOCS)}:{block['line']}"
                name, section = m.group("name"), m.group("section")
                assert name in generate.BY_NAME, f"{where}: outputs/{name}.txt is not generated"
                stored = generate.read(DOCS / "outputs" / f"{name}.txt")
                assert section in stored, f"{where}: outputs/{name}.txt has no section {section!r}"
                assert language(block["info"]) == "text" and ".output" in block["info"], (
                    f"{where}: include captured output in a ``` {{ .text .output }} block, not {block['info']!r}"
                )
                before = "\n".join(text.splitlines()[: block["line"]])
                assert generate.BY_NAME[name].command in before, (
                    f"{where}: the page does not show `{generate.BY_NAME[name].command}` before its output"
                )
                included.add(name)
    assert included == set(generate.BY_NAME), f"generated but shown nowhere: {set(generate.BY_NAME) - included}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_no_terminal_output_pasted_by_hand(page):
    """A text block with a rich table, a `$ llmforge` line, or right after an llmforge command the
    generator covers must be an include of docs/outputs/ (so its figures come from a run)."""
    for block in blocks(page):
        if language(block["info"]) not in ("text", "console", "") or any(INCLUDE.match(x) for x in block["body"]):
            continue
        where = f"{page.relative_to(DOCS)}:{block['line']}"
        body = "\n".join(block["body"])
        assert not re.search(r"^\$ llmforge ", body, re.M), f"{where}: pasted output of an llmforge command"
        assert not BOX_TABLE.search(body), f"{where}: a pasted rich table: generate it (docs/outputs/generate.py)"
        previous = block["previous"]
        if previous is not None and block["adjacent"] and language(previous["info"]) in ("bash", "sh", "console"):
            covered = [c for c in llmforge_commands(previous["body"]) if c.split()[1] in COVERED]
            assert not covered, f"{where}: pasted output of {covered}: generate it (docs/outputs/generate.py)"


# --- recipes on the pages ------------------------------------------------------------------------------


def recipe_snippets(page: Path) -> list[tuple[int, dict]]:
    found = []
    for block in blocks(page):
        if language(block["info"]) == "yaml":
            recipe = yaml.safe_load("\n".join(block["body"]))
            if isinstance(recipe, dict) and {"data", "finetune"} & set(recipe):
                found.append((block["line"], recipe))
    return found


def named_paths(recipe: dict) -> list[tuple[str, str]]:
    paths = []
    for stage, keys in (("data", ("path",)), ("finetune", ("path", "base")), ("evaluate", ("data_dir",))):
        for key in keys:
            value = (recipe.get(stage) or {}).get(key)
            if value is not None:
                paths.append((f"{stage}.{key}", str(value)))
    return paths


@pytest.mark.parametrize("name", ROOT_RELATIVE_PAGES)
def test_recipe_snippets_name_files_that_exist(name, tmp_path):
    snippets = recipe_snippets(DOCS / name)
    for line, recipe in snippets:
        for key, value in named_paths(recipe):
            if key == "finetune.base" and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value) and not (REPO / value).exists():
                continue  # a hub model name
            assert (REPO / value).exists(), f"docs/{name}:{line}: {key} {value!r} does not exist in the repository"
        path = tmp_path / f"recipe-{line}.yaml"  # loads as the page says: saved at the repository root
        path.write_text(yaml.safe_dump(recipe))
        if not (tmp_path / "examples").exists():
            (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
        from llmforge import Recipe

        Recipe.from_yaml(path)


def test_home_page_has_both_jobs():
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    assert "## Fine-tune an existing model" in text and "## Train one from scratch" in text
    shapes = [set(recipe) - {"name"} for _, recipe in recipe_snippets(DOCS / "index.md")]
    assert {"finetune", "evaluate"} in shapes, "the home page has no fine-tune-only recipe"
    assert any({"data", "model", "train"} <= shape for shape in shapes), "the home page has no pretraining recipe"
    fine_tune = next(r for _, r in recipe_snippets(DOCS / "index.md") if "data" not in r)
    assert fine_tune["finetune"].get("base"), "a fine-tune-only recipe needs finetune.base"
    assert "llmforge.finetune(" in text


# --- the site's configuration ---------------------------------------------------------------------------


def mkdocs_config() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", ""))


def extensions(config: dict) -> dict:
    out = {}
    for item in config["markdown_extensions"]:
        out.update(item if isinstance(item, dict) else {item: {}})
    return out


def test_site_uses_material_with_highlighting_search_and_copy():
    config = mkdocs_config()
    assert config["theme"]["name"] == "material"
    features = set(config["theme"]["features"])
    assert "content.code.copy" in features
    assert "navigation.tabs" not in features  # a tabs row under the header; see tests below at 1280 px
    assert "search" in config["plugins"]
    ext = extensions(config)
    for name in ("pymdownx.highlight", "pymdownx.inlinehilite", "pymdownx.superfences", "pymdownx.snippets"):
        assert name in ext, name
    assert ext["pymdownx.snippets"]["check_paths"] is True  # a missing output fails the build
    assert "stylesheets/extra.css" in config["extra_css"] and (DOCS / "stylesheets" / "extra.css").exists()
    assert "outputs/" in config["exclude_docs"] and "screenshots.py" in config["exclude_docs"]


def test_dev_extra_installs_the_theme():
    import tomllib

    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(re.match(r"mkdocs-material\b", requirement) for requirement in dev)


def test_normalise_masks_only_times():
    a = "│ train │ 61.2s │ val loss 5.259; 10,052 tok/s │\n  step 25/300: loss 7.3670, 9,025 tok/s\n(6.1s) 0:00:01"
    b = "│ train │  9.0s │ val loss 5.259; 952 tok/s    │\n  step 25/300: loss 7.3670, 11 tok/s\n(12.0s) 0:00:00"
    assert generate.normalise(a) == generate.normalise(b)
    assert generate.normalise(a) != generate.normalise(a.replace("5.259", "5.260"))


# --- slow: rerun, fingerprint, the home page's recipe, the browser ------------------------------------------


@pytest.mark.slow
def test_outputs_come_from_the_current_code():
    code = generate.fingerprint()
    stale = [o.name for o in generate.OUTPUTS_LIST if generate.read(DOCS / "outputs" / f"{o.name}.txt")["code"] != code]
    assert not stale, f"made by other code than this: {stale}; rerun python docs/outputs/generate.py (about 3 min)"


@pytest.mark.slow
def test_cheapest_output_reproduces(tmp_path):
    """data-report (about 10 s): a fresh run prints the stored figures (times and tokens/s masked)."""
    fresh = generate.produce(generate.plan(["data-report"]), tmp_path, generate.fingerprint(), None)
    stored = generate.read(DOCS / "outputs" / "data-report.txt")["output"]
    assert generate.normalise(fresh["data-report"][0]) == generate.normalise(str(stored))


@pytest.mark.slow
def test_home_page_pretraining_recipe_runs(tmp_path):
    from llmforge.cli import main

    recipe = next(r for _, r in recipe_snippets(DOCS / "index.md") if "train" in r)
    (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run"), "--set", "train.max_steps=4"]
    assert main(argv) == 0
    assert (tmp_path / "run" / "train" / "final" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("google-chrome") is None,
                    reason="no chromium for the screenshots (Debian: apt-get install chromium)")  # fmt: skip
@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="Pillow is not installed")
@pytest.mark.skipif(shutil.which("mkdocs") is None and not Path(sys.executable).with_name("mkdocs").exists(),
                    reason="mkdocs is not installed (pip install -e '.[dev]')")  # fmt: skip
def test_site_layout_at_1280px(tmp_path):
    """Every page in headless Chromium at 1280 px: a one-row header (DOM and pixel rows), outputs and
    commands that do not scroll sideways, highlighted code, copy buttons, box tables whose lines meet."""
    import json

    shots = load("llmforge_docs_screenshots", DOCS / "screenshots.py")
    assert shots.main(["--out", str(tmp_path)]) == 0, "\n".join(
        shots.problems(json.loads((tmp_path / "layout.json").read_text()))
    )
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert {"index", "quickstart", "evaluation", "finetuning", "reference/cli"} <= set(layout)
    for page, info in layout.items():
        assert info["header_band_px"] <= shots.ONE_ROW_PX, page
        assert (tmp_path / f"{page.replace('/', '-')}.png").exists()
    outputs = [b for b in layout["quickstart"]["blocks"] if b["output"] and b["visible"]]
    assert outputs and all(b.get("box") is None or not b["odd_width"] for b in outputs)
    assert any(b["lang"] == "yaml" and b["highlighted"] for b in layout["index"]["blocks"])
