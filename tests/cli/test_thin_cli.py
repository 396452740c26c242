"""The command line is thin (issue 26 point 4, DESIGN.md): a command parses its flags, calls documented medmoe
functions and prints. Mechanical checks of that rule over the source of ``medmoe.cli``:

* no function in ``cli/`` has a body longer than :data:`MAX_BODY_LINES` lines (the flags of a command are its
  signature, not its body);
* ``cli/`` uses no private name (``_helper``) of a module outside ``cli/``: what a command calls is public;
* ``cli/`` builds no network itself (no model factory or model class, no ``torch.nn``): the library does;
* nothing outside ``cli/`` imports ``medmoe.cli``: imports flow one way, the command line is the top layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import medmoe.cli

CLI = Path(medmoe.cli.__file__).resolve().parent
PACKAGE = CLI.parent
MAX_BODY_LINES = 60
#: Names whose use would mean a command builds a network instead of calling the library.
MODEL_BUILDERS = {"create_model", "create_seg_model", "seg_model_from_config", "build_mosaic_config", "MosaicModel",
                  "MILModel", "VisionTransformer"}

CLI_FILES = sorted(CLI.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` written in ``path``."""
    if not node.level:
        return node.module or ""
    package = path.resolve().parent.relative_to(PACKAGE.parent).parts  # ('medmoe', 'cli', ...)
    base = list(package[: len(package) - (node.level - 1)])
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> Iterator[tuple[str, str]]:
    """``(module, name)`` of every import in ``path`` (``name`` is ``""`` for ``import module``)."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(path, node)
            for alias in node.names:
                yield module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0  # type: ignore[operator]


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: p.name)
def test_cli_functions_are_short(path: Path) -> None:
    long = {node.name: _body_lines(node) for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_BODY_LINES}
    assert not long, f"{path.name}: function bodies over {MAX_BODY_LINES} lines {long}: move the logic to a " \
                     "documented function of the library and call it"


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: p.name)
def test_cli_uses_only_public_names_of_the_library(path: Path) -> None:
    private = [f"{module}.{name}" for module, name in _imports(path)
               if module.startswith("medmoe") and not module.startswith("medmoe.cli") and name.startswith("_")
               and name != "__version__"]
    assert not private, f"{path.name} imports private names {private}"


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: p.name)
def test_cli_builds_no_network(path: Path) -> None:
    found = [f"{module}.{name}" for module, name in _imports(path)
             if name in MODEL_BUILDERS or module == "torch.nn" or (module == "torch" and name == "nn")]
    assert not found, f"{path.name} builds networks itself through {found}"


def test_nothing_below_the_cli_imports_it() -> None:
    users = sorted({str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if CLI not in path.parents
                    and any(module == "medmoe.cli" or module.startswith("medmoe.cli.") for module, _ in _imports(path))})
    assert not users, f"modules below the command line import medmoe.cli: {users}"


def test_the_checks_see_what_they_check() -> None:
    """The helpers find imports, private names and long bodies (so the tests above cannot pass vacuously)."""
    seg = CLI / "seg.py"
    assert ("medmoe.engine.seg.setup", "prepare_seg_training") in set(_imports(seg))
    assert any(module == "medmoe.cli.common" for module, _ in _imports(seg))
    tree = ast.parse("def f():\n    '''doc'''\n    a = 1\n    b = 2\n    return a + b\n")
    assert _body_lines(tree.body[0]) == 3  # type: ignore[arg-type]
    volumes = PACKAGE / "data" / "volumes.py"
    assert any(name.startswith("_") for node in ast.walk(_tree(volumes)) if isinstance(node, ast.FunctionDef)
               for name in [node.name])
