"""Scaling out: DDP and FSDP through Lightning, Optuna sweeps and submitit launchers through Hydra.

The end-to-end tests run ``python train.py`` in subprocesses, as a user would: Lightning starts the second rank
by re-running that command line, which pytest's own process cannot be.
"""

import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAST = ["data.val_batch_size=4", "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "trainer.log_every_n_steps=1", "generation.max_new_tokens=4", "data.num_workers=0", "checkpoint.every_n_steps=2"]  # fmt: skip
SYNTHETIC = ["data.synthetic.num_train=24", "data.synthetic.num_val=8", "data.synthetic.image_size=32",
             "data.max_val_samples=8", "data.batch_size=4"]  # fmt: skip


def run_train(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# ---------------------------------------------------------------- the train loader's shards (no processes)


def test_epoch_sampler_gives_each_rank_its_share_of_the_single_process_batches():
    """Rank r of R gets every R-th row of the one (seed, epoch) permutation, so with batch b per rank the ranks'
    i-th batches together are exactly the i-th batch of b x R rows of a single process."""
    from paligemma.data.sampler import EpochSampler

    rows = list(range(24))
    single = [row for row, _ in EpochSampler(rows, num_replicas=1, rank=0, shuffle=True, seed=3)]
    shards = [
        [row for row, _ in EpochSampler(rows, num_replicas=2, rank=r, shuffle=True, seed=3)] for r in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == rows and not set(shards[0]) & set(shards[1])
    for i in range(6):  # 6 global batches of 4 = 2 ranks x 2
        assert sorted(shards[0][2 * i : 2 * i + 2] + shards[1][2 * i : 2 * i + 2]) == sorted(
            single[4 * i : 4 * i + 4]
        )


# ---------------------------------------------------------------- validation records over ranks (gloo, 2 processes)


def _gather_worker(rank: int, out: str, port: int) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    from paligemma.training.distributed import gather_records, union_over_ranks
    from paligemma.training.scoring import Record

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # 7 rows: Lightning's DistributedSampler pads rank 1's shard with a repeat of row 0
    shard = list(DistributedSampler(range(7), num_replicas=2, rank=rank, shuffle=False))
    pictures = f"img{rank}"  # a string stands for each picture
    records = [
        Record(i, "k", "q?", prediction=str(i % 3), references=["0"] * 10, image=pictures) for i in shard
    ]
    gathered = [asdict(r) for r in gather_records(records)]
    skipped = sorted(union_over_ranks([["validation", i] for i in shard if i % 3 == 0]))  # rows 0, 3, 6
    Path(out, f"{rank}.json").write_text(
        json.dumps({"shard": shard, "gathered": gathered, "skipped": skipped})
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_records_and_counts_are_gathered_over_ranks(tmp_path):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from paligemma.training.scoring import Metric, Record

    torch.multiprocessing.spawn(_gather_worker, args=(str(tmp_path), find_free_network_port()), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert results[1]["shard"] == [1, 3, 5, 0]  # the padding repeat
    single = [Record(i, "k", "q?", prediction=str(i % 3), references=["0"] * 10) for i in range(7)]
    for rank, result in enumerate(results):
        gathered = result["gathered"]
        assert [r["row_id"] for r in gathered] == list(range(7))
        assert {r["image"] for r in gathered if r["row_id"] in result["shard"]} == {
            f"img{rank}"
        }  # own images kept
        assert Metric("vqa_accuracy").score([Record(**r) for r in gathered]) == Metric("vqa_accuracy").score(
            single
        )
        assert result["skipped"] == [["validation", 0], ["validation", 3], ["validation", 6]]


def compose(overrides: list[str]):
    import tempfile

    from tests.helpers import compose_config

    return compose_config(Path(tempfile.mkdtemp()), overrides)


def test_ddp_and_fsdp_trainers_instantiate_lightning_strategies(tiny_checkpoint):
    import hydra
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from paligemma.model.gemma import GemmaDecoderLayer
    from paligemma.training.strategies import WatchedLauncher

    cpu = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "logger=none"]
    ddp = hydra.utils.instantiate(compose(["trainer=ddp", *cpu]).trainer, logger=False)
    assert isinstance(ddp.strategy, DDPStrategy) and ddp.world_size == 2 and ddp.num_nodes == 1
    fsdp = hydra.utils.instantiate(compose(["trainer=fsdp", *cpu]).trainer, logger=False)
    assert isinstance(fsdp.strategy, FSDPStrategy) and fsdp.strategy.kwargs["use_orig_params"] is True
    for strategy in (ddp.strategy, fsdp.strategy):  # this machine's second rank started, and watched, by ours
        assert type(strategy.launcher) is WatchedLauncher and strategy.launcher.num_processes == 2
    assert fsdp.strategy.kwargs["auto_wrap_policy"]._module_classes == {GemmaDecoderLayer}


class TrainingLoss(torch.nn.Module):
    """What FSDP wraps in a run: a module holding the network (the LightningModule), here returning its loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(**batch, return_logits=False).loss


def lora_loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from paligemma.training.distributed import clean_name

    loss = model(batch)
    loss.backward()
    return loss.detach(), {clean_name(n): p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["tiny_checkpoint", "tiny_gemma3_checkpoint"])
def test_fsdp_makes_each_decoder_layer_of_either_family_a_unit_and_computes_the_same_step(request, family):
    """trainer=fsdp's wrap policy on a LoRA model of each family (Gemma 3 reuses GemmaDecoderLayer, whatever its
    layer type): one FSDP unit per decoder layer plus the root, the loss and LoRA gradients of the unwrapped model.
    One gloo rank in this process: the wrapping is what is tested here, the sharding by the two-rank runs."""
    import hydra
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    from paligemma.model.build import build_model
    from paligemma.model.gemma import GemmaDecoderLayer
    from paligemma.training.checks import run_settings
    from tests.helpers import family_batch

    path = str(request.getfixturevalue(family))
    cpu = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "logger=none"]
    cfg = compose(["trainer=fsdp", *cpu, f"model.path={path}", "lora.r=2", "lora.dropout=0.0"])
    policy = hydra.utils.instantiate(cfg.trainer, logger=False).strategy.kwargs["auto_wrap_policy"]
    torch.manual_seed(0)
    # as train.py builds it: model.dtype=auto is float32 under FSDP with LoRA, also on a native-bf16 CPU
    settings = run_settings(cfg)
    net = build_model(settings.model, settings.lora, settings.bf16_refused_by).net
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    batch = family_batch(net.config)
    holder = TrainingLoss(net.train())
    loss, grads = lora_loss_and_grads(holder, batch)
    net.zero_grad()
    layers = list(net.model.language_model.layers)
    assert layers and all(type(layer) is GemmaDecoderLayer for layer in layers)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = FullyShardedDataParallel(
            holder, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
        )
        units = [m.module for m in wrapped.modules() if isinstance(m, FullyShardedDataParallel)]
        assert units[1:] == layers and units[0] is holder
        fsdp_loss, fsdp_grads = lora_loss_and_grads(wrapped, batch)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(fsdp_loss, loss, rtol=0, atol=1e-6)
    assert fsdp_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(fsdp_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_multirun_job_that_would_spawn_ranks_is_a_config_error(tiny_checkpoint, monkeypatch):
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    import train
    from paligemma.errors import ConfigError

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # set below, put back after the test
    cfg = compose(
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    )
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    with pytest.raises(ConfigError, match="multirun job cannot start 2 processes"):
        train.check_launch(hydra.utils.instantiate(cfg.trainer, logger=False))


def test_fsdp_with_a_bfloat16_base_and_lora_is_a_config_error(tiny_checkpoint):
    from paligemma.errors import ConfigError
    from paligemma.training.checks import run_settings

    cfg = compose(["trainer=fsdp", f"model.path={tiny_checkpoint}", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="model.dtype=float32"):
        run_settings(cfg)
    cpu = ["trainer.accelerator=cpu", "trainer.devices=2"]
    run_settings(compose(["trainer=fsdp", f"model.path={tiny_checkpoint}", "model.dtype=float32", *cpu]))


def test_slurm_launcher_config_becomes_the_sbatch_script(tmp_path, monkeypatch):
    """hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml over the plugin's submitit_slurm) -> sbatch flags,
    mapped as hydra-submitit-launcher maps them; srun is stubbed, nothing is submitted."""
    import hydra
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = compose(["hydra/launcher=slurm", "trainer=fsdp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=8",
                   "hydra.launcher.partition=gpu", "hydra.launcher.setup=['source venv/bin/activate']"])  # fmt: skip
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    params = dict(launcher.params)
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (2, 8, 8)
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"submitit_folder", "max_num_timeout"}
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip}
    )
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "0")
    for line in ["--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--partition=gpu", "--time=1440",
                 "--cpus-per-task=8", "--mem=64GB", "source venv/bin/activate"]:  # fmt: skip
        assert line in script, line


# ---------------------------------------------------------------- DDP and FSDP runs against one process


@pytest.fixture(scope="module")
def shapes_questions(tmp_path_factory, tiny_checkpoint):
    """Synthetic VQA whose answers ("red", "top left", "2", ...) differ in length.

    The loss is the mean over all ranks' answer tokens (each rank weighs its own mean by its share of them, and
    DDP / FSDP average the ranks' gradients), so 2 ranks x 2 rows equal 1 process x 4 rows for any lengths."""
    from paligemma.data.processor import PaliGemmaProcessor
    from paligemma.data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(
        num_train=24, num_val=7, image_size=32, seed=0
    )  # 7: val shards of 4 and 3 rows
    tokenizer = PaliGemmaProcessor.from_pretrained(tiny_checkpoint).tokenizer
    answers = {a for refs in data["train"]["answers"] for a in refs}
    assert len({len(tokenizer.encode(a + "<eos>", add_special_tokens=False)) for a in answers}) > 1
    path = tmp_path_factory.mktemp("shapes-questions")
    data.save_to_disk(path)
    return path


def overrides(checkpoint: Path, data: Path, run: Path) -> list[str]:
    # float32 pinned: ranks and one process must agree to 1e-5, which a bf16 base (auto, where the CPU has
    # native bf16) cannot; FSDP would take float32 under auto anyway, a single process not
    return [f"model.path={checkpoint}", "logger=csv", *FAST, "data=vqa", f"data.path={data}", "model.dtype=float32",
            "data.kind_column=kind", "data.max_val_samples=null", "lora.dropout=0", "optim.lr=1e-3",
            "export.merged=true", f"hydra.run.dir={run}"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_checkpoint, shapes_questions) -> Path:
    run = tmp_path_factory.mktemp("one-process") / "run"
    run_train([*overrides(tiny_checkpoint, shapes_questions, run), "trainer.devices=1", "data.batch_size=4"])
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_the_adapter_of_one_process_with_the_same_global_batch(
    tmp_path, tiny_checkpoint, shapes_questions, one_process_run, strategy
):
    """2 CPU ranks (gloo) x batch 2 == 1 process x batch 4: the same adapter, merged model and metrics; rank 0
    alone writes the run dir; checkpoints keep the trainable weights under their plain names. FSDP runs
    trainer.fsdp's FSDPStrategy on CPU, which Lightning's refuses (paligemma/training/strategies.py)."""
    run = tmp_path / "run"
    args = [*overrides(tiny_checkpoint, shapes_questions, run), f"trainer={strategy}", "trainer.devices=2",
            "data.batch_size=2"]  # fmt: skip
    if strategy == "fsdp":  # as the 3B configs run it: decoder layers recomputed in the backward pass
        args.append("model.gradient_checkpointing=true")
    result = run_train(args)
    assert "Traceback" not in result.stderr

    ours, reference = (
        tensors(run / "adapter" / "adapter_model.safetensors"),
        tensors(one_process_run / "adapter" / "adapter_model.safetensors"),
    )
    assert ours.keys() == reference.keys()
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config == json.loads((one_process_run / "adapter" / "adapter_config.json").read_text())
    assert max((ours[k] - reference[k]).abs().max().item() for k in ours) < 1e-5
    assert max(v.abs().max().item() for k, v in ours.items() if "lora_B" in k) > 1e-3  # it did train
    merged, merged_reference = (
        tensors(run / "model" / "model.safetensors"),
        tensors(one_process_run / "model" / "model.safetensors"),
    )
    assert merged.keys() == merged_reference.keys()
    assert max((merged[k] - merged_reference[k]).abs().max().item() for k in merged) < 1e-5

    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((one_process_run / "metrics.json").read_text())
    for key in ("val/vqa_accuracy", "zero_shot/vqa_accuracy"):
        assert metrics[key] == expected[key]
    for key in ("val/loss", "zero_shot/loss"):  # the mean over all 7 rows' answer tokens, each row once
        assert metrics[key] == pytest.approx(expected[key], rel=1e-6)
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]  # one logger: rank 0's

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    reference_ckpt = torch.load(one_process_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"].keys() == reference_ckpt["state_dict"].keys()
    assert all("lora_" in k for k in ckpt["state_dict"])


@pytest.mark.slow
@pytest.mark.parametrize("pictures", ["one per row", "lists"])
def test_ddp_on_mostly_broken_rows_steps_every_rank_alike_and_counts_them_exactly(
    tmp_path, tiny_checkpoint, pictures
):
    """3 train rows in 4 undecodable, so that many batches of a rank hold bad rows only: every rank still takes
    every step, gradient accumulation too, and the run finishes, counting each bad row once over both ranks;
    its checkpoints hold the bad rows of both ranks (rank 0 writes them). ``lists``: each row holds 1 or 2
    pictures, a bad row a broken one among them."""
    import datasets

    from tests.helpers import VQAV2_FEATURES, vqav2_rows, write_parquet

    broken = {"bytes": b"not a png", "path": None}
    train, val = vqav2_rows(40), vqav2_rows(7)
    train["image"] = [image if i % 4 == 0 else broken for i, image in enumerate(train["image"])]
    val["image"][3] = broken
    features = VQAV2_FEATURES
    if pictures == "lists":  # a good picture first, then the row's own (broken in a bad row) every other row
        for split in (train, val):
            split["image"] = [
                [split["image"][0], im] if i % 2 else [im] for i, im in enumerate(split["image"])
            ]
        features = datasets.Features({**VQAV2_FEATURES, "image": datasets.List(datasets.Image())})
    data = write_parquet(tmp_path / "vqa", {"train": (train, features), "validation": (val, features)})
    run = tmp_path / "run"  # 40 rows, 2 ranks, batches of 2: 10 batches a rank, 5 optimizer steps of 2
    result = run_train([f"model.path={tiny_checkpoint}", "trainer=ddp", "trainer.devices=2", *FAST,
                        "trainer.max_steps=-1", "trainer.accumulate_grad_batches=2", "checkpoint.every_n_steps=1",
                        "data=vqav2", f"data.path={data}", "data.train_split=train", "data.val_split=validation",
                        "data.batch_size=2", "logger=none", "zero_shot=false", f"hydra.run.dir={run}"])  # fmt: skip
    assert "yielded None" not in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data/skipped"] == 30 + 1 and metrics["train/skipped_steps"] == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5 and len(checkpoint["PaliGemmaDataModule"]["skipped"]) == 30


# ---------------------------------------------------------------- sweeps through Hydra's plugins


@pytest.mark.slow
def test_optuna_sweep_reports_the_best_trial_and_outlives_a_diverged_one(tmp_path, tiny_checkpoint):
    """3 trials of hparams_search=optuna, the learning rate drawn from {1e-3, 1e30} (the command line overrides
    the file's interval): with seed 0 one trial diverges, scores -inf, and the study goes on."""
    from omegaconf import OmegaConf

    from tests.helpers import run_group

    run_train(["hparams_search=optuna", "hydra.sweeper.n_trials=3", "optim.lr=choice(1e-3,1e30)",
               f"hydra.sweep.dir={tmp_path}", f"model.path={tiny_checkpoint}", "zero_shot=false", *FAST,
               *SYNTHETIC], timeout=300)  # fmt: skip
    runs = sorted(p.parent for p in tmp_path.glob("*/.hydra"))
    assert [p.name for p in runs] == ["0", "1", "2"]
    trials = [
        dict(o.split("=", 1) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml")) for run in runs
    ]
    diverged = [float(t["optim.lr"]) > 1 for t in trials]
    assert any(diverged) and not all(diverged)
    assert [not (run / "metrics.json").exists() for run in runs] == diverged
    finished = [run for run, bad in zip(runs, diverged, strict=True) if not bad]
    ranks = [json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] for run in finished]
    assert ranks == [int(t["lora.r"]) for t, bad in zip(trials, diverged, strict=True) if not bad]

    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert (
        set(best.best_params) == {"lora.r", "lora.alpha", "optim.lr"} and best.best_params["optim.lr"] == 1e-3
    )
    values = [json.loads((run / "metrics.json").read_text())["val/vqa_accuracy"] for run in finished]
    assert best.best_value == max(values)
    assert {run_group(run) for run in runs} == {tmp_path.name}  # every trial in one W&B group


@pytest.mark.slow
def test_submitit_local_runs_the_jobs_of_a_sweep(tmp_path, tiny_checkpoint):
    run_train(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "lora.r=2,4",
               f"hydra.sweep.dir={tmp_path}", f"model.path={tiny_checkpoint}", "logger=csv", "zero_shot=false",
               *FAST, *SYNTHETIC], timeout=300)  # fmt: skip
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [p.name for p in runs] == ["0", "1"]
    assert [json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] for run in runs] == [2, 4]
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2  # each job ran under submitit
