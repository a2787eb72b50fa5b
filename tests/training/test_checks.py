"""Bad configs, bad rows and diverging runs end train.py / evaluate.py quickly with one line naming the culprit."""

import importlib.util
import io
import json
import re
import shutil
from pathlib import Path

import peft
import pytest
import torch
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file, save_file

import train
from paligemma.errors import ConfigError, MissingFileError, RunError, find_run_error, one_line
from paligemma.model import precision
from paligemma.model.lora import load_adapter
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration
from paligemma.model.precision import resolve_dtype
from paligemma.training.checks import expand_user_paths, run_settings
from tests.helpers import (
    FAST,
    SYNTHETIC,
    assert_one_line_error,
    awkward_and_bad_rows,
    compose_config,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[2]


BAD_CONFIGS = {
    "missing model path": (["model.path=/nonexistent/paligemma"], "model.path: /nonexistent/paligemma"),
    "model dir without config.json": (["model.path={tmp}"], "has no config.json"),
    "missing data path": (["data=vqa", "data.path=/nonexistent/vqa"], "data.path: /nonexistent/vqa"),
    "data path left unset": (["data=vqa"], "data.path is required"),
    "missing checkpoint": (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path: /nonexistent/last.ckpt"),
    "unknown dtype": (["model.dtype=float64"], "model.dtype: 'float64'"),
    "truncated checkpoint": (["ckpt_path={tmp}/torn.ckpt"], "ckpt_path: {tmp}/torn.ckpt is not a whole checkpoint"),
    "no new tokens": (["generation.max_new_tokens=0"], "generation.max_new_tokens must be at least 1, got 0"),
    "no beams": (["generation.num_beams=0"], "generation.num_beams must be at least 1, got 0"),
    "unknown model key": (["+model.dtyp=float32"], "model.dtyp is not a setting of model (ModelSettings: path, dtype"),
    "quantization without LoRA": (["model.quantization=nf4", "lora=null"], "model.quantization=nf4 needs LoRA"),
    "saved adapter with new LoRA": (["model.adapter={tmp}/adapter"], "loads a saved adapter frozen (evaluate.py)"),
}  # fmt: skip


BAD_EVAL_CONFIGS = {
    "adapter config without peft_type": (["model.adapter={tmp}/adapter"], "adapter_config.json names no peft_type"),
    "no samples": (["eval.max_samples=0"], "eval.max_samples must be a whole number of at least 1, got 0"),
}  # fmt: skip


def bad_files(tmp_path: Path) -> None:
    """What BAD_CONFIGS point at: the first 4 KB of a checkpoint (a kill mid-copy), an adapter config of no PEFT
    adapter."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(4096)}}, buffer)
    (tmp_path / "torn.ckpt").write_bytes(buffer.getvalue()[:4096])
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_a_config_error_naming_the_culprit(tmp_path, tiny_checkpoint, case):
    bad_files(tmp_path)
    overrides, culprit = BAD_CONFIGS[case]
    culprit = culprit.format(tmp=tmp_path)
    overrides = [f"model.path={tiny_checkpoint}", *(o.format(tmp=tmp_path) for o in overrides)]
    cfg = compose_config(tmp_path / "run", overrides)
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        run_settings(cfg)


@pytest.mark.parametrize("case", sorted(BAD_EVAL_CONFIGS))
def test_bad_evaluate_config_is_a_config_error_naming_the_culprit(tmp_path, tiny_checkpoint, case):
    bad_files(tmp_path)
    overrides, culprit = BAD_EVAL_CONFIGS[case]
    overrides = [f"model.path={tiny_checkpoint}", *(o.format(tmp=tmp_path) for o in overrides)]
    cfg = compose_config(tmp_path / "run", overrides, config_name="eval")
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        run_settings(cfg)


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_bad_config_exits_quickly_naming_the_culprit(tmp_path, tiny_checkpoint):
    result, seconds = run_cli("train.py", ["model.path=/nonexistent/paligemma"], tmp_path)
    assert_one_line_error(result, "model.path: /nonexistent/paligemma")
    assert seconds < 60  # before the model loads: ~4 s (~14 s once the dataset is read) on a busy 2-core box


def run_error(cfg) -> str:
    """The one line train.py prints for the error that ``train.train(cfg)`` ends in (a RunError, not a bug)."""
    with pytest.raises(Exception) as caught:
        train.train(cfg)
    known = find_run_error(caught.value)
    assert known is not None, repr(caught.value)
    return one_line(known)


def test_a_column_the_dataset_lacks_is_named(tmp_path, tiny_checkpoint):
    cfg = compose_config(
        tmp_path / "run", [f"model.path={tiny_checkpoint}", "data.question_column=query", *SYNTHETIC]
    )
    assert "no column 'query' (data.question_column)" in run_error(cfg)


def broken_copy(checkpoint: Path, target: Path, fault: str) -> Path:
    """The checkpoint with a decoder its code does not implement, or a weight under a name it does not have."""
    shutil.copytree(checkpoint, target)
    if fault == "config":
        config = json.loads((target / "config.json").read_text())
        config["text_config"]["model_type"] = "gemma3"
        (target / "config.json").write_text(json.dumps(config))
    else:
        weights = load_file(target / "model.safetensors")
        weights["language_model.model.norm.scale"] = weights.pop("language_model.model.norm.weight")
        save_file(weights, target / "model.safetensors")
    return target


@pytest.mark.parametrize(
    "fault, culprit",
    [
        ("config", "text_config.model_type='gemma3' is not supported"),
        ("weights", "language_model.model.norm"),
    ],
)
def test_a_model_its_files_cannot_describe_is_a_run_error(tmp_path, tiny_checkpoint, fault, culprit):
    model = broken_copy(tiny_checkpoint, tmp_path / "model", fault)
    with pytest.raises(RunError, match=re.escape(culprit)):
        PaliGemmaForConditionalGeneration.from_pretrained(model)


def test_a_model_its_files_cannot_describe_ends_the_run_with_one_line(tmp_path, tiny_checkpoint):
    model = broken_copy(tiny_checkpoint, tmp_path / "model", "weights")
    cfg = compose_config(tmp_path / "run", [f"model.path={model}", *SYNTHETIC])
    assert "language_model.model.norm" in run_error(cfg)


def test_user_paths_are_expanded_once_for_everything_after_the_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose_config(tmp_path / "run", ["model.path='~/model'", "ckpt_path='~/run/last.ckpt'"])
    expand_user_paths(cfg)
    assert (cfg.model.path, cfg.ckpt_path) == (str(tmp_path / "model"), str(tmp_path / "run" / "last.ckpt"))
    assert cfg.data.processor_path == str(tmp_path / "model")  # ${model.path} follows
    assert cfg.data.path == "synthetic"


@pytest.mark.parametrize(
    "override, schema", [("lora.rr=3", "LoraSettings"), ("model.dtyp=float32", "ModelSettings"),
                         ("generation.max_tokens=4", "GenerationSettings")]
)  # fmt: skip
def test_unknown_key_is_rejected_by_hydra_naming_it(tmp_path, override, schema):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{key}'") as error:
        compose_config(tmp_path, [override])
    assert f"Key '{key.split('.')[1]}' not in '{schema}'" in str(error.value.__cause__)


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_evaluate_rejects_an_adapter_of_another_base(tmp_path, tiny_checkpoint, other_tiny_checkpoint):
    config = peft.LoraConfig(r=2, target_modules=r".*\.language_model\..*\.(q_proj|v_proj)")
    peft.get_peft_model(
        PaliGemmaForConditionalGeneration.from_pretrained(other_tiny_checkpoint), config
    ).save_pretrained(tmp_path / "adapter")
    overrides = [f"model.path={tiny_checkpoint}", f"model.adapter={tmp_path / 'adapter'}", *SYNTHETIC]
    result, _ = run_cli("evaluate.py", overrides, tmp_path)
    assert_one_line_error(result, f"adapter {tmp_path / 'adapter'} does not fit the base model")
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    with pytest.raises(
        MissingFileError, match=f"adapter {re.escape(str(tmp_path))} has no adapter_config.json"
    ):
        load_adapter(model, tmp_path, base=str(tiny_checkpoint))


def test_strict_bad_rows_name_the_row(tmp_path, tiny_checkpoint):
    awkward_and_bad_rows().save_to_disk(tmp_path / "data")
    overrides = [f"model.path={tiny_checkpoint}", "data=vqa", f"data.path={tmp_path / 'data'}", "data.num_workers=0",
                 "data.on_bad_sample=raise", "zero_shot=false"]  # fmt: skip
    message = run_error(compose_config(tmp_path / "run", overrides))
    assert "bad train row " in message
    row = int(message.split("bad train row ")[1].split(":")[0])
    assert row in (7, 8, 9, 10)  # corrupt image, missing image, empty answer, missing question


def test_diverging_run_stops_before_writing_nan_weights(tmp_path, tiny_checkpoint):
    overrides = [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC, "zero_shot=false", "optim.lr=1e30",
                 "optim.warmup_ratio=0", "checkpoint.every_n_steps=1"]  # fmt: skip
    message = run_error(compose_config(tmp_path / "run", overrides))
    assert (
        message.startswith("non-finite loss (nan) at step 1 (epoch 0)")
        and "optim.skip_nonfinite=true" in message
    )
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_hub_ids_pass_without_network(tmp_path):
    cfg = compose_config(tmp_path, ["model=paligemma-3b-pt-224", "data=vqav2"])
    run_settings(cfg)
    cfg = compose_config(tmp_path, ["model.path=paligemma-3b-pt-224"])  # neither a dir nor owner/name
    with pytest.raises(
        ConfigError, match="model.path: paligemma-3b-pt-224 does not exist and is not a hub id"
    ):
        run_settings(cfg)


@pytest.mark.parametrize(
    "overrides, refused_by",
    [
        ([], None),
        (
            ["trainer=fsdp", "trainer.accelerator=cpu"],
            "trainer=fsdp needs one dtype per decoder layer, and LoRA weights are float32",
        ),
        (["lora=null"], "lora=null would train base weights in bf16"),
        (["model.train_projector=true"], "model.train_projector=true would train base weights in bf16"),
    ],
)
def test_auto_dtype_on_a_native_bf16_cpu_takes_float32_where_the_run_cannot_take_bf16(
    tmp_path, tiny_checkpoint, monkeypatch, overrides, refused_by
):
    """What ``model.dtype=auto`` resolves to where the CPU has native bf16 (the detection replaced, so that this
    holds on every CPU): bfloat16, unless the run would refuse it or train base weights in it. No error either way."""
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *overrides])
    settings = run_settings(cfg)
    assert settings.bf16_refused_by == refused_by
    dtype, why = resolve_dtype(settings.model.dtype, settings.bf16_refused_by)
    assert dtype is (torch.bfloat16 if refused_by is None else torch.float32)
    assert refused_by is None or refused_by in why
    named = compose_config(
        tmp_path, [f"model.path={tiny_checkpoint}", "trainer=fsdp", "model.dtype=bfloat16"]
    )
    with pytest.raises(ConfigError, match="model.dtype=bfloat16 with trainer=fsdp"):
        run_settings(named)  # a dtype named is taken as asked, and FSDP cannot take it


MISSING_ACCELERATORS = {
    "gpu": (["trainer=gpu"], 0, "trainer.accelerator=gpu but this machine has no CUDA or Apple MPS GPU: "
                                "use trainer=cpu (or trainer=default)"),
    "ddp": (["trainer=ddp"], 0, "trainer.accelerator=gpu but this machine has no CUDA or Apple MPS GPU: use "
                                "trainer=cpu (or trainer=default), or trainer.accelerator=cpu trainer.devices=2 "
                                "trainer.precision=32-true for its ranks on the CPU"),
    "cuda": (["trainer.accelerator=cuda"], 0, "trainer.accelerator=cuda but this machine has no CUDA GPU"),
    "mps": (["trainer.accelerator=mps"], 0, "trainer.accelerator=mps but this machine has no Apple MPS GPU"),
    "tpu": (["trainer.accelerator=tpu"], 0, "has no TPU (torch_xla is not installed): use trainer=cpu"),
    "more GPUs": (["trainer=ddp", "trainer.devices=4"], 2,
                  "trainer.devices=4 but this machine has 2 GPU devices: use trainer.devices=2 or fewer"),
    "an index past the last GPU": (["trainer=gpu", "trainer.devices=[0,2]"], 2, "trainer.devices=[0, 2] but"),
    "an index past the last, as text": (["trainer=gpu", "trainer.devices='1,2'"], 2, "trainer.devices=1,2 but"),
}  # fmt: skip
FITTING_ACCELERATORS = {
    "gpu": (["trainer=gpu"], 1),
    "ddp on every GPU": (["trainer=ddp"], 2),
    "ddp on GPUs 0 and 1": (["trainer=ddp", "trainer.devices='0,1'"], 2),
    "ddp on the CPU": (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], 0),
    "auto": (["trainer.devices=1"], 0),
}


def on_a_machine_with(monkeypatch, gpus: int) -> None:
    """torch (and importlib) as they are on a machine with ``gpus`` CUDA GPUs, no Apple one and no torch_xla."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch_xla" else find_spec(name, *a)
    )


@pytest.mark.parametrize("case", sorted(MISSING_ACCELERATORS))
def test_an_accelerator_this_machine_lacks_is_a_config_error_naming_the_override(tmp_path, monkeypatch, case):
    overrides, gpus, culprit = MISSING_ACCELERATORS[case]
    on_a_machine_with(monkeypatch, gpus)
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        run_settings(compose_config(tmp_path, overrides))


@pytest.mark.parametrize("case", sorted(FITTING_ACCELERATORS))
def test_an_accelerator_this_machine_has_passes(tmp_path, monkeypatch, case):
    overrides, gpus = FITTING_ACCELERATORS[case]
    on_a_machine_with(monkeypatch, gpus)
    run_settings(compose_config(tmp_path, overrides))


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("script, trainer", [("train.py", "trainer=gpu"), ("train.py", "trainer=ddp"),
                                             ("evaluate.py", "trainer=gpu")])  # fmt: skip
def test_a_missing_gpu_ends_train_and_evaluate_in_one_line(tmp_path, monkeypatch, script, trainer):
    """docs/scaling.md's first command on a machine without a GPU (any CUDA GPU hidden; not on an Apple one)."""
    if torch.backends.mps.is_available():
        pytest.skip("an Apple GPU cannot be hidden")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result, seconds = run_cli(script, [trainer], tmp_path)
    assert_one_line_error(
        result, "trainer.accelerator=gpu but this machine has no CUDA or Apple MPS GPU: use trainer=cpu"
    )
    assert seconds < 60  # before the training stack loads


def unreadable_pictures_parquet(directory: Path) -> Path:
    """VQA parquet whose image column holds two pictures per row, the second of each not a picture."""
    import datasets

    from tests.helpers import noise, png, write_parquet

    picture, broken = {"bytes": png(noise()), "path": None}, {"bytes": b"not a png", "path": None}
    features = datasets.Features(images=datasets.Sequence(datasets.Image()), question=datasets.Value("string"),
                                 answers=[datasets.Value("string")])  # fmt: skip
    rows = {
        "images": [[picture, broken]] * 40,
        "question": ["what is it?"] * 40,
        "answers": [["noise"]] * 40,
    }
    return write_parquet(directory, {"train": (rows, features), "validation": (rows, features)})


ENTRY_ERRORS = {
    "train: truncated checkpoint": ("train.py", ["ckpt_path={tmp}/torn.ckpt"], "is not a whole checkpoint"),
    "train: every row bad": (
        "train.py",
        ["data=vqa", "data.path={tmp}/unreadable", "data.image_column=images"],
        "the first 32 rows of the train split of '{tmp}/unreadable' are all bad; row 0: image 1 of 2: "
        "UnidentifiedImageError",
    ),
    "train: clips of one frame": ("train.py", ["data=synthetic_video", "data.synthetic.num_frames=1"],
                                  "data.synthetic.num_frames must be at least 2"),
    "evaluate: adapter config without peft_type": ("evaluate.py", ["model.adapter={tmp}/adapter"], "names no peft_type"),
    "evaluate: unknown split": ("evaluate.py", ["eval.split=valid"], "split 'valid': Unknown split"),
    "evaluate: truncated checkpoint": ("evaluate.py", ["ckpt_path={tmp}/torn.ckpt"], "is not a whole checkpoint"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ENTRY_ERRORS))
def test_bad_input_to_train_and_evaluate_ends_in_one_line_naming_the_culprit(tmp_path, tiny_checkpoint, case):
    bad_files(tmp_path)
    unreadable_pictures_parquet(tmp_path / "unreadable")
    script, overrides, culprit = ENTRY_ERRORS[case]
    data = [] if "data=vqa" in overrides else SYNTHETIC
    overrides = [f"model.path={tiny_checkpoint}", *data, *(o.format(tmp=tmp_path) for o in overrides)]
    result, _ = run_cli(script, overrides, tmp_path)
    assert_one_line_error(result, culprit.format(tmp=tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, culprit",
    [("model.dtyp=float32", "Could not override 'model.dtyp'. To append to your config use +model.dtyp=float32 "
                            "(Key 'dtyp' not in 'ModelSettings')"),
     ("data=nosuch", "Could not find 'data/nosuch' Available options in 'data': captioning")],
)  # fmt: skip
def test_a_config_hydra_cannot_compose_is_one_line_too(tmp_path, override, culprit):
    result, seconds = run_cli("train.py", [override], tmp_path)
    assert_one_line_error(result, culprit)
