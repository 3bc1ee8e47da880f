"""Small pieces: no module in src over 500 non-blank lines, no function over 80 lines.

A ratchet: what is over a limit today is listed with its current size, and the test fails when a
listed piece grows, when it drops under the limit (remove it from the list), or when anything
unlisted goes over. The lists can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llenergymeasure

SRC = Path(llenergymeasure.__file__).parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# module path (relative to the package) -> non-blank lines today
MODULES_OVER: dict[str, int] = {}
# "module path:qualified function name" -> lines today
FUNCTIONS_OVER: dict[str, int] = {}


def non_blank_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def module_sizes() -> dict[str, int]:
    return {
        path.relative_to(SRC).as_posix(): non_blank_lines(path.read_text(encoding="utf-8"))
        for path in sorted(SRC.rglob("*.py"))
    }


def function_sizes(source: str, module: str) -> dict[str, int]:
    """Lines of every function and method (decorators excluded), keyed ``module:Outer.name``."""
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    sizes[f"{module}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sizes


def all_function_sizes() -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        sizes.update(function_sizes(path.read_text(encoding="utf-8"), module))
    return sizes


def ratchet_problems(sizes: dict[str, int], limit: int, allowed: dict[str, int]) -> list[str]:
    problems = []
    for name, size in sizes.items():
        if size > limit and name not in allowed:
            problems.append(f"{name}: {size} lines, over the limit of {limit}")
        elif name in allowed and size > allowed[name]:
            problems.append(f"{name}: grew to {size} lines (listed at {allowed[name]})")
        elif name in allowed and size <= limit:
            problems.append(f"{name}: now {size} lines, under the limit: remove it from the list")
    problems += [f"{name}: listed but gone: remove it" for name in allowed if name not in sizes]
    return problems


def test_no_module_is_over_500_non_blank_lines() -> None:
    assert ratchet_problems(module_sizes(), MAX_MODULE_LINES, MODULES_OVER) == []


def test_no_function_is_over_80_lines() -> None:
    assert ratchet_problems(all_function_sizes(), MAX_FUNCTION_LINES, FUNCTIONS_OVER) == []


def test_the_ratchet_catches_growth_new_offenders_and_stale_entries() -> None:
    allowed = {"a.py": 600, "b.py": 700, "gone.py": 900}
    sizes = {"a.py": 650, "b.py": 400, "c.py": 501, "d.py": 500}
    problems = ratchet_problems(sizes, 500, allowed)
    assert problems == [
        "a.py: grew to 650 lines (listed at 600)",
        "b.py: now 400 lines, under the limit: remove it from the list",
        "c.py: 501 lines, over the limit of 500",
        "gone.py: listed but gone: remove it",
    ]


def test_function_sizes_count_methods_and_nested_functions_without_decorators() -> None:
    source = (
        "import functools\n"
        "@functools.cache\n"
        "def top():\n"
        "    def inner():\n"
        "        return 1\n"
        "    return inner\n"
        "class K:\n"
        "    def method(self):\n"
        "        pass\n"
    )
    assert function_sizes(source, "m.py") == {
        "m.py:top": 4,
        "m.py:top.inner": 2,
        "m.py:K.method": 2,
    }


def test_non_blank_lines_skip_whitespace_only_lines() -> None:
    assert non_blank_lines("a\n\n   \n\tb\n") == 2
