"""The shape of the package, read from the code's own imports (ast; nothing is imported).

- no import cycle between siamjax modules (module- and function-level imports both count);
- nothing outside `siamjax/cli` imports the CLI;
- the layer order the README's "Layout" section documents holds: a module imports only its own
  layer and the layers below it;
- at most 3 top-level modules besides `__init__`/`__main__`;
- the README's "Layout" section names every package and module, and nothing that does not exist.
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "siamjax"
ENTRY_POINTS = ("siamjax", "siamjax.__main__")  # the package root re-exports; `python -m` runs the CLI


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _targets(current: str, node: ast.AST) -> list[str]:
    """siamjax modules an import statement names (a `from pkg import sub` names pkg.sub)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = current.split(".")
            if MODULES[current].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != current:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the siamjax modules it imports anywhere in its body."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _targets(name, node)}
    return graph


def _without_parent_inits(graph):
    """A package's own modules importing its `__init__` is how Python imports them, not a cycle."""
    return {a: {b for b in bs if not a.startswith(b + ".") or MODULES[b].name != "__init__.py"}
            for a, bs in graph.items()}


def find_cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def layout_rows() -> list[tuple[str, list[str]]]:
    """(folder, modules) of each row of the README's Layout table, top layer first."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.match(r"\|\s*`(siamjax/[\w/]*)`\s*\|([^|]*)\|", line)
        if match:
            rows.append((match.group(1), re.findall(r"`([\w.]+\.py)`", match.group(2))))
    assert rows, "README.md's Layout section has no `siamjax/...` table rows"
    return rows


def layer_of(module: str, folders: list[str]) -> int:
    """Index of the README layer a module belongs to (its package, else the top-level row)."""
    rel = MODULES[module].relative_to(ROOT).as_posix()
    for index, folder in enumerate(folders):
        if folder != "siamjax/" and rel.startswith(folder):
            return index
    return folders.index("siamjax/")


def test_no_import_cycles():
    cycle = find_cycle(_without_parent_inits(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_cli():
    offenders = sorted(f"{a} imports {b}" for a, bs in import_graph().items() for b in bs
                       if b.startswith("siamjax.cli") and not a.startswith("siamjax.cli") and a not in ENTRY_POINTS)
    assert not offenders, offenders


def test_layers_import_only_downwards():
    folders = [folder for folder, _ in layout_rows()]
    graph = _without_parent_inits(import_graph())
    upward = sorted(f"{a} ({folders[layer_of(a, folders)]}) imports {b} ({folders[layer_of(b, folders)]})"
                    for a, bs in graph.items() if a not in ENTRY_POINTS
                    for b in bs if layer_of(b, folders) < layer_of(a, folders))
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(upward)


def test_few_top_level_modules():
    top = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 3, top


def test_readme_layout_matches_the_tree():
    rows = layout_rows()
    named_folders = [folder for folder, _ in rows]
    packages = sorted(f"{p.parent.relative_to(ROOT).as_posix()}/" for p in PKG.glob("*/__init__.py"))
    assert sorted(f for f in named_folders if f != "siamjax/") == packages, "packages vs README Layout"
    for folder, named in rows:
        actual = sorted(p.name for p in (ROOT / folder).glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
        assert sorted(named) == actual, f"{folder}: README names {sorted(named)}, the folder holds {actual}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_stay_short(module):
    """No function in siamjax/ over ~60 lines (a long one mixes jobs; split it)."""
    tree = ast.parse(MODULES[module].read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 65]
    assert not long, long
