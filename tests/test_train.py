"""train.py end to end on the real Hydra config: a few steps per data config, the run dir, W&B, sweeps."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import lightning as L
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

import evaluate
import train
from paligemma.errors import NonFiniteError
from paligemma.model.precision import resolve_dtype
from paligemma.tiny import random_batch
from tests.helpers import (
    COCO_FEATURES,
    FAST,
    SYNTHETIC,
    VQAV2_FEATURES,
    awkward_and_bad_rows,
    built_run,
    coco_rows,
    compose_config,
    history,
    load_network,
    noise,
    png,
    run_group,
    vqav2_rows,
    write_clip,
    write_jsonl_dir,
    write_parquet,
)

ROOT = Path(__file__).resolve().parents[1]


LONG_ANSWER = "a red circle on the left and a blue square on the right"


def csv_rows(run: Path) -> list[dict]:
    return [row for path in run.glob("csv/*/metrics.csv") for row in csv.DictReader(path.open())]


def data_overrides(name: str, tmp_path: Path) -> list[str]:
    """Each data config on a local fixture in its hub dataset's schema (no network)."""
    if name in ("synthetic", "synthetic_captions"):
        return [f"data={name}", *SYNTHETIC]
    if name in ("vqav2", "vqa"):
        path = write_parquet(tmp_path / "vqa", {"train": (vqav2_rows(8), VQAV2_FEATURES),
                                                "validation": (vqav2_rows(4), VQAV2_FEATURES)})  # fmt: skip
        splits = ["data.train_split=train", "data.val_split=validation"]
        return [f"data={name}", f"data.path={path}", *splits]
    path = write_parquet(tmp_path / "coco", {"train": (coco_rows(8), COCO_FEATURES),
                                             "validation": (coco_rows(4), COCO_FEATURES)})  # fmt: skip
    columns = ["data.caption_column=captions"] if name == "captioning" else []
    return [f"data={name}", f"data.path={path}", *columns]


MONITORED = {"synthetic_captions": "val/cider", "captioning": "val/cider", "coco_captions": "val/cider"}


@pytest.mark.parametrize(
    "data", ["synthetic", "synthetic_captions", "vqa", "captioning", "vqav2", "coco_captions"]
)
def test_every_data_config_trains_a_few_steps(tmp_path, tiny_checkpoint, data):
    cfg = compose_config(tmp_path / "run", [f"model.path={tiny_checkpoint}", "logger=csv", *FAST,
                                            *data_overrides(data, tmp_path)])  # fmt: skip
    results = train.train(cfg)
    metric = results["monitor"]
    assert metric == MONITORED.get(data, "val/vqa_accuracy")
    assert math.isfinite(results[metric]) and f"zero_shot/{metric.removeprefix('val/')}" in results
    assert results["val/loss"] > 0 and results["data/skipped"] == 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_default_run_writes_metrics_checkpoint_adapter_and_wandb(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    cfg = compose_config(run, [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC])
    results = train.train(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == pytest.approx(results)
    kinds = {"color", "shape", "count", "position"}
    assert {f"val/vqa_accuracy/{k}" for k in kinds} | {f"zero_shot/vqa_accuracy/{k}" for k in kinds} <= set(
        saved
    )
    assert saved["data/skipped"] == 0 and saved["data/truncated"] == 0
    assert saved["train/samples_per_sec"] > 0 and saved["train/wall_seconds"] > 0
    assert saved["precision"] == resolve_dtype("auto")[1]  # model.dtype=auto: float32 on a CPU without bf16
    assert saved["model_path"] == str(tiny_checkpoint) and Path(saved["adapter_path"]) == run / "adapter"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8

    logged = history(run)
    losses = [row["train/loss"] for row in logged if "train/loss" in row]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert any("lr-AdamW" in row for row in logged)
    final = [row for row in logged if "val/vqa_accuracy" in row][-1]
    assert final["val/vqa_accuracy"] == pytest.approx(saved["val/vqa_accuracy"])
    assert any(key.startswith("val/predictions") for row in logged for key in row)
    # the pictures of the predictions are files of the offline run (wandb leaves table cells empty offline)
    logs = [row for row in logged if "val/prediction_images/count" in row]  # zero-shot and final validation
    assert len(logs) == 2 and all(
        row["val/prediction_images/count"] == 8 for row in logs
    )  # max_val_samples=8
    assert logs[0]["val/prediction_images/captions"][0].startswith("answer en ")
    assert " (references: " in logs[0]["val/prediction_images/captions"][0]
    files = [run / "wandb" / f for f in logs[0]["val/prediction_images/filenames"]]
    saved_pictures = list(run.glob("wandb/offline-run-*/files/media/images/val/prediction_images_*.png"))
    assert len(saved_pictures) == 16 and all(any(s.name == f.name for s in saved_pictures) for f in files)


def test_broken_and_awkward_rows_train_to_the_end_with_exact_counts(tmp_path, tiny_checkpoint):
    data = awkward_and_bad_rows()  # train: 7 awkward images that work, 4 broken rows; validation: 1 + 2
    long = data["train"].select([0, 0, 0]).map(lambda _: {"answers": [LONG_ANSWER]})  # 13 answer tokens
    data["train"] = datasets.concatenate_datasets([data["train"], long])
    data.save_to_disk(tmp_path / "data")
    run = tmp_path / "run"
    overrides = [f"model.path={tiny_checkpoint}", "logger=csv", *FAST, "data=vqa", f"data.path={tmp_path / 'data'}",
                 "trainer.max_steps=-1", "trainer.max_epochs=2", "data.max_length=34"]  # fmt: skip
    train.train(compose_config(run, overrides))  # prompts take 26 tokens: room for 7 answer tokens + <eos>
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["data/skipped"] == 6 and saved["data/truncated"] == 3
    assert saved["train/skipped_steps"] == 0 and (run / "adapter" / "adapter_model.safetensors").is_file()
    steps = [row for row in csv_rows(run) if row.get("train/loss")]
    assert len(steps) == 8  # 14 rows in batches of 4, twice (with seed 0, no batch is all bad)


def test_optimizer_steps_change_the_adapter_and_nothing_frozen(tmp_path, tiny_checkpoint):
    optim = ["optim.lr=1e-2", "optim.warmup_ratio=0.0"]
    datamodule, module = built_run(
        compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC, *optim])
    )
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_progress_bar=False)  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    for name, p in module.named_parameters():
        if name in trainable:
            if "lora_B" in name:  # lora_B starts at zero, so the first steps move it
                assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


