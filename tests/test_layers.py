"""The import graph: no circle anywhere, and the API's modules load neither the Docker SDK nor a
module that defines a Ray actor or task (they run in every replica; the executors on the nodes)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("serve_app", "executors", "cluster")
#: modules that define Ray actors or tasks, or drive Docker
NODE_SIDE = ("executors.pool", "executors.task", "executors.sandbox", "executors.engines.docker",
             "executors.engines.runsc", "executors.reaper", "serve_app.dispatch", "serve_app.launcher",
             "executors.nuget.restore", "executors.nuget.feeds")  #: the restore runs on the nodes


def module_graph() -> dict[str, set[str]]:
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
             for p in PACKAGES for f in (ROOT / p).rglob("*.py")}
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in files}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done, path = [], set(), []

    def visit(m: str) -> None:
        if m in path:
            found.append(path[path.index(m):] + [m])
            return
        if m in done:
            return
        path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(module_graph()) == []


def test_the_cycle_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_api_loads_neither_docker_nor_the_node_side():
    probe = ("import sys, serve_app.config, serve_app.models, serve_app.jobs, serve_app.plan, serve_app.agent_types, "
             "cluster.agent_types; "
             "print('\\n'.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert "docker" not in loaded
    assert loaded.isdisjoint(NODE_SIDE), sorted(loaded & set(NODE_SIDE))
