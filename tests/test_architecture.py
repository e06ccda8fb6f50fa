"""The library's shape: layers that only import downward, no import cycle, one home for run-directory names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import thesis_lib
from thesis_lib import layout

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "thesis_lib"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("thesis_lib")


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.replace(":", "|").split("|")] for layer in layers]


def test_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_ignore_no_import():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert all("ignore_imports" not in contract for contract in config["contracts"])


def test_every_module_sits_in_a_layer(graph):
    layers = [name for layer in _layers() for name in layer]
    homeless = sorted(
        module for module in graph.modules
        if module != "thesis_lib" and not any(module == name or module.startswith(name + ".") for name in layers)
    )
    assert homeless == [], f"modules in no layer of pyproject.toml's import-linter contract: {homeless}"


def test_no_import_cycle_anywhere_in_the_package(graph):
    cycles = [sorted(component) for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def test_nothing_inside_the_package_imports_the_root_package(graph):
    assert graph.find_modules_that_directly_import("thesis_lib") == set()


def _strongly_connected(graph) -> list[set[str]]:
    """Tarjan's algorithm over grimp's graph of thesis_lib (imports inside functions included)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            components.append(component)

    for module in modules:
        if module not in index:
            visit(module)
    return components


def test_the_cycle_finder_finds_a_cycle():
    class TwoModules:
        modules = {"a", "b", "c"}

        @staticmethod
        def find_modules_directly_imported_by(module):
            return {"a": {"b"}, "b": {"a"}, "c": {"a"}}[module]

    assert sorted(map(sorted, _strongly_connected(TwoModules))) == [["a", "b"], ["c"]]


# --- the run-directory contract -------------------------------------------------------------------

def _docstring_ids(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }


def _spellings(source: str) -> tuple[list[str], list[str]]:
    """(every string literal but docstrings, the literals used as path parts).

    A literal is a path part when it is an operand of `/`, an argument of `Path(...)` or
    `os.path.join(...)`, or holds a "/": "figures" as a CLI word is not a folder name spelled again,
    `run_dir / "figures"` is.
    """
    tree = ast.parse(source)
    docstrings = _docstring_ids(tree)
    literals = [node for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    in_paths: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            in_paths.update(id(side) for side in (node.left, node.right))
        elif isinstance(node, ast.Call):
            callee = ast.unparse(node.func)
            if callee in ("Path", "pathlib.Path", "os.path.join") or callee.endswith(".joinpath"):
                in_paths.update(id(arg) for arg in node.args)
    path_parts = [node.value for node in literals if id(node) in in_paths or "/" in node.value]
    return [node.value for node in literals], path_parts


def _layout_names() -> set[str]:
    """The file and folder names layout.py's constants hold."""
    tree = ast.parse((PACKAGE / "layout.py").read_text())
    return {node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and node.targets[0].id.isupper()}


def _spelled_again(name: str, literals: list[str], path_parts: list[str]) -> bool:
    if "." in name:  # a file name: any literal naming it, alone or at the end of a path
        return any(text == name or text.endswith("/" + name) for text in literals)
    return any(name in text.split("/") for text in path_parts)  # a folder: only where a path is built


def test_each_run_directory_name_is_spelled_once_in_the_library():
    names = _layout_names()
    again: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py" and path.parent == PACKAGE:
            continue
        literals, path_parts = _spellings(path.read_text())
        for name in names:
            if _spelled_again(name, literals, path_parts):
                again.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert again == {}, f"run-directory names spelled outside thesis_lib/layout.py (use its constants): {again}"


def test_the_name_check_catches_a_literal_and_spares_docstrings_and_words():
    source = ('"""Mentions model.pt and figures/ in a docstring."""\n'
              'a = run_dir / "model.pt"\nb = out / "figures"\nc = parser.add_parser("figures")\n')
    literals, path_parts = _spellings(source)
    assert _spelled_again("model.pt", literals, path_parts)
    assert _spelled_again("figures", literals, path_parts)
    literals, path_parts = _spellings('c = parser.add_parser("figures")\n')
    assert not _spelled_again("figures", literals, path_parts)


# Files a run writes only in some situations, and what makes them.
_SOMETIMES = {
    layout.DRIVER_NOTEBOOK: "a run through papermill",
    layout.REPORT_BACKLINKS: "a sweep report that includes the run",
    f"{layout.RUN_REPORT_DIR}/{layout.REPORT_PDF}": "report.pdf: true, or thesis-lib report run --pdf",
    f"{layout.EXPORTS_DIR}/{layout.TORCHSCRIPT_EXPORT}": "thesis-lib export --format torchscript",
    f"{layout.EXPORTS_DIR}/{layout.ONNX_EXPORT}": "thesis-lib export --format onnx",
    f"{layout.EXPORTS_DIR}/{layout.SERVING_TORCHSCRIPT_EXPORT}": "thesis-lib export --format serving",
    f"{layout.EXPORTS_DIR}/{layout.SERVING_ONNX_EXPORT}": "thesis-lib export --format serving",
    layout.TENSORBOARD_DIR: "tracking.backends=[tensorboard], or thesis-lib sync --to tensorboard",
    layout.TRACKING_FILE: "tracking.backends not empty, or thesis-lib sync",
    **{path: "trainer.profile.enabled" for path in (layout.PROFILE_DIR, layout.PROFILE_TRACE, layout.PROFILE_INFO,
                                                     layout.PROFILE_TOP_OPS_TEXT, layout.PROFILE_TOP_OPS_CSV)},
}


@pytest.mark.slow
def test_the_layout_matches_what_a_real_run_writes(tmp_path):
    from thesis_lib import export_model, train
    from thesis_lib.data import make_synthetic_events

    data = make_synthetic_events(tmp_path / "events.h5", n_events=600, seed=0, n_tokens=6)
    result = train({"output_root": str(tmp_path / "outputs"), "run_name": "layout",
                    "data": {"path": str(data), "batch_size": 128},
                    "model": {"encoder": "mlp", "latent_dim": 4, "hidden_dim": 16, "num_layers": 1},
                    "trainer": {"epochs": 2, "seed": 0}, "telemetry": {"interval_s": 0.1},
                    "logging": {"figures": ["losses"]}}, dashboard=None)
    export_model(result.run_dir, ["state_dict"])
    run_dir = Path(result.run_dir)
    assert run_dir.parent == tmp_path / "outputs" / layout.RUNS_DIR
    written = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*")}
    free_form = (layout.FIGURES_DIR,)  # one PNG per figure family, named by monitoring
    unregistered = sorted(
        path for path in written
        if path not in layout.RUN_LAYOUT and not any(path.startswith(folder + "/") for folder in free_form)
    )
    assert unregistered == [], f"files a run writes that thesis_lib/layout.py's RUN_LAYOUT does not name: {unregistered}"
    missing = sorted(set(layout.RUN_LAYOUT) - written - set(_SOMETIMES))
    assert missing == [], f"RUN_LAYOUT names files this run did not write: {missing}"


def test_every_layout_entry_says_what_it_holds():
    for table in (layout.RUN_LAYOUT, layout.SWEEP_LAYOUT, layout.REPORT_LAYOUT):
        for path, holds in table.items():
            assert holds.strip() and not path.startswith("/"), path
    assert thesis_lib.__version__
