"""The layers of the code base hold: no import cycles (imports inside functions counted), transport below both apps,
the headless agent without Django. Read from the source with `ast`, so a cycle hidden in a function fails here
before it fails at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "inference", "ledger", "market", "transport", "verification", "worker_web")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an imported name lives in (a package's __init__, a module, or the module holding a name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, bool]]:
    """(project module imported, inside a function?) for every import of `module`, `if TYPE_CHECKING` ones left out."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.append((target, in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), imports inside functions included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target, _ in GRAPH[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in GRAPH:
        if module not in index:
            connect(module)
    return found


def _package_imports(package: str) -> set[str]:
    return {
        target.split(".")[0]
        for module, imports in GRAPH.items()
        if module.split(".")[0] == package
        for target, _ in imports
    } - {package}


def test_the_graph_is_read() -> None:
    """The reader finds what is there (a reader that found nothing would pass every test below)."""
    assert len(MODULES) > 80
    assert ("transport.relay", False) in GRAPH["market.orchestrator"]
    assert ("worker_web.agent.step_connection", False) in GRAPH["worker_web.agent.provider"]


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles() == []


def test_project_imports_sit_at_the_top_of_modules() -> None:
    """An import inside a function is how a cycle hides."""
    lazy = {(module, target) for module, imports in GRAPH.items() for target, inside in imports if inside}
    assert lazy == set()


@pytest.mark.parametrize(
    ("package", "never"),
    [
        ("transport", {"config", "ledger", "market", "verification", "worker_web"}),  # below both apps
        ("inference", {"config", "ledger", "market", "transport", "verification", "worker_web"}),
        ("market", {"worker_web"}),  # the provider endpoint builds on the market, not the other way round
        ("ledger", {"market", "verification", "worker_web", "transport"}),
    ],
)
def test_lower_layers_import_no_higher_one(package: str, never: set[str]) -> None:
    assert _package_imports(package) & never == set()


def test_the_headless_agent_runs_without_django() -> None:
    """A provider runs the agent with the model runtime and websockets only: importing it loads no Django, no
    Channels and none of the server's apps."""
    probe = (
        "import sys, worker_web.agent.provider, worker_web.agent.step_connection;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'channels', 'daphne', 'market', 'ledger',"
        " 'verification', 'config'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