@pytest.mark.parametrize("skip", [False, True], ids=["stop", "skip"])
@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_non_finite_step_stops_the_run_or_is_skipped(tmp_path, tiny_checkpoint, fault, skip):
    optim = ["optim.lr=1e-2", "optim.warmup_ratio=0.0", f"optim.skip_nonfinite={str(skip).lower()}"]
    datamodule, module = built_run(
        compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC, *optim])
    )
    broken = next(p for name, p in module.named_parameters() if "lora_B" in name)
    if fault == "loss":
        with torch.no_grad():
            broken.fill_(float("nan"))  # every loss is NaN
    else:
        broken.register_hook(lambda grad: grad * float("inf"))  # a finite loss, an overflowing backward pass
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_progress_bar=False)  # fmt: skip
    if skip:
        trainer.fit(module, datamodule=datamodule)
        assert module.skipped_steps == 3 and trainer.global_step == 3
    else:
        with pytest.raises(
            NonFiniteError, match=rf"non-finite {fault}.* at step 0 .*optim.skip_nonfinite=true"
        ):
            trainer.fit(module, datamodule=datamodule)
    for name, p in module.named_parameters():  # no step changed a weight
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, equal_nan=True)


def test_loss_falls_when_overfitting_one_batch(tmp_path, tiny_checkpoint):
    lora = ["lora.r=16", "lora.alpha=32", "lora.dropout=0.0"]
    datamodule, module = built_run(
        compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC, *lora])
    )
    with torch.no_grad():  # trained models scale up their final norm; at random init it caps |logits| below 1
        module.net.model.language_model.norm.weight.fill_(9.0)
    datamodule.setup("fit")
    inputs = datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0).inputs
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = module.net(**inputs.as_kwargs(), return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture(params=["paligemma", "paligemma2"])
def tiny_checkpoint_of_each_family(request):
    return request.getfixturevalue(
        {"paligemma": "tiny_checkpoint", "paligemma2": "tiny_gemma2_checkpoint"}[request.param]
    )


def test_adapter_loads_onto_transformers_paligemma_with_equal_logits(
    tmp_path, tiny_checkpoint_of_each_family
):
    tiny_checkpoint = tiny_checkpoint_of_each_family
    cfg = compose_config(tmp_path, [f"model.path={tiny_checkpoint}", "logger=none", "zero_shot=false",
                                    *FAST, *SYNTHETIC, "optim.lr=5e-2", "optim.warmup_ratio=0"])  # fmt: skip
    train.train(cfg)
    ours = load_network(tiny_checkpoint)
    ours = peft.PeftModel.from_pretrained(ours, tmp_path / "adapter").eval()
    hf = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        tiny_checkpoint, attn_implementation="eager"
    )
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    datamodule = built_run(cfg)[0]
    datamodule.setup("fit")
    batch = datamodule.on_before_batch_transfer(next(iter(datamodule.val_dataloader())), 0).inputs.as_kwargs()
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
        plain = load_network(tiny_checkpoint)(**batch)
    mask = batch["attention_mask"].bool()
    assert (ref.logits - out.logits)[mask].abs().max() < 1e-4
    assert (plain.logits - out.logits)[mask].abs().max() > 1e-3  # the adapter does something


