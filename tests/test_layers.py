"""The package's layers: model <- data <- training, read from the imports of every file."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "paligemma"
# what each layer may not import (top-level module names or paligemma subpackages)
FORBIDDEN = {
    "model": {"lightning", "pytorch_lightning", "hydra", "omegaconf", "datasets", "wandb", "transformers",
              "paligemma.data", "paligemma.training", "paligemma.metrics"},
    "data": {"hydra", "omegaconf", "wandb", "paligemma.training"},
    "training": set(),
}  # fmt: skip
LEAVES = ["errors.py", "metrics.py"]
# optional dependencies -> the one file that imports each, inside functions only (the model layer loads without it)
OPTIONAL = {"bitsandbytes": "model/quantize.py"}  # import nothing of the project: every layer may use them


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (function-level imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(path: Path, forbidden: set[str]) -> list[str]:
    return sorted(
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files
    found = {str(f.relative_to(PACKAGE)): violations(f, FORBIDDEN[layer]) for f in files}
    assert {f: v for f, v in found.items() if v} == {}


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_the_project(leaf):
    assert [n for n in imported_modules(PACKAGE / leaf) if n.startswith("paligemma")] == []


def test_optional_dependencies_are_imported_lazily_by_their_one_file():
    for path in PACKAGE.rglob("*.py"):
        top_level = ast.parse(path.read_text()).body
        for dependency, owner in OPTIONAL.items():
            found = violations(path, {dependency})
            if path == PACKAGE / owner:
                assert found and not any(
                    isinstance(n, (ast.Import, ast.ImportFrom)) and dependency in ast.unparse(n)
                    for n in top_level
                ), f"{owner} must import {dependency} inside a function"
            else:
                assert found == [], f"{path.relative_to(PACKAGE)} imports {dependency}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from paligemma.training.module import X\n    import lightning as L\n")
    assert violations(bad, FORBIDDEN["model"]) == [
        "lightning",
        "paligemma.training.module",
        "paligemma.training.module.X",
    ]


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_the_model_layer_loads_without_the_training_stack():
    code = (
        "import sys, paligemma.model, paligemma.model.generation, paligemma.model.lora;"
        "print(sorted(m for m in ('lightning', 'hydra', 'omegaconf', 'datasets', 'wandb', 'paligemma.data',"
        " 'paligemma.training') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_the_config_checks_load_without_peft_or_lightning():
    """train.py composes and checks the config before it reads anything: a config error comes in seconds."""
    code = (
        "import sys, paligemma.training.configs, paligemma.training.checks;"
        "print(sorted(m for m in ('peft', 'lightning', 'transformers', 'datasets', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
