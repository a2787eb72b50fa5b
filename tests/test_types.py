"""pyright (configured in pyproject.toml: basic mode over paligemma/) reports no error."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~20 s: pyright reads the package and the stubs and sources of every library it imports
def test_pyright_reports_no_error():
    # The pip package's CLI (it fetches pyright from npm on its first run); --pythonpath: the libraries of this
    # interpreter, not of whichever python comes first on PATH.
    command = [sys.executable, "-m", "pyright", "--project", str(ROOT), "--pythonpath", sys.executable]
    found = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr
