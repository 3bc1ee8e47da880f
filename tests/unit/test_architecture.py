"""The package layers: every module imports only from its own floor or the floors below it.

Floors, lowest first::

    0  exceptions, _version, redaction (what is secret), files (the one write path), hub,
       install (hints), logs (the logger tree), text_table (aligned terminal tables),
       gguf_files (GGUF model files: naming and header), rescue (saving a finished
       measurement, else a rescue folder), os_errors (operating-system errors explained)
    1  config, datasets
    2  energy, engines, results, phase_split (the prefill/decode split: results hold its models)
    3  harness, online (a server under load: measured like harness measures an engine)
    4  study, runners, report, compare (reads results as the report does)
    5  api, cli
    6  llenergymeasure/__init__.py, __main__.py, testing (test doubles: nothing imports them)

Every ``import`` and ``from`` statement counts, wherever it stands: at module level, inside a
function (lazy imports of heavy engines are still dependencies) and under ``if TYPE_CHECKING:``.
Between packages the dependencies must also form no cycle, even on one floor, and modules must
not import each other in a circle (known cycles are listed with their reason and may only go).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import llenergymeasure

PACKAGE_ROOT = Path(llenergymeasure.__file__).parent
TOP = "llenergymeasure"

FLOORS: dict[str, int] = {
    "exceptions": 0,
    "_version": 0,
    "redaction": 0,
    "files": 0,
    "hub": 0,
    "install": 0,
    "logs": 0,
    "text_table": 0,
    "gguf_files": 0,
    "rescue": 0,
    "os_errors": 0,
    "config": 1,
    "datasets": 1,
    "energy": 2,
    "engines": 2,
    "results": 2,
    "phase_split": 2,
    "harness": 3,
    "online": 3,
    "study": 4,
    "runners": 4,
    "report": 4,
    "compare": 4,
    "api": 5,
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
    "testing": 6,
}

# Cycles between packages of one floor that are known and still to be broken, with the reason.
# An entry that is no longer a cycle fails the test, so this list only ever shrinks.
KNOWN_PACKAGE_CYCLES: dict[frozenset[str], str] = {}


# Module cycles inside one package that are known and still to be broken, with the reason.
KNOWN_MODULE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"llenergymeasure.config.models", "llenergymeasure.config.loading"}): (
        "ExperimentConfig.from_yaml delegates to the loader, which validates into ExperimentConfig"
    ),
}


@dataclass(frozen=True)
class Import:
    """One internal import: which module file imports which package, and where."""

    file: Path
    line: int
    source: str  # package of the importing module
    target: str  # package of the imported module
    statement: str
    source_module: str = ""
    target_module: str = ""

    def where(self) -> str:
        return f"{self.file.relative_to(PACKAGE_ROOT.parent)}:{self.line}"


def package_of_file(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """Absolute names of what the statement imports (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        package = module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    if node.module is None:  # from . import x: the names are modules
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def all_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE_ROOT.rglob("*.py")}


def nearest_module(name: str, modules: set[str]) -> str:
    """The module a dotted import name lands in (``a.b.func`` -> ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def internal_imports() -> list[Import]:
    modules = all_modules()
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = imported_modules(node, path)
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                # from package import submodule: the submodule is what is imported
                names = [
                    f"{names[0]}.{a.name}" if f"{names[0]}.{a.name}" in modules else names[0]
                    for a in node.names
                ]
            for name in names:
                parts = name.split(".")
                if parts[0] != TOP or len(parts) < 2:
                    continue
                found.append(
                    Import(
                        file=path,
                        line=node.lineno,
                        source=package_of_file(path),
                        target=parts[1],
                        statement=ast.unparse(node),
                        source_module=module_name(path),
                        target_module=nearest_module(name, modules),
                    )
                )
    return found


def package_cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected groups of more than one node (Tarjan): packages or modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(frozenset(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_every_package_has_a_floor() -> None:
    packages = {package_of_file(p) for p in PACKAGE_ROOT.rglob("*.py")}
    unplaced = sorted(packages - set(FLOORS))
    assert not unplaced, f"add these packages to FLOORS in {__file__}: {unplaced}"


def test_no_module_imports_from_a_higher_floor() -> None:
    upward = [
        f"{imp.where()}: {imp.source} (floor {FLOORS[imp.source]}) imports {imp.target} "
        f"(floor {FLOORS[imp.target]}): `{imp.statement}`"
        for imp in internal_imports()
        if imp.source in FLOORS and imp.target in FLOORS and FLOORS[imp.target] > FLOORS[imp.source]
    ]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def _unexplained_cycles(
    by_module: bool, known: dict[frozenset[str], str], what: str, table: str
) -> None:
    """Fail on a cycle not in ``known`` (naming every import in it) or a ``known`` one gone."""
    edges: dict[str, set[str]] = {}
    evidence: dict[tuple[str, str], Import] = {}
    for imp in internal_imports():
        a, b = (imp.source_module, imp.target_module) if by_module else (imp.source, imp.target)
        if a != b:
            edges.setdefault(a, set()).add(b)
            evidence.setdefault((a, b), imp)
    cycles = package_cycles(edges)
    unknown = []
    for group in cycles:
        if group in known:
            continue
        links = [
            f"  {imp.where()}: {a} -> {b}: `{imp.statement}`"
            for (a, b), imp in sorted(evidence.items())
            if a in group and b in group
        ]
        unknown.append(f"cycle between {sorted(group)}:\n" + "\n".join(links))
    assert not unknown, f"import cycles between {what}:\n" + "\n".join(unknown)
    stale = [sorted(g) for g in known if g not in cycles]
    assert not stale, f"no longer a cycle, remove from {table}: {stale}"


def test_packages_import_each_other_without_cycles() -> None:
    _unexplained_cycles(False, KNOWN_PACKAGE_CYCLES, "packages", "KNOWN_PACKAGE_CYCLES")


def test_modules_import_each_other_without_cycles() -> None:
    _unexplained_cycles(True, KNOWN_MODULE_CYCLES, "modules", "KNOWN_MODULE_CYCLES")


def test_the_checks_see_imports_inside_functions_and_relative_imports() -> None:
    source = "def f():\n    from ..harness import orchestrator\n    import llenergymeasure.cli\n"
    path = PACKAGE_ROOT / "config" / "example.py"  # never written: parsed from the string
    tree = ast.parse(source)
    names = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in imported_modules(node, path)
    ]
    assert sorted(names) == ["llenergymeasure.cli", "llenergymeasure.harness"]


def test_a_cycle_is_found_even_on_one_floor() -> None:
    edges = {"study": {"report", "config"}, "report": {"study"}, "config": set()}
    assert package_cycles(edges) == [frozenset({"study", "report"})]
