"""pyright (configured in pyproject.toml: basic mode over paligemma/) reports no error, and users' type checkers see
the names ``paligemma`` loads lazily as what they are."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import paligemma

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~20 s: pyright reads the package and the stubs and sources of every library it imports
def test_pyright_reports_no_error():
    found = pyright()
    assert found.returncode == 0, found.stdout + found.stderr


def pyright(*args: str) -> subprocess.CompletedProcess:
    # The pip package's CLI (it fetches pyright from npm on its first run); --pythonpath: the libraries of this
    # interpreter, not of whichever python comes first on PATH.
    command = [sys.executable, "-m", "pyright", "--project", str(ROOT), "--pythonpath", sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_each_lazy_name_is_imported_for_type_checkers_from_where_it_loads():
    tree = ast.parse((ROOT / "paligemma" / "__init__.py").read_text())
    typed = {
        alias.asname: node.module
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == paligemma._EXPORTS


@pytest.mark.slow  # ~20 s, as above
def test_users_type_checkers_see_the_lazy_names_as_their_classes():
    found = pyright(str(ROOT / "tests" / "typed_usage.py"))
    assert found.returncode == 0, found.stdout + found.stderr
