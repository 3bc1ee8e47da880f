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
So do imports by name: a string naming a module of the package (``"llenergymeasure.x.y"`` or
``"llenergymeasure.x.y:Name"``, as in ``importlib.import_module("...")``, ``__init__``'s lazy
table or ``python -m``), the static prefix of an f-string given to ``import_module`` /
``__import__``, and the catalogue's ``EngineSpec.engine_class`` paths, which count as imports by
the engine factory that imports them. ``import llenergymeasure`` (or ``from llenergymeasure
import name``) imports the package's ``__init__`` (floor 6).
Between packages the dependencies must also form no cycle, even on one floor, and modules must
not import each other in a circle (known cycles are listed with their reason and may only go).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
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
    "signals": 0,
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


# Modules whose module-path strings another module imports: the strings count as imports by that
# module (the catalogue only names engine classes; the factory imports them).
STRINGS_IMPORTED_BY: dict[str, str] = {
    "llenergymeasure.config.catalogue": "llenergymeasure.engines.factory",
}

# Module-path strings that name a program to run in another process (``python -m``), not an
# import: the module depends on it being there, but does not load it.
RUN_NOT_IMPORTED: dict[str, str] = {
    "llenergymeasure.runners.container_entry": "runners.docker runs it in the container",
}

# Modules that call ``import_module``/``__import__`` with a name known only at run time, and where
# the names come from. A new such call must be listed (and its names seen by the checks).
DYNAMIC_IMPORTS: dict[str, str] = {
    "llenergymeasure": "the lazy table _LAZY: module-path strings of the same module",
    "llenergymeasure.engines.factory": "EngineSpec.engine_class (see STRINGS_IMPORTED_BY)",
    "llenergymeasure.engines.registry": "EngineSpec.import_module: the engine's own library",
}

# Third-party modules that ``import llenergymeasure`` must not load (heavy or optional).
HEAVY_MODULES = ("torch", "transformers", "vllm", "tensorrt_llm")

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


_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_IMPORT_FUNCTIONS = ("import_module", "__import__")


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _static_prefix(node: ast.JoinedStr) -> str | None:
    """The module named by an f-string's leading text: ``f"a.b.{x}"`` and ``f"a.b.c{x}"`` give
    ``a.b`` (a partly written last part is dropped)."""
    first = node.values[0] if node.values else None
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    text = first.value
    if len(node.values) > 1:
        text = text[:-1] if text.endswith(".") else text.rpartition(".")[0]
    return text if _DOTTED.fullmatch(text) or text == TOP else None


def module_path_strings(tree: ast.AST) -> list[tuple[int, str, str]]:
    """``(line, module name, source text)`` of every module-path string of this package: a
    string constant ``"llenergymeasure.x[.y][:Name]"`` anywhere, and the static prefix of an
    f-string given to ``import_module``/``__import__``."""
    found = []
    # the text parts of f-strings are not names on their own
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.partition(":")[0]
            if (
                id(node) not in parts
                and name.startswith(TOP + ".")
                and _DOTTED.fullmatch(name)
                and name not in RUN_NOT_IMPORTED
            ):
                found.append((node.lineno, name, repr(node.value)))
        elif isinstance(node, ast.Call) and _called_name(node) in _IMPORT_FUNCTIONS:
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.JoinedStr):
                prefix = _static_prefix(arg)
                if prefix is not None and prefix.split(".")[0] == TOP:
                    found.append((node.lineno, prefix, ast.unparse(node)))
    return found


