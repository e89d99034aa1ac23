"""The package's layout as DESIGN.md draws it: no import circle among lora_lab's modules, the
job directory a leaf, and adapters that never import each other."""
from __future__ import annotations

import ast
from pathlib import Path

import lora_lab

PACKAGE = Path(lora_lab.__file__).parent
ADAPTERS = ("lora_lab.cli", "lora_lab.server_ext", "lora_lab.widgets")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The lora_lab modules ``path`` imports anywhere in it (in functions and under
    TYPE_CHECKING too: a deferred import still ties the two modules together)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                         for a in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_among_modules():
    graph = import_graph()
    assert len(graph) > 50 and graph["lora_lab.jobs.runner"]  # the walk saw the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_job_directory_is_a_leaf():
    graph = import_graph()
    for name in (n for n in graph if n.startswith("lora_lab.jobdir")):
        outside = {m for m in graph[name] if not m.startswith("lora_lab.jobdir")}
        # ray_jobs: a job on a Ray cluster is judged alive by Ray's word once its heartbeat lags
        assert outside <= {"lora_lab.atomic", "lora_lab.errors", "lora_lab.workspace",
                           "lora_lab.ray_jobs"}, (name, outside)


def test_the_steps_and_the_core_import_no_adapter():
    for name, imported in import_graph().items():
        mine = next((a for a in ADAPTERS if name.startswith(a)), None)
        others = {m for m in imported if any(m.startswith(a) for a in ADAPTERS if a != mine)}
        assert not others, f"{name} imports {others}"
