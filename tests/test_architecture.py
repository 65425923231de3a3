"""The house: each layer imports only the layers below it, no import circles, and every command parses the same
way (one `--help` style, one-line errors for a bad option)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Lowest first; a module may import its own layer and the layers before it.
LAYERS = {
    "base": ("ftl.errors", "ftl.hub", "ftl.malloc", "ftl"),
    "data": ("ftl.data",),
    "tasks": ("ftl.models", "ftl.speedups"),
    "reports": ("ftl.reports",),
    "commands": ("ftl.commands", "ftl.__main__"),
}
ORDER = list(LAYERS)


def layer_of(module: str) -> str:
    best = max((prefix for prefixes in LAYERS.values() for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(name for name, prefixes in LAYERS.items() if best in prefixes)


def ftl_imports() -> dict[str, set[str]]:
    """module -> the ftl modules it imports (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in (SRC / "ftl").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("ftl")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftl"):
                targets.add(node.module)
        graph[name] = targets
    return graph


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [(module, target) for module, targets in ftl_imports().items() for target in targets
             if ORDER.index(layer_of(target)) > ORDER.index(layer_of(module))]
    assert not wrong, wrong


def test_there_is_no_import_circle():
    graph = ftl_imports()
    modules = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {t for t in map(resolve, graph[m]) if t and t != m} for m in graph}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            assert visit(module, []) is None


COMMANDS = ("fit", "validate", "test", "predict", "compare", "export", "mcq", "sweep")
# a bad option for each: sweep passes unknown options on to its trials, so a bad value of its own is the test
BAD = {command: ["--no_such_option", "1"] for command in COMMANDS} | {"sweep": ["sweeps/cancer.yaml", "--count", "x"]}


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    from ftl.commands.cli import main

    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out = capsys.readouterr()
    return stop.value.code or 0, out.out, out.err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_one_line_error_for_a_bad_option(command, capsys):
    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0 and out.startswith("usage:")
    assert "--config" in out  # every command reads its options from a YAML too
    code, _, err = run_main(capsys, command, *BAD[command])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err[-800:]
    assert lines[0].startswith(f"python -m ftl {command}: error: "), lines[0]
    assert ("no_such_option" if command != "sweep" else "count") in lines[0]
    assert lines[1] == f"(`python -m ftl {command} --help` lists every option)"


def test_the_top_level_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "ftl", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and all(f"  {command} " in result.stdout for command in COMMANDS)
