"""The package's layout by stage holds: no stage imports a later one at import time, serving
never imports training, marco_jax loads tfds_marco only inside the function that builds a
dataset, and no modules import each other in a circle. Read from the source, nothing is run."""

from __future__ import annotations

import ast
import pathlib

import pytest
from helpers import REPO

# Earlier stages first; a module may import (at import time) only from its own stage and from
# earlier ones. training and serving are siblings: neither imports the other.
STAGES = {
    "marco_jax.logs": -1,  # the console and log file, which everything may write to
    "marco_jax.labels": 0,
    "marco_jax.parallel": 0,
    "marco_jax.cli": 0,
    "marco_jax.config_utils": 0,
    "marco_jax.configs": 1,  # data, read through config_utils
    "marco_jax.model": 1,
    "marco_jax.data": 2,
    "marco_jax.runs": 3,
    "marco_jax.evaluation": 4,
    "marco_jax.training": 5,
    "marco_jax.serving": 5,
}
COMMAND_STAGE = 6  # marco_jax/<command>.py


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    files = [*REPO.glob("marco_jax/**/*.py"), *REPO.glob("tfds_marco/**/*.py")]
    return {_module_name(p): p for p in files if not p.name.endswith("_test.py")}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (a module, or the package holding it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    """(imported at import time, imported anywhere) project modules of one file; imports under
    `if TYPE_CHECKING:` count as neither."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    in_functions = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    at_import, anywhere = set(), set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        targets = {t for t in map(_resolve, names) if t}
        anywhere |= targets
        if id(node) not in in_functions:
            at_import |= targets
    return at_import, anywhere


IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _stage(module: str) -> tuple[str, int] | None:
    for prefix, rank in STAGES.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    if module.startswith("marco_jax.") and module.count(".") == 1:
        return "commands", COMMAND_STAGE
    return None  # the package itself, tfds_marco


def test_the_stages_cover_every_module_of_the_package():
    unplaced = [m for m in MODULES if m.startswith("marco_jax.") and _stage(m) is None]
    assert unplaced == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("marco_jax.")))
def test_no_import_of_a_later_stage(module):
    own, rank = _stage(module)
    later = []
    for target in IMPORTS[module][0]:
        stage = _stage(target)
        if stage and stage[0] != own and stage[1] >= rank:
            later.append(target)
    assert later == [], f"{module} imports {later} at import time"


def test_serving_never_imports_training():
    offending = {
        module: sorted(t for t in anywhere if t.startswith("marco_jax.training"))
        for module, (_, anywhere) in IMPORTS.items()
        if module.startswith("marco_jax.serving") or module in ("marco_jax.classify",)
    }
    assert {m: t for m, t in offending.items() if t} == {}


def test_marco_jax_loads_tfds_marco_only_when_it_builds_a_dataset():
    offending = {
        module: sorted(t for t in at_import if t.startswith("tfds_marco"))
        for module, (at_import, _) in IMPORTS.items()
        if module.startswith("marco_jax")
    }
    assert {m: t for m, t in offending.items() if t} == {}


def test_no_import_cycles():
    graph = {m: {t for t in at_import if t != m} for m, (at_import, _) in IMPORTS.items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
