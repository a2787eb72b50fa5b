"""The docs cannot rot: docs/configuration.md is what docs/gen_config_reference.py writes from the code, and every
``python train.py ...`` / ``python evaluate.py ...`` command written in README.md, CONTRIBUTING.md and docs/*.md
composes with Hydra as the entry script would compose it (compose only: nothing runs, nothing is read)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from paligemma.training.configs import register_configs

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRIES = {"train.py": "config", "evaluate.py": "eval"}  # script -> the config its @hydra.main composes
REGENERATE = "python docs/gen_config_reference.py"
# config groups served by Hydra plugins -> the plugin package (the [sweep] and [slurm] extras, both in .[dev])
PLUGINS = {"hydra/launcher": "hydra_plugins.hydra_submitit_launcher", "hparams_search": "hydra_plugins.hydra_optuna_sweeper"}  # fmt: skip

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`([^`]+)`")
PLACEHOLDER = re.compile(r"<[^<>\n]*>")  # <date>, <run>, <your overrides>
SHELL_OPERATORS = set(";&|()<>")
ENTRY = re.compile(r"\bpython3? (train|evaluate)\.py\b")


def generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "docs" / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the configuration reference ----


def test_the_configuration_reference_is_what_the_generator_writes():
    written, generated = (ROOT / "docs" / "configuration.md").read_text(), generator().render()
    if written != generated:
        diff = difflib.unified_diff(
            written.splitlines(), generated.splitlines(), "written", "generated", lineterm=""
        )
        pytest.fail(
            f"docs/configuration.md is out of date: run `{REGENERATE}`\n" + "\n".join(list(diff)[:40]),
            pytrace=False,
        )


def test_the_generator_notes_only_the_fields_the_code_leaves_undocumented():
    gen = generator()
    classes = {key: cls for key, cls, _ in gen.SETTINGS}
    for key in gen.NOTES:
        cls = classes[key.split(".")[0]]
        assert key.split(".", 1)[1] in {f.name for f in dataclasses.fields(cls)}, (
            f"NOTES: {cls.__name__} has no {key}"
        )
        assert not gen.documented_by_code(key, cls), (
            f"{key} is documented in the code now: drop it from NOTES"
        )
    silent = [
        f"{key}.{f.name}"
        for key, cls, _ in gen.SETTINGS
        for f in dataclasses.fields(cls)
        if not gen.documented_by_code(f"{key}.{f.name}", cls) and f"{key}.{f.name}" not in gen.NOTES
    ]
    assert not silent, (
        f"no meaning for {silent}: comment the field in its dataclass (then run `{REGENERATE}`)"
    )


# ---- the commands ----


@dataclass(frozen=True)
class Command:
    path: Path
    line: int
    text: str  # as written, continuation lines joined
    script: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the code of a Markdown file: each line of a fenced block, with backslash
    continuations joined onto the line they start on, and each inline code span, also one that a line break
    splits (it starts on the line given)."""
    found, in_block, pending, paragraph = [], False, None, []
    lines = path.read_text().splitlines()
    for number, line in enumerate([*lines, ""], start=1):
        if in_block or FENCE.match(line) or not line.strip():  # a paragraph ends: its inline code
            text = " ".join(text for _, text in paragraph)
            starts = list(itertools.accumulate(len(text) + 1 for _, text in paragraph))
            for match in INLINE_CODE.finditer(text):
                found.append((paragraph[sum(s <= match.start() for s in starts)][0], match.group(1)))
            paragraph = []
        if FENCE.match(line):
            in_block, pending = not in_block, None
            continue
        if not in_block:
            if line.strip():
                paragraph.append((number, line.strip()))
            continue
        start, text = (pending[0], f"{pending[1]} {line.strip()}") if pending else (number, line)
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1].rstrip())
            continue
        pending = None
        found.append((start, text))
    return found


def without_placeholders(text: str) -> str:
    """A placeholder standing alone (``<your overrides>``) stands for arguments: it goes; one inside a value
    (``runs/<date>/adapter``) becomes a plain word."""

    def replace(match: re.Match) -> str:
        start, end = match.span()
        alone = (start == 0 or text[start - 1].isspace()) and (end == len(text) or text[end].isspace())
        return "" if alone else re.sub(r"\W+", "_", match.group()[1:-1]).strip("_")

    return PLACEHOLDER.sub(replace, text)


def shell_words(text: str) -> list[str]:
    """The words a POSIX shell would pass: quotes removed, ``# comments`` dropped, operators (&&, |, ;) their own."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def commands_in(path: Path) -> list[Command]:
    found = []
    for line, text in code_lines(path):
        if not ENTRY.search(text):
            continue
        words = shell_words(without_placeholders(text))
        for i, word in enumerate(words[:-1]):
            if re.fullmatch(r"python3?", word) and words[i + 1] in ENTRIES:
                args = itertools.takewhile(lambda w: not set(w) <= SHELL_OPERATORS, words[i + 2 :])
                found.append(Command(path, line, " ".join(text.split()), words[i + 1], tuple(args)))
    return found


COMMANDS = [command for path in DOCS for command in commands_in(path)]


def override_lists(command: Command) -> list[list[str]]:
    """The overrides each job of the command composes: one list, or, for a multirun, one per combination of its
    sweeps' values. ``...`` stands for more arguments and goes."""
    args = [a for a in command.args if a not in ("-m", "--multirun", "...")]
    unknown = [a for a in args if a.startswith("-")]
    if unknown:
        raise ValueError(f"{unknown[0]} is no option of {command.script} that this test knows")
    parsed = OverridesParser.create().parse_overrides(args)
    multirun = any(a in ("-m", "--multirun") for a in command.args)
    multirun = multirun or any(
        o.key_or_group == "hparams_search" and o.value() for o in parsed
    )  # MULTIRUN mode
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if multirun and o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    return [list(combination) for combination in itertools.product(*choices)]


@functools.cache
def compose_error(config_name: str, overrides: tuple[str, ...]) -> str | None:
    """Why Hydra cannot compose ``config_name`` with ``overrides`` (one line), or None."""
    try:
        compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except Exception as error:
        message = " ".join(str(error).split("Config search path:")[0].split())  # not Hydra's internals
        return f"{type(error).__name__}: {message[:500]}"
    return None


@pytest.fixture(scope="module")
def conf_dir():
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield


def test_the_docs_hold_commands_to_check():
    scripts = {c.script for c in COMMANDS}
    assert len(COMMANDS) >= 30 and scripts == set(ENTRIES), f"{len(COMMANDS)} commands found, for {scripts}"
    assert commands_in(ROOT / "README.md"), "README.md's commands were not found"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.path.relative_to(ROOT)}:{c.line}")
def test_each_documented_command_composes(command, conf_dir):
    try:
        jobs, problem = override_lists(command), None
    except Exception as error:
        jobs, problem = [], f"does not parse: {' '.join(str(error).split())}"
    for group, package in PLUGINS.items():
        chosen = any(o.split("=")[0].lstrip("+~") == group for job in jobs for o in job)
        if chosen and importlib.util.find_spec(package) is None:
            pytest.skip(f"{group}= needs {package}, not installed (pip install -e '.[sweep,slurm]')")
    for overrides in jobs:
        if problem is None and (error := compose_error(ENTRIES[command.script], tuple(overrides))):
            problem = f"does not compose ({error})\n  overrides: {overrides}"
    if problem is not None:
        pytest.fail(f"{command}\n  {problem}", pytrace=False)