def test_transformers_trained_adapter_loads_onto_ours(tmp_path, tiny_checkpoint_of_each_family):
    tiny_checkpoint = tiny_checkpoint_of_each_family
    hf = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        tiny_checkpoint, attn_implementation="eager"
    )
    config = peft.LoraConfig(r=4, target_modules=r".*\.language_model\..*\.(q_proj|v_proj|down_proj)",
                             init_lora_weights=False)  # fmt: skip
    hf = peft.get_peft_model(hf, config).eval()
    hf.save_pretrained(tmp_path / "hf-adapter")
    ours = peft.PeftModel.from_pretrained(load_network(tiny_checkpoint),
                                          tmp_path / "hf-adapter").eval()  # fmt: skip
    text = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "token_type_ids": torch.tensor([[0, 0, 1, 1]])}
    with torch.no_grad():
        assert (hf(**text).logits - ours(**text).logits).abs().max() < 1e-4


def merged_export_overrides(checkpoint, *extra: str) -> list[str]:
    """A run with LoRA, gradient checkpointing, validation generation, a checkpoint per step and a merged export.
    float32 pinned: the merged export must equal base + adapter to 1e-4 (a bf16 base, auto on native-bf16 CPUs, is
    merged and saved in bf16: 5e-3 apart)."""
    return [f"model.path={checkpoint}", "logger=csv", *FAST, *SYNTHETIC, "model.dtype=float32",
            "model.gradient_checkpointing=true", "export.merged=true", "callbacks.model_checkpoint.save_top_k=-1",
            *extra]  # fmt: skip


def assert_trains_resumes_and_exports_merged(tmp_path, checkpoint, overrides, hf_class, batch_of):
    """The run of ``overrides`` validates, resumed from step 2 ends on the same adapter, and transformers'
    ``hf_class`` reads its merged export with base + adapter's logits on ``batch_of(config)``; returns that model."""
    results = train.train(compose_config(tmp_path / "run", overrides))
    assert math.isfinite(results["val/vqa_accuracy"]) and results["val/loss"] > 0
    resumed = tmp_path / "resumed"
    train.train(compose_config(resumed, [*overrides, f"ckpt_path={tmp_path / 'run/checkpoints/step2.ckpt'}"]))
    for name, tensor in load_file(tmp_path / "run/adapter/adapter_model.safetensors").items():
        assert torch.equal(load_file(resumed / "adapter/adapter_model.safetensors")[name], tensor), name

    merged = hf_class.from_pretrained(tmp_path / "run/model", attn_implementation="eager").eval()
    base = load_network(checkpoint)
    ours = peft.PeftModel.from_pretrained(base, tmp_path / "run/adapter").eval()
    batch = batch_of(base.config)
    with torch.no_grad():
        diff = (merged(**batch).logits - ours(**batch).logits)[batch["attention_mask"].bool()]
    assert diff.abs().max() < 1e-4
    return merged


