"""The seams, checked on the source (AST and text, no imports of the project):

- one folder per phase, in this order from the bottom up (a module imports only its own package and the
  layers below it; the public facades kept for scripts outside the project import anything, and nothing in the
  project imports them):

      utils                       io, errors, runtime, distributed, checkpoints, label schemes and regions
      brats_data models metrics   the data records and cases; the networks; per-case metrics and statistics
      experiment                  what a run is: configuration, run folder, units and shards, data loaders
      inference                   predictor, post-processing, NIfTI export, the official evaluation
      evaluation                  scoring a model's predictions, efficiency
      training                    the trainer and its hooks, augmentation, losses
      run                         the loop, callbacks, logs, tracking, rank failure
      visualization               charts, slice figures, Grad-CAM, report.html

- no import cycle between modules (function-level imports included);
- a model is built from a checkpoint in one function (``inference.predictor.model_from_checkpoint``);
- a unit's name is spelled and parsed in one module (``experiment/run_folder.py``);
- the repository cites no document it does not contain.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),
    ("brats_data", "models", "metrics"),
    ("experiment",),
    ("inference",),
    ("evaluation",),
    ("training",),
    ("run",),
    ("visualization",),
)
PACKAGES = tuple(p for layer in LAYERS for p in layer)
LAYER_OF = {p: i for i, layer in enumerate(LAYERS) for p in layer}
# Facades kept for scripts outside the project (DESIGN names them): thin faces over the phases.
FACADE_PACKAGES = ("losses",)
FACADE_MODULES = {"utils.experiment_utils", "experiment_runner", "data_loader", "integrated_experiment",
                  "evaluate_experiment", "predict"}


def _tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    files = [ROOT / line for line in out.stdout.splitlines() if line]
    if not files:  # not a git checkout (e.g. an unpacked archive): every file under the root
        files = [p for p in ROOT.rglob(pattern) if ".venv" not in p.parts and "data" not in p.parts]
    return [p for p in files if p.is_file()]


def _sources() -> dict[str, ast.Module]:
    """Every project Python file (not the tests, benchmarks or examples) by its path relative to the root."""
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p)) for p in _tracked("*.py")
            if p.relative_to(ROOT).parts[0] not in ("tests", "benchmarks", "examples")}


def _module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (function-level imports included), resolved to the
    deepest existing module: ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    sources = _sources()
    modules = {_module_name(path): path for path in sources}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(sources[path]):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def _is_facade(module: str) -> bool:
    return module in FACADE_MODULES or _top(module) in FACADE_PACKAGES


def test_every_package_is_a_layer_and_every_module_lives_in_one():
    tops = {_top(m) for m in module_imports()}
    assert tops - set(PACKAGES) - set(FACADE_PACKAGES) - FACADE_MODULES == set(), (
        "a module outside the phase folders and facades")


def test_no_module_imports_from_a_phase_above_its_own():
    offenders = []
    for module, imported in module_imports().items():
        if _is_facade(module):
            continue
        own = _top(module)
        for target in imported:
            if _is_facade(target):
                offenders.append(f"{module} imports the facade {target}")
            elif _top(target) != own and LAYER_OF[_top(target)] >= LAYER_OF[own]:
                offenders.append(f"{module} ({own}, layer {LAYER_OF[own]}) imports {target} "
                                 f"({_top(target)}, layer {LAYER_OF[_top(target)]})")
    assert not offenders, "imports against the phase order:\n" + "\n".join(sorted(offenders))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_known_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_modules_import_each_other_in_no_cycle():
    """Between modules, not only packages; a package's ``__init__`` counts as a module."""
    cycle = find_cycle(module_imports())
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle)}"


def test_the_layering_test_sees_a_wrong_arrow():
    graph = module_imports()
    assert "run.tracking" not in graph["run.loop"], "the callers pass the trackers"
    assert "brats_data.cases" not in graph["brats_data.definitions"], "records never import case discovery"
    assert not any(_top(t) == "models" for t in graph["utils.io"])
    assert {"experiment.config", "experiment.run_folder"} <= graph["training.trainer"]


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
    assert builders == ["inference/predictor.py:model_from_checkpoint"]


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


MAX_FUNCTION_LINES = 60


def long_functions(sources: dict[str, ast.Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function or method longer than ``limit`` lines, counted from its
    ``def`` to its last line (decorators excluded, nested functions counted in their parent and on their own)."""
    found = []
    for path, tree in sorted(sources.items()):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_long_function_finder_counts_from_def_to_the_last_line():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    fits = ast.parse(f"@decorator\ndef fits():\n{body}\n")  # def + 59 lines: 60
    too_long = ast.parse(f"class A:\n    async def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
                         "        return 1\n")  # def + 59 + return: 61
    assert long_functions({"a.py": fits}) == []
    assert long_functions({"b.py": too_long}) == ["b.py:2 method (61 lines)"]


def test_no_function_is_longer_than_60_lines():
    """Every project function outside tests/, benchmarks/ and examples/ fits in 60 lines: longer ones are split
    into named steps."""
    offenders = long_functions(_sources())
    assert not offenders, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)