def dynamic_import_calls(tree: ast.AST) -> list[str]:
    """``import_module``/``__import__`` calls whose name is neither a string nor an f-string with
    a static prefix (where it comes from must be known: ``DYNAMIC_IMPORTS``)."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) in _IMPORT_FUNCTIONS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                continue
            if isinstance(arg, ast.JoinedStr) and _static_prefix(arg) is not None:
                continue
            calls.append(ast.unparse(node))
    return calls


def imports_in(tree: ast.AST, path: Path, modules: set[str]) -> list[tuple[int, str, str]]:
    """``(line, absolute module name, source text)`` of every import of ``tree`` (the module at
    ``path``): statements, and module-path strings. ``llenergymeasure`` itself is the package's
    ``__init__``; a name below a module lands in that module."""
    found = []
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
        found += [(node.lineno, name, ast.unparse(node)) for name in names]
    found += module_path_strings(tree)
    return [(line, name, text) for line, name, text in found if name.split(".")[0] == TOP]


def nearest_module(name: str, modules: set[str]) -> str:
    """The module a dotted import name lands in (``a.b.func`` -> ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def package_of_module(name: str) -> str:
    """Floor key of a module name: its top package, ``__init__`` for ``llenergymeasure``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, tree: ast.AST, modules: set[str]) -> list[Import]:
    """Every internal import of the module at ``path`` (see ``imports_in``), attributed to the
    module that really imports it (``STRINGS_IMPORTED_BY``)."""
    importer = module_name(path)
    strings = {(line, text) for line, _, text in module_path_strings(tree)}
    found = []
    for line, name, text in imports_in(tree, path, modules):
        source_module = importer
        if (line, text) in strings:
            source_module = STRINGS_IMPORTED_BY.get(importer, importer)
        found.append(
            Import(
                file=path,
                line=line,
                source=package_of_module(source_module),
                target=package_of_module(name),
                statement=text,
                source_module=source_module,
                target_module=nearest_module(name, modules),
            )
        )
    return found


def internal_imports() -> list[Import]:
    modules = all_modules()
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += imports_of(path, tree, modules)
    return found


def upward(imports: list[Import]) -> list[str]:
    """The imports from a higher floor, one line each."""
    return [
        f"{imp.where()}: {imp.source} (floor {FLOORS[imp.source]}) imports {imp.target} "
        f"(floor {FLOORS[imp.target]}): `{imp.statement}`"
        for imp in imports
        if imp.source in FLOORS and imp.target in FLOORS and FLOORS[imp.target] > FLOORS[imp.source]
    ]


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
    found = upward(internal_imports())
    assert not found, "imports from a higher floor:\n" + "\n".join(found)


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


def _imports_of_source(source: str, path: Path) -> list[Import]:
    """The checks' view of ``source`` as if it were the module at ``path`` (never written)."""
    modules = all_modules() | {module_name(path)}
    return imports_of(path, ast.parse(source), modules)


def test_the_checks_see_the_package_itself_and_imports_by_name() -> None:
    source = (
        "import importlib\n"
        "import llenergymeasure\n"
        "from llenergymeasure import run_experiment\n"
        "def f(name):\n"
        "    importlib.import_module('llenergymeasure.cli.app')\n"
        "    __import__(f'llenergymeasure.study.{name}')\n"
        "    return import_module(f'llenergymeasure.harness.orch{name}')\n"
        "LAZY = {'report': ('llenergymeasure.report.html', 'render')}\n"
        "RUNNER = 'llenergymeasure.runners.docker:DockerRunner'\n"
        "PROSE = 'llenergymeasure.engines are lazy'  # not a module path\n"
    )
    path = PACKAGE_ROOT / "config" / "example.py"  # never written: parsed from the string
    imports = _imports_of_source(source, path)
    assert sorted((imp.target, imp.target_module) for imp in imports) == [
        ("__init__", "llenergymeasure"),
        ("__init__", "llenergymeasure"),
        ("cli", "llenergymeasure.cli.app"),
        ("harness", "llenergymeasure.harness"),
        ("report", "llenergymeasure.report.html"),
        ("runners", "llenergymeasure.runners.docker"),
        ("study", "llenergymeasure.study"),
    ]
    # every one of them is an import from a higher floor than config's
    assert len(upward(imports)) == len(imports)


def test_engine_class_paths_of_the_catalogue_count_as_imports_by_the_factory() -> None:
    catalogue = PACKAGE_ROOT / "config" / "catalogue.py"
    seen = [imp for imp in internal_imports() if imp.file == catalogue and "engines" in imp.target]
    assert {imp.target_module for imp in seen} >= {
        "llenergymeasure.engines.pytorch.engine",
        "llenergymeasure.engines.tensorrt.engine",
    }
    assert {imp.source_module for imp in seen} == {"llenergymeasure.engines.factory"}
    # and the factory is the module that imports them, by name
    factory = PACKAGE_ROOT / "engines" / "factory.py"
    calls = dynamic_import_calls(ast.parse(factory.read_text(encoding="utf-8")))
    assert calls == ["importlib.import_module(module_name)"]
    # without the attribution they would be config (floor 1) importing engines (floor 2)
    source = 'PATH = "llenergymeasure.engines.pytorch:PyTorchBackend"\n'
    assert upward(_imports_of_source(source, PACKAGE_ROOT / "config" / "example.py"))


def test_module_path_strings_name_modules_that_exist() -> None:
    modules = all_modules()
    gone = sorted(set(RUN_NOT_IMPORTED) - modules)
    assert not gone, f"RUN_NOT_IMPORTED names modules that are gone: {gone}"
    stale = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {text}"
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        for line, name, text in module_path_strings(ast.parse(path.read_text(encoding="utf-8")))
        if name not in modules
    ]
    assert not stale, "module-path strings naming no module (moved or renamed?):\n" + "\n".join(
        stale
    )


def test_every_import_by_a_run_time_name_is_accounted_for() -> None:
    calls = {
        module_name(path): found
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        if (found := dynamic_import_calls(ast.parse(path.read_text(encoding="utf-8"))))
    }
    unknown = {m: c for m, c in calls.items() if m not in DYNAMIC_IMPORTS}
    assert not unknown, (
        f"import_module/__import__ of a run-time name: add the module to DYNAMIC_IMPORTS in "
        f"{__file__} saying where its names come from (and make the checks see them): {unknown}"
    )
    gone = sorted(set(DYNAMIC_IMPORTS) - set(calls))
    assert not gone, f"no longer imports by a run-time name, remove from DYNAMIC_IMPORTS: {gone}"


def test_the_package_init_imports_only_the_lowest_floor_at_import_time() -> None:
    """What ``import llenergymeasure`` runs: the ``__init__``'s module-level imports (not its
    lazy table or ``TYPE_CHECKING`` block) are floor-0 modules."""
    init = PACKAGE_ROOT / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    eager = [
        name
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in imported_modules(node, init)
        if name.split(".")[0] == TOP
    ]
    assert eager, "the checks no longer see __init__'s imports"
    above = [name for name in eager if FLOORS[package_of_module(name)] > 0]
    assert not above, f"`import llenergymeasure` imports above floor 0: {above}"


def test_importing_the_package_loads_no_heavy_library_and_only_floor_0_modules() -> None:
    code = "import json, sys\nimport llenergymeasure\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    heavy = [m for m in HEAVY_MODULES if m in loaded]
    assert not heavy, f"`import llenergymeasure` imports {heavy}"
    ours = [m for m in loaded if m.split(".")[0] == TOP]
    assert TOP in ours
    above = [m for m in ours if m != TOP and FLOORS[package_of_module(m)] > 0]
    assert not above, f"`import llenergymeasure` loads modules above floor 0: {above}"
