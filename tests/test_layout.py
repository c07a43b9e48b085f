"""core/ in wings (docs/architecture.md): imports run only downward, and files stay small.

The imports are read with ``ast`` (function-level ones included), so a change that breaks the
layering fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = {"params", "protocol", "settings", "errors", "files", "access", "judge"}
# wing -> level; a module imports its own wing, the root and lower levels only
LEVELS = {"data": 1, "machine": 1, "models": 2, "adapters": 3, "train": 4, "serve": 4, "eval": 5}
LEVELS["teach"] = 6  # datasets made by a teacher: the engine, the judge, evaluation's batches
LEVELS["sweep"] = 6  # several runs, each measured by evaluation
WORKER_SIDE = {"worker", "loop", "loss", "checkpoints", "batches", "schedule", "preference"}
WORKER_SIDE |= {"samples", "phases", "frozen", "output", "grpo", "rewards"}
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
LAYOUT_FUNCTION_LINES = 80  # declarative Gradio layout, where splitting would scatter it
LAYOUT_FUNCTIONS = {"build_page", "layout"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved)."""
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from core.train import checkpoints` imports the module core.train.checkpoints
            found.update(f"{module}.{alias.name}" for alias in node.names)
            found.add(module)
    return found


def _place(module: str) -> tuple[str, str] | None:
    """(wing, module name) of a core module; wing "" for the root vocabulary."""
    parts = module.split(".")
    if parts[0] != "core" or len(parts) < 2:
        return None
    if parts[1] in VOCABULARY:
        return "", parts[1]
    if parts[1] in LEVELS:
        return parts[1], parts[2] if len(parts) > 2 else ""
    return None


def _violations(path: Path) -> list[str]:
    wing, module = _place(_name(path)) or ("?", "")
    wrong = []
    for imported in sorted(_imports(path)):
        if imported.split(".")[0] in ("webapp", "gradio"):
            wrong.append(f"{imported} (core/ knows nothing of the page)")
            continue
        place = _place(imported)
        if place is None:
            continue
        other, other_module = place
        if other == wing or other == "":
            pass
        elif wing == "" or LEVELS[other] >= LEVELS[wing]:
            wrong.append(f"{imported} (wing {other or 'root'} is not below {wing or 'root'})")
            continue
        if wing == "train" and module in WORKER_SIDE:
            service_side = other == "train" and other_module and other_module not in WORKER_SIDE
            if service_side or (other == "adapters" and other_module == "store"):
                wrong.append(f"{imported} (the worker side imports no service code or store)")
    return wrong


def test_every_core_module_lives_in_a_wing_or_the_root():
    stray = [
        _name(p)
        for p in _modules("core")
        if p.parent == ROOT / "core" and p.stem not in VOCABULARY | {"__init__"}
    ]
    assert not stray, f"modules outside the wings: {stray}"
    wings = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings <= set(LEVELS), f"wings missing from the table: {wings - set(LEVELS)}"
    for wing in wings:
        assert (ROOT / "core" / wing / "__init__.py").read_text().strip(), f"{wing} says nothing"


@pytest.mark.parametrize("path", _modules("core"), ids=_name)
def test_imports_run_only_down_the_wings(path):
    assert not _violations(path)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule itself can fail: a data module importing train, a worker importing the
    store, the vocabulary importing a wing."""
    cases = {
        "core/data/bad.py": "from core.train.plan import plan\n",
        "core/train/worker_probe.py": "",
        "core/train/loop.py": "from core.adapters.store import AdapterStore\n",
        "core/params.py": "from core.models.inspect import ModelInfo\n",
        "core/machine/bad.py": "def f():\n    from core.data import scan\n",
    }
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for relative, source in cases.items():
        file = tmp_path / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(source)
    assert _violations(tmp_path / "core/data/bad.py")
    assert _violations(tmp_path / "core/train/loop.py")
    assert _violations(tmp_path / "core/params.py")
    assert _violations(tmp_path / "core/machine/bad.py")
    assert not _violations(tmp_path / "core/train/worker_probe.py")


def _too_long(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    found = []
    if len(source.splitlines()) > MAX_FILE_LINES:
        found.append(f"{len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            limit = LAYOUT_FUNCTION_LINES if node.name in LAYOUT_FUNCTIONS else MAX_FUNCTION_LINES
            if length > limit:
                found.append(f"{node.name}: {length} lines")
    return found


@pytest.mark.parametrize("path", _modules("core") + _modules("webapp"), ids=_name)
def test_files_and_functions_stay_small(path):
    assert not _too_long(path)