def test_paligemma2_trains_resumes_and_exports_a_merged_model_transformers_reads(
    tmp_path, tiny_gemma2_checkpoint
):
    """Everything PaliGemma 1 has, on a Gemma 2 decoder."""
    merged = assert_trains_resumes_and_exports_merged(
        tmp_path,
        tiny_gemma2_checkpoint,
        merged_export_overrides(tiny_gemma2_checkpoint),
        transformers.PaliGemmaForConditionalGeneration,
        lambda config: random_batch(config, prefix_lens=[3, 6], suffix_lens=[2, 4]),
    )
    assert merged.config.text_config.model_type == "gemma2"


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_gemma3_trains_resumes_and_exports_a_merged_model_transformers_reads(
    tmp_path, tiny_gemma3_chat_checkpoint, chat
):
    """Gemma 3 through the same run, its rows plain or in the chat template with the loss on the model's turn."""
    path = tiny_gemma3_chat_checkpoint
    overrides = merged_export_overrides(path, f"data.chat_template={str(chat).lower()}")
    datamodule = built_run(compose_config(tmp_path / "data", overrides))[0]
    datamodule.setup("fit")
    inputs = datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0).inputs
    processor = datamodule.processor
    for ids, labels in zip(inputs.input_ids, inputs.labels, strict=True):
        answer = processor.decode(ids[labels != -100])
        assert answer.endswith("<end_of_turn>\n" if chat else "<eos>"), answer
        assert "<start_of_turn>" not in answer and "<start_of_image>" not in answer
    assert (inputs.token_type_ids == (inputs.input_ids == processor.image_token_id)).all()

    assert_trains_resumes_and_exports_merged(
        tmp_path, path, overrides, transformers.Gemma3ForConditionalGeneration, lambda _: inputs.as_kwargs()
    )


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_multirun_sweep_runs_two_jobs_in_one_wandb_group(tmp_path, tiny_checkpoint):
    command = [sys.executable, "train.py", "-m", "lora.r=2,4", f"model.path={tiny_checkpoint}",
               f"hydra.sweep.dir={tmp_path}", *FAST, *SYNTHETIC]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [p.name for p in runs] == ["0", "1"]
    ranks = [json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] for run in runs]
    assert ranks == [2, 4]
    assert {run_group(run) for run in runs} == {tmp_path.name}


DETECT = "<loc0100><loc0100><loc0500><loc0500> cat"


@pytest.mark.parametrize(("layout", "metric"), [("jsonl", "anls"), ("parquet", "map")])
def test_prefix_suffix_data_trains_and_evaluates(tmp_path, tiny_checkpoint, layout, metric):
    """Any prompt: big_vision's JSONL-plus-images layout, or parquet with prefix and suffix columns (here detection
    targets, scored by mAP)."""
    if layout == "jsonl":
        data = write_jsonl_dir(tmp_path / "data")
    else:
        rows = {"image": [{"bytes": png(noise(seed=i)), "path": None} for i in range(4)],
                "prefix": ["detect cat"] * 4, "suffix": [DETECT, DETECT, "", DETECT]}  # fmt: skip
        data = write_parquet(tmp_path / "data", {"train": (rows, None), "validation": (rows, None)})
    common = [f"model.path={tiny_checkpoint}", "logger=csv", "data=prefix_suffix", f"data.path={data}",
              f"data.metric={metric}"]  # fmt: skip
    results = train.train(compose_config(tmp_path / "run", [*common, *FAST]))
    assert results["monitor"] == f"val/{metric}" and 0 <= results[f"val/{metric}"] <= 1
    assert results["data/skipped"] == 2  # jsonl: a missing image, a line that is not JSON; parquet: no target
    eval_overrides = [*common, f"model.adapter={tmp_path / 'run' / 'adapter'}", "data.num_workers=0",
                      "data.val_batch_size=8", "generation.max_new_tokens=4"]  # fmt: skip
    evaluated = evaluate.evaluate(compose_config(tmp_path / "eval", eval_overrides, config_name="eval"))
    assert evaluated[f"val/{metric}"] == results[f"val/{metric}"] and evaluated["monitor"] == f"val/{metric}"
    predictions = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert {p["prompt"] for p in predictions} == ({"ocr"} if layout == "jsonl" else {"detect cat"})


def test_rows_of_several_pictures_train_and_evaluate_to_the_same_metric(tmp_path, tiny_checkpoint):
    """1 to 3 pictures per row through train.py and evaluate.py: the validation metric is reproduced."""
    pictures = [
        [{"bytes": png(noise(seed=10 * i + j)), "path": None} for j in range(1 + i % 3)] for i in range(12)
    ]
    rows = {"images": pictures, "question": ["how many pictures?"] * 12,
            "answers": [[str(len(p))] for p in pictures]}  # fmt: skip
    features = datasets.Features(images=datasets.List(datasets.Image()), question=datasets.Value("string"),
                                 answers=[datasets.Value("string")])  # fmt: skip
    data = write_parquet(tmp_path / "data", {"train": (rows, features), "validation": (rows, features)})
    common = [f"model.path={tiny_checkpoint}", "logger=csv", "data=vqa", f"data.path={data}",
              "data.image_column=images"]  # fmt: skip
    results = train.train(compose_config(tmp_path / "run", [*common, *FAST]))
    assert results["data/skipped"] == 0 and 0 <= results["val/vqa_accuracy"] <= 1
    eval_overrides = [*common, f"model.adapter={tmp_path / 'run' / 'adapter'}", "data.num_workers=0",
                      "data.val_batch_size=8", "data.max_val_samples=8", "generation.max_new_tokens=4"]  # fmt: skip
    evaluated = evaluate.evaluate(compose_config(tmp_path / "eval", eval_overrides, config_name="eval"))
    assert evaluated["val/vqa_accuracy"] == results["val/vqa_accuracy"]


