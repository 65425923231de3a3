"""The tests' own layout: shared helpers live in tests/helpers.py, fixtures in conftest.py, and no test file
imports another test file or conftest (importing a test module runs its collection-time code twice and makes
pytest collect its tests again under the importer's name)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            # `from .test_x import y` is relative to tests/; `from tests import test_x` names modules as well
            module = f"tests.{node.module}" if node.level and node.module else node.module or "tests"
            found.add(module)
            if module == "tests":
                found |= {f"tests.{alias.name}" for alias in node.names}
    return found


def forbidden(module: str) -> bool:
    """A test module or conftest, whether imported as `tests.test_x` or (tests/ on sys.path) as `test_x`."""
    head = module.removeprefix("tests.").split(".")[0]
    return head == "conftest" or head.startswith("test_")


def test_no_test_file_imports_another_test_file_or_conftest():
    files = sorted(TESTS.glob("test_*.py"))
    assert len(files) > 10  # the glob found the test files
    wrong = {path.name: sorted(m for m in imported_modules(path) if forbidden(m)) for path in files}
    wrong = {name: modules for name, modules in wrong.items() if modules}
    assert not wrong, f"import shared helpers from tests.helpers instead: {wrong}"


def test_the_import_check_sees_each_form_of_import(tmp_path):
    cases = {
        "from tests.test_compare import cli_args": True,
        "from tests.conftest import run_cli": True,
        "import tests.test_wandb": True,
        "from tests import test_cli": True,
        "from .test_cli import fit_args": True,
        "from . import conftest": True,
        "import conftest": True,
        "from test_cli import fit_args": True,
        "def f():\n    from tests.conftest import run_cli": True,
        "from tests.helpers import run_cli": False,
        "from ftl.models.base import TaskModule": False,
    }
    for source, bad in cases.items():
        path = tmp_path / "test_case.py"
        path.write_text(source + "\n")
        assert any(forbidden(m) for m in imported_modules(path)) == bad, source
