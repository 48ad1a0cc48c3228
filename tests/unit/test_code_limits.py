"""Issue #11's size limits, kept by a test: in the core numerics and learning packages
(physics/, device/, learning/, engine/) no module over 500 lines and no function over 80 lines;
nowhere in the library a function with more than 12 positional parameters.

One exception, with its reason: ``physics/_kernels.py`` is the compiled Newton and its numba
helpers, which must live in one module for numba to inline them into one compiled unit."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

CORE = ("physics", "device", "learning", "engine")
LIBRARY = (
    REPO / "phasegrad_hw",
    REPO / "backends",
    REPO / "firmware_models",
    REPO / "calibration",
)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_POSITIONAL = 12
LONG_MODULES_ALLOWED = {"physics/_kernels.py"}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return len(fn.args.posonlyargs) + len(fn.args.args)


def test_core_modules_and_functions_are_short() -> None:
    too_long: list[str] = []
    for pkg in CORE:
        for path in sorted((REPO / "phasegrad_hw" / pkg).rglob("*.py")):
            rel = path.relative_to(REPO / "phasegrad_hw").as_posix()
            src = path.read_text()
            lines = src.count("\n")
            if lines > MAX_MODULE_LINES and rel not in LONG_MODULES_ALLOWED:
                too_long.append(f"{rel}: {lines} lines")
            for fn in _functions(ast.parse(src)):
                n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{fn.lineno} {fn.name}: {n} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)


def test_no_function_takes_more_than_twelve_positional_parameters() -> None:
    wide: list[str] = []
    for root in LIBRARY:
        for path in sorted(root.rglob("*.py")):
            for fn in _functions(ast.parse(path.read_text())):
                if _positional(fn) > MAX_POSITIONAL:
                    wide.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}")
    assert not wide, "more than 12 positional parameters:\n" + "\n".join(wide)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk counts what it should: a 13-parameter, 81-line function is caught."""
    params = ", ".join(f"a{i}" for i in range(13))
    body = "\n".join("    x = 1" for _ in range(80))
    fn = _functions(ast.parse(f"def f({params}):\n{body}\n"))[0]
    assert _positional(fn) == 13
    assert (fn.end_lineno or 0) - fn.lineno + 1 == 81
