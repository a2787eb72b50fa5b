"""ruff (configured in pyproject.toml) passes: style, and its bans on unpickling code (torch.load, pickle)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)


def test_ruff_check_and_format_pass():
    assert ruff("check", ".").returncode == 0, ruff("check", ".").stdout
    assert ruff("format", "--check", ".").returncode == 0, ruff("format", "--check", ".").stdout


def test_ruff_refuses_code_that_unpickles(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "loads.py").write_text("import pickle\n\nimport torch\n\nstate = torch.load('x.ckpt')\n")
    found = ruff("check", "--no-cache", "--output-format=concise", "loads.py", cwd=tmp_path).stdout
    assert "TID251 `pickle` is banned" in found and "TID251 `torch.load` is banned" in found