def write_clip_folder(root: Path, clips: int, corrupt: bool) -> Path:
    """A videofolder: <split>/<name>.mp4 files and a metadata.jsonl naming each with its question and answers; with
    ``corrupt``, one more file of each split, in the middle, is not a video."""
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        names = [f"clip{i}.mp4" for i in range(clips)]
        for i, name in enumerate(names):
            write_clip(root / split / name, levels=tuple(range(10 * i, 10 * i + 120, 6)))
        if corrupt:
            (root / split / "corrupt.mp4").write_bytes(b"not a video")
            names.insert(clips // 2, "corrupt.mp4")
        lines = [{"file_name": n, "question": "does it get brighter?", "answers": ["yes"]} for n in names]
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


@pytest.mark.slow  # two runs and an evaluation
def test_a_directory_of_clips_trains_with_pooled_frame_tokens_and_a_corrupt_clip_is_a_skipped_row(
    tmp_path, tiny_checkpoint
):
    pytest.importorskip("av")
    runs = {}
    for corrupt in (False, True):
        data = write_clip_folder(tmp_path / f"clips-{corrupt}", clips=8, corrupt=corrupt)
        common = [f"model.path={tiny_checkpoint}", "logger=csv", "data=vqa", f"data.path={data}",
                  "data.video_column=video", "data.num_frames=3", "data.frame_token_pool=2"]  # fmt: skip
        run = compose_config(tmp_path / f"run-{corrupt}", [*common, *FAST, "data.max_val_samples=null"])
        runs[corrupt] = train.train(run)
    assert runs[False]["data/skipped"] == 0
    assert runs[True]["data/skipped"] == 2  # a corrupt clip in each split
    assert 0 <= runs[True]["val/vqa_accuracy"] <= 1
    eval_overrides = [*common, f"model.adapter={tmp_path / 'run-True' / 'adapter'}", "data.num_workers=0",
                      "data.val_batch_size=8", "generation.max_new_tokens=4"]  # fmt: skip
    evaluated = evaluate.evaluate(compose_config(tmp_path / "eval", eval_overrides, config_name="eval"))
    assert evaluated["val/vqa_accuracy"] == runs[True]["val/vqa_accuracy"] and evaluated["data/skipped"] == 1


@pytest.mark.slow  # two short runs per family
@pytest.mark.parametrize("checkpoint", ["tiny_checkpoint", "tiny_gemma3_chat_checkpoint"])
def test_packed_run_trains_the_unpacked_runs_adapter(tmp_path, request, checkpoint):
    """data.packing=true end to end, PaliGemma and Gemma 3: the same rows per step, so the same losses and adapter
    as unpacked. float32 pinned: a bf16 base (auto on native-bf16 CPUs) rounds the two batch shapes' products
    differently, well beyond these tolerances."""
    overrides = [f"model.path={request.getfixturevalue(checkpoint)}", "logger=csv", *FAST, *SYNTHETIC, "data=synthetic_captions",
                 "lora.dropout=0.0", "zero_shot=false", "data.max_length=192", "model.dtype=float32"]  # fmt: skip
    runs = {}
    for packing in (False, True):
        run = tmp_path / f"packing_{packing}"
        results = train.train(compose_config(run, [*overrides, f"data.packing={packing}"]))
        assert math.isfinite(results["val/loss"]) and results["data/skipped"] == 0
        losses = [float(row["train/loss"]) for row in csv_rows(run) if row.get("train/loss")]
        runs[packing] = losses, load_file(run / "adapter" / "adapter_model.safetensors")
    (losses, adapter), (packed_losses, packed_adapter) = runs[False], runs[True]
    assert len(losses) == 3 and packed_losses == pytest.approx(losses, rel=1e-5)
    for name, tensor in adapter.items():
        torch.testing.assert_close(packed_adapter[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
