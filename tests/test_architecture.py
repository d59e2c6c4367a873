"""The seams, checked on the source (AST and text, no imports of the project):

- the packages' imports form no cycle (``experiment/`` never imports ``visualization/``; the public facades
  kept for scripts outside the project are the listed exceptions);
- a model is built from a checkpoint in one function (``experiment.predictor.model_from_checkpoint``);
- a unit's name is spelled and parsed in one module (``experiment/run_folder.py``);
- the repository cites no document it does not contain.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("brats_data", "experiment", "losses", "metrics", "models", "utils", "visualization")
# Facades kept for scripts outside the project (SPEC names them); they may import upwards.
FACADES = {"utils/experiment_utils.py"}


def _tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    files = [ROOT / line for line in out.stdout.splitlines() if line]
    if not files:  # not a git checkout (e.g. an unpacked archive): every file under the root
        files = [p for p in ROOT.rglob(pattern) if ".venv" not in p.parts and "data" not in p.parts]
    return [p for p in files if p.is_file()]


def _sources() -> dict[str, ast.Module]:
    """Every project Python file (not the tests) by its path relative to the root."""
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p)) for p in _tracked("*.py")
            if p.relative_to(ROOT).parts[0] not in ("tests",)}


def _imported_packages(tree: ast.Module) -> set[str]:
    """Top-level project packages imported anywhere in ``tree`` (function-level imports included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for path, tree in _sources().items():
        package = Path(path).parts[0]
        if package in PACKAGES and path not in FACADES:
            graph[package] |= _imported_packages(tree) - {package}
    return graph


def test_package_imports_form_no_cycle():
    graph = package_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle between packages: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for package in PACKAGES:
        if package not in state:
            visit(package, [package])


def test_experiment_never_imports_visualization_and_utils_are_the_bottom():
    graph = package_graph()
    assert "visualization" not in graph["experiment"], "charts depend on the run folder, not the other way round"
    assert graph["utils"] == set(), f"utils imports {graph['utils']}: it must stay the bottom layer"
    for low in ("models", "metrics", "losses", "brats_data"):
        assert not graph[low] & {"experiment", "visualization"}, f"{low} imports {graph[low]}"


def _calls(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_a_model_is_built_from_a_checkpoint_in_one_function():
    builders = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                calls = _calls(node)
                if calls & {"get_model", "create_model"} and "load_state_dict" in calls:
                    builders.append(f"{path}:{node.name}")
    assert builders == ["experiment/predictor.py:model_from_checkpoint"]


def _string_parts(tree: ast.Module) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def test_unit_names_are_spelled_and_parsed_in_the_run_folder_module_only():
    """No string literal outside experiment/run_folder.py builds or matches ``_seed_`` (docstrings aside)."""
    offenders = []
    for path, tree in _sources().items():
        if path == "experiment/run_folder.py":
            continue
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and "_seed_" in node.value):
                offenders.append(f"{path}:{node.lineno}: {node.value!r}")
    assert not offenders, "unit names spelled outside experiment/run_folder.py:\n" + "\n".join(offenders)


DOC_REFERENCE = re.compile(r"(?<![\w/.-])([\w./-]*[A-Za-z0-9_-]\.md)\b")


def test_the_repository_cites_only_documents_it_contains():
    documents = [str(p.relative_to(ROOT)) for p in _tracked("*.md")]
    missing = []
    for path in _tracked("*"):
        if path.suffix not in (".py", ".md", ".txt", ".toml", ".sh", ".yaml", ".yml", ".sbatch") and \
                path.name != "run":
            continue
        for line_no, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            for ref in DOC_REFERENCE.findall(line):
                if ref.startswith(("http", "//")) or "://" in line[:line.find(ref)][-12:]:
                    continue
                local = (path.parent / ref).resolve()
                if not local.is_file() and not any(d == ref or d.endswith("/" + ref) for d in documents):
                    missing.append(f"{path.relative_to(ROOT)}:{line_no}: {ref}")
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)
