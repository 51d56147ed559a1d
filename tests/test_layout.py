"""The package layout rules (README "Layout"): layers point down only (recipes -> datamodules / callbacks ->
modules), no import circles (function-local imports count too), and paper-only machinery lives in its paper's
package under `modules/papers/`."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recipes", "modules", "datamodules", "callbacks")
# What each layer may import from the project (besides itself).
ALLOWED = {"modules": set(), "datamodules": {"modules"}, "callbacks": {"modules"},
           "recipes": {"modules", "datamodules", "callbacks"}}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: project modules it imports anywhere in its body} (a name inside a module resolves to the module)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != name and not name.startswith(found + "."):  # a package's own __init__
                    graph[name].add(found)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_planted_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert import_cycles(import_graph()) == []


def test_layers_point_down_only():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert upward == []


def test_paper_packages_are_listed_and_role_folders_hold_no_paper_module():
    from modules.papers import PAPERS

    on_disk = sorted(p.name for p in (ROOT / "modules" / "papers").iterdir() if (p / "__init__.py").is_file())
    assert sorted(PAPERS) == on_disk
    for role in ("rewards", "objectives", "rollout", "verifiers", "models"):
        stems = {p.stem for p in (ROOT / "modules" / role).glob("*.py")}
        assert not stems & set(PAPERS), f"modules/{role}/ holds paper modules {stems & set(PAPERS)}"


def test_every_paper_reward_is_found_by_name_without_importing_its_recipe():
    from modules.rewards import get_reward, list_rewards

    names = list_rewards()
    for name in ("domain_correct", "tinyv", "general_verifier", "laser_d", "nover_reasoning", "exact_structure",
                 "hybrid_correct", "stepsearch_f1", "mot_accuracy", "geli_rm", "temporal_label"):
        assert name in names
        assert callable(get_reward(name))
