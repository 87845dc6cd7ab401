"""The layout is what docs/architecture.md says: every module in its map, no import cycle, layers kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["llmforge", "llmforge_sources", "llmforge_chat", "llmforge_neftune", "llmforge_bench", "llmforge_deeplake",
            "llmforge_models"]  # fmt: skip


def modules_on_disk() -> set[str]:
    files = list((REPO / "src").rglob("*.py")) + list((REPO / "plugins").rglob("*.py"))
    return {str(f.relative_to(REPO / "src" if (REPO / "src") in f.parents else REPO)) for f in files}


def test_the_module_map_names_every_module_and_no_other():
    text = (REPO / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"^\| `((?:llmforge|plugins)/[\w/]+\.py)` \|", text, flags=re.M))
    on_disk = modules_on_disk()
    assert not on_disk - mapped, f"modules missing from docs/architecture.md's module map: {sorted(on_disk - mapped)}"
    assert not mapped - on_disk, f"the module map names modules that do not exist: {sorted(mapped - on_disk)}"


def test_no_module_imports_another_in_a_cycle():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_the_core_imports_no_plugin():
    for path in (REPO / "src" / "llmforge").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) llmforge_", path.read_text(), flags=re.M), path


def test_the_layer_contract_holds():
    exe = str(Path(sys.executable).parent / "lint-imports")  # import-linter, a dev dependency
    done = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_the_command_line_names_the_stages_in_order():
    from llmforge.cli import STAGE_NAMES
    from llmforge.stages import STAGES

    assert STAGE_NAMES == tuple(STAGES)


def test_light_imports_stay_light():
    """A token-store worker imports llmforge.data.packer in a fresh process; a plugin imports the public
    face; `llmforge --help` imports the command line. None of them may load torch or transformers."""
    code = (
        "import sys, llmforge.data.packer, llmforge.cli\n"
        "from llmforge import hookimpl, DataSource, DataConfig, Format\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
