"""Write docs/configuration.md from the settings dataclasses and conf/config.yaml (and conf/eval.yaml's own keys).

    python docs/gen_config_reference.py          # rewrites docs/configuration.md

Each field's meaning is what the code says of it: the sentences of its class docstring that name it (``name``),
then its trailing comment in the class body. ``NOTES`` fills in the fields the code says nothing about; a field
that gains a comment or a docstring sentence must lose its note (tests/test_docs.py checks both ways). YAML keys
take their meaning from the comments above them and after them. Imports from paligemma only; edits nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path

import yaml

from paligemma.data.settings import DataSettings
from paligemma.model.build import ModelSettings
from paligemma.model.lora import LoraSettings
from paligemma.training.optim import OptimSettings
from paligemma.training.scoring import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration.md"
COMMAND = "python docs/gen_config_reference.py"

# (config key, class, where it is defined), in the order of the page
SETTINGS = [
    ("model", ModelSettings, "paligemma/model/build.py"),
    ("data", DataSettings, "paligemma/data/settings.py"),
    ("lora", LoraSettings, "paligemma/model/lora.py"),
    ("optim", OptimSettings, "paligemma/training/optim.py"),
    ("generation", GenerationSettings, "paligemma/training/scoring.py"),
]

# Meanings of the fields whose class neither names them in its docstring nor comments them.
NOTES = {
    "model.train_vision": "Train the SigLIP vision tower too (needs `lora=null`).",
    "model.train_projector": "Train the projector fully; with LoRA it is saved with the adapter.",
    "model.gradient_checkpointing": "Recompute each decoder layer in the backward pass instead of keeping its "
    "activations.",
    "data.task": "`vqa`, `caption`, `prefix_suffix` or `detection`: the task's prompt, columns and metric "
    "(paligemma/data/tasks.py).",
    "data.question_column": "VQA: the question.",
    "data.train_split": "The split to train on, in load_dataset's split syntax.",
    "data.val_split": "The split to validate on, in load_dataset's split syntax.",
    "data.batch_size": "Rows per training batch (and per validation batch when `val_batch_size` is null).",
    "data.seed": "Seeds the shuffle and the reference each row draws per epoch.",
    "lora.r": "The rank of each LoRA update.",
    "lora.alpha": "LoRA's scale numerator: updates are scaled by `alpha / r`.",
    "lora.target_modules": "The decoder's linear layers that get LoRA (the vision tower never does).",
    "optim.weight_decay": "AdamW's decoupled weight decay.",
    "optim.warmup_ratio": "The share of the optimizer steps spent warming up linearly.",
    "optim.min_lr_ratio": "Where the cosine decay ends, as a share of `lr`.",
    "optim.betas": "AdamW's betas.",
}


# ---- the dataclasses ----


def field_comments(cls) -> dict[str, str]:
    """Each field's comments in the class body: the comment lines right above it and the one after it."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    lines = {node.target.id: node.lineno for node in body if isinstance(node, ast.AnnAssign)}
    comments: dict[int, str] = {}
    own_line: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if text and not text.startswith("fmt:") and not text.startswith("noqa"):
                comments[token.start[0]] = text
                if not token.line[: token.start[1]].strip():
                    own_line.add(token.start[0])
    found = {}
    for name, line in lines.items():
        above, n = [], line - 1
        while n in own_line:
            above.insert(0, comments[n])
            n -= 1
        after = [comments[line]] if line in comments and line not in own_line else []
        if above or after:
            found[name] = " ".join(above + after)
    return found


def docstring_sentences(cls) -> list[str]:
    """The class docstring as sentences (lines joined; a path broken after "/" joined back)."""
    text = re.sub(r"/\n\s*", "/", inspect.getdoc(cls) or "")
    text = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.)])\s+(?=``|[A-Z\"])", text) if s]


def named_fields(sentence: str, names: list[str]) -> list[list[str]]:
    """The fields a sentence names in double backticks (``name``, ``name=...``, ``max_*_samples``), one group per
    name written, in order."""
    groups, seen = [], set()
    for match in re.finditer(r"``([\w*]+)(?:=[^`]*)?``", sentence):
        group = [name for name in fnmatch.filter(names, match.group(1)) if name not in seen]
        if group:
            groups.append(group)
            seen.update(group)
    return groups


def docstring_meanings(cls) -> dict[str, list[str]]:
    """Per field, the docstring sentences that name it first; a field named only after another one in a sentence
    points to that one ("see ...")."""
    names = [f.name for f in dataclasses.fields(cls)]
    first: dict[str, list[str]] = {n: [] for n in names}
    see: dict[str, list[str]] = {n: [] for n in names}
    for sentence in docstring_sentences(cls):
        groups = named_fields(sentence, names)
        if not groups:
            continue
        for name in groups[0]:
            first[name].append(sentence)
        for name in (n for group in groups[1:] for n in group):
            see[name].append(groups[0][0])
    meanings = {n: first[n] for n in names if first[n]}
    for name in names:
        if name not in meanings and see[name]:
            meanings[name] = ["See " + ", ".join(f"``{other}``" for other in dict.fromkeys(see[name])) + "."]
    return meanings


def docstring_intro(cls) -> str:
    """The docstring sentences that name no field."""
    names = [f.name for f in dataclasses.fields(cls)]
    return " ".join(s for s in docstring_sentences(cls) if not named_fields(s, names))


def documented_by_code(key: str, cls) -> bool:
    name = key.split(".", 1)[1]
    return name in field_comments(cls) or name in docstring_meanings(cls)


def markdown_text(text: str) -> str:
    """Code text as Markdown: ``x`` -> `x`; angle brackets and table pipes escaped outside code spans."""
    parts = text.replace("``", "`").split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts)


