"""The layout holds: imports flow one way, from the command line down to errors, and no module imports itself
back through another. Read from the source with `ast`, so it needs nothing installed."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGES = ("raft_data", "raft_sft")

# Each folder (or top-level module) and its floor: a module may import only from lower floors or from its own
# folder. raft_sft trains on what raft_data built and needs only its config, storage and models.
FLOORS = {
    "raft_data.errors": 0,
    "raft_data.config": 1,
    "raft_data.storage": 2,
    "raft_data.models": 3,
    "raft_data.data": 4,
    "raft_data.backends": 4,
    "raft_data.selection": 4,
    "raft_data.rewards": 5,
    "raft_data.stages": 6,
    "raft_sft": 6,
    "raft_data.rounds": 7,
    "raft_data.report": 7,
    "raft_data.tools": 7,
    "raft_data.cli": 8,
    "raft_data.__main__": 9,
}
RAFT_SFT_MAY_USE = ("raft_data.errors", "raft_data.config", "raft_data.storage", "raft_data.models")


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b`: the module a.b where b is a module, else a
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add(name)
    return found


def group(module: str) -> str:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module


def graph() -> dict[str, set[str]]:
    modules = module_files()
    edges = {m: imports(p, modules) for m, p in modules.items()}
    # a package's own __init__ is reached through every `from package.x import y`: not an edge of its own
    return {m: {t for t in targets if t != m and not m.startswith(t + ".")} for m, targets in edges.items()}


def test_every_module_has_a_floor() -> None:
    unplaced = [m for m in module_files() if m not in PACKAGES and group(m) not in FLOORS]
    assert not unplaced, f"modules outside the layout: {unplaced}; give their folder a floor in FLOORS"


def test_imports_only_run_down_the_floors() -> None:
    upward = []
    for module, targets in graph().items():
        if module in PACKAGES:
            continue
        for target in targets:
            if target in PACKAGES or group(target) == group(module):
                continue
            if FLOORS[group(target)] >= FLOORS[group(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run down the floors:\n" + "\n".join(sorted(upward))


def test_raft_sft_uses_only_config_storage_and_models() -> None:
    wrong = [
        f"{m} -> {t}"
        for m, targets in graph().items()
        if m.startswith("raft_sft")
        for t in targets
        if t.startswith("raft_data") and not t.startswith(RAFT_SFT_MAY_USE)
    ]
    assert not wrong, wrong


def test_no_import_circles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """The checks above can fail: an upward import planted in a copy of the tree is found."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    errors = tmp_path / "raft_data" / "errors.py"
    errors.write_text(errors.read_text(encoding="utf-8") + "\nfrom raft_data.cli.main import main\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    edges = graph()
    assert "raft_data.cli.main" in edges["raft_data.errors"]
    try:
        test_imports_only_run_down_the_floors()
    except AssertionError as e:
        assert "raft_data.errors -> raft_data.cli.main" in str(e)
    else:
        raise AssertionError("the upward import was not found")
    try:
        test_no_import_circles()
    except AssertionError as e:
        assert "raft_data.errors" in str(e)
    else:
        raise AssertionError("the circle was not found")