def yaml_value(value) -> str:
    """A default as the YAML (Hydra) value that sets it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{yaml_value(field.default)}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{yaml_value(field.default_factory())}`"
    return "required"


def type_of(field: dataclasses.Field) -> str:
    annotation = field.type if isinstance(field.type, str) else inspect.formatannotation(field.type)
    return " or ".join(f"`{part.strip()}`" for part in annotation.split(" | "))


def settings_section(key: str, cls, where: str) -> list[str]:
    comments, doc = field_comments(cls), docstring_meanings(cls)
    lines = [f"## `{key}.*`: {cls.__name__}", "", f"`{cls.__name__}` in `{where}`.", ""]
    if intro := docstring_intro(cls):
        lines += [markdown_text(intro), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        parts = [*doc.get(field.name, []), *([comments[field.name]] if field.name in comments else [])]
        meaning = " ".join(parts) or NOTES.get(f"{key}.{field.name}", "")
        meaning = re.sub(r"^See ``(\w+)``", rf"See ``{key}.\1``", meaning)
        row = [f"`{key}.{field.name}`", type_of(field), default_of(field), markdown_text(meaning)]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


# ---- the YAML files ----


def yaml_comments(path: Path) -> dict[str, str]:
    """Per dotted key of a YAML file (two levels), its comments: the block right above it (when it follows a blank
    line, a key of its own level or the file's start) and the one after it on its line."""
    comments: dict[str, str] = {}
    block: list[str] = []
    parent = None
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            block = []
            continue
        match = re.match(r"^( *)([\w-]+):(.*)$", raw)
        if match is None or raw.lstrip().startswith("-"):
            block = []
            continue
        indent, name, rest = match.groups()
        if not indent:
            parent, key = name, name
        elif parent is not None and len(indent) == 2:
            key = f"{parent}.{name}"
        else:
            block = []
            continue
        after = rest.split("#", 1)[1].strip() if "#" in rest else ""
        text = " ".join([*block, after]).strip()
        if text:
            comments[key] = text
        block = []
    return comments


def leaf_keys(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out += leaf_keys(value, key + ".")
        else:
            out.append((key, value))
    return out


def meaning_of(key: str, comments: dict[str, str]) -> str:
    """A key's comments, after those of the key it sits under."""
    parts = [comments[k] for k in (key.split(".")[0], key) if k in comments]
    return "; ".join(dict.fromkeys(parts))


def group_options(group: str) -> str:
    options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    return ", ".join(f"`{o}`" for o in options)


def groups_section(config: dict, comments: list[str]) -> list[str]:
    lines = [
        "## Config groups",
        "",
        "`conf/config.yaml`'s defaults list: pick an option of a group with `group=option` "
        "(`experiment=null` and `hparams_search=null` select none).",
        "",
        "| group | default | options | meaning |",
        "|---|---|---|---|",
    ]
    for entry, comment in zip(config["defaults"], comments, strict=True):
        if not isinstance(entry, dict):
            continue
        ((group, default),) = entry.items()
        row = [f"`{group}`", f"`{yaml_value(default)}`", group_options(group), markdown_text(comment)]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def defaults_comments(path: Path) -> list[str]:
    """The trailing comment of each entry of the defaults list, in order."""
    out, inside = [], False
    for raw in path.read_text().splitlines():
        if raw.startswith("defaults:"):
            inside = True
            continue
        if inside and raw.startswith("  - "):
            out.append(raw.split("#", 1)[1].strip() if "#" in raw else "")
        elif inside and raw.strip() and not raw.startswith(" "):
            break
    return out


def keys_table(keys: list[tuple[str, object]], comments: dict[str, str]) -> list[str]:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, value in keys:
        row = [f"`{key}`", f"`{yaml_value(value)}`", markdown_text(meaning_of(key, comments))]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def top_level_section() -> list[str]:
    path = ROOT / "conf" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    keys = [(k, v) for k, v in leaf_keys(config) if k != "defaults"]
    lines = groups_section(config, defaults_comments(path))
    lines += ["## Other keys of `conf/config.yaml`", ""]
    lines += keys_table(keys, yaml_comments(path))
    eval_path = ROOT / "conf" / "eval.yaml"
    evaluation = yaml.safe_load(eval_path.read_text())
    own = [(k, v) for k, v in leaf_keys(evaluation) if k != "defaults" and k.split(".")[0] not in config]
    lines += [
        "## evaluate.py's own keys (`conf/eval.yaml`)",
        "",
        "`conf/eval.yaml` composes the same `model`, `data`, `trainer`, `logger`, `paths` and `hydra` groups and "
        "`generation.*`; these keys are its own.",
        "",
    ]
    return lines + keys_table(own, yaml_comments(eval_path))


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the settings dataclasses and conf/. Do not edit by hand. -->",
        "",
        "`python train.py` composes `conf/config.yaml`, `python evaluate.py` `conf/eval.yaml`; any key below is "
        "set on the command line as `key=value`. The `model.*`, `data.*`, `lora.*`, `optim.*` and `generation.*` "
        "keys are typed: a misspelt key or a value of the wrong type stops the run, naming it. The defaults are "
        "the dataclasses'; the files of `conf/model/` and `conf/data/` set only what differs in their own group, "
        "those of `conf/experiment/` in any, and `conf/config.yaml` gives one group's keys another's values "
        "(`optim.lr: ${model.lr}`, `data.processor_path: ${model.path}`; below). "
        "`lora=null` trains the whole decoder instead of LoRA.",
        "",
    ]
    for key, cls, where in SETTINGS:
        lines += settings_section(key, cls, where)
    lines += top_level_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
