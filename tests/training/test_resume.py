"""Nothing lost: a run killed at any moment, or stopped by a preemption signal, resumes to the very adapter of the
run never interrupted; checkpoints are written atomically and load with weights_only=True."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import load_file

import train
from paligemma.data.sampler import EpochSampler, ResumableDataLoader
from paligemma.errors import PREEMPTED_EXIT_STATUS, CheckpointError, ConfigError
from paligemma.training.checkpoint_io import AtomicCheckpointIO
from tests.helpers import FAST, SYNTHETIC, compose_config

ROOT = Path(__file__).resolve().parents[2]
# 24 rows in batches of 4: 6 steps an epoch; 9 steps end mid-epoch 1. LoRA dropout (0.05) draws from torch's RNG.
RUN = [o for o in FAST if not o.startswith("trainer.max_steps")] + [
    "trainer.max_steps=9", "trainer.max_epochs=3", "logger=csv", "zero_shot=false", *SYNTHETIC,
]  # fmt: skip


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(run: Path, reference: Path) -> None:
    ours, expected = adapter(run), adapter(reference)
    assert ours.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(ours[name], tensor), f"{name}: max diff {(ours[name] - tensor).abs().max()}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint):
    """The reference run, keeping its checkpoints of steps 2, 4, 6 (end of epoch 0) and 8."""
    run = tmp_path_factory.mktemp("uninterrupted")
    overrides = [f"model.path={tiny_checkpoint}", *RUN, "callbacks.model_checkpoint.save_top_k=-1"]
    train.train(compose_config(run, overrides))
    return run


@pytest.mark.parametrize("step", [4, 6, 8])
def test_resume_from_any_checkpoint_gives_the_same_adapter(tmp_path, tiny_checkpoint, uninterrupted, step):
    ckpt = uninterrupted / "checkpoints" / f"step{step}.ckpt"
    results = train.train(
        compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *RUN, f"ckpt_path={ckpt}"])
    )
    assert_same_adapter(tmp_path, uninterrupted)
    assert results["data/skipped"] == 0


def test_checkpoint_loads_with_weights_only_and_holds_what_resuming_needs(uninterrupted):
    checkpoint = torch.load(uninterrupted / "checkpoints" / "step8.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert set(checkpoint["callbacks"]["ExactResume"]) == {"torch", "numpy", "python"}
    assert checkpoint["PaliGemmaDataModule"] == {"skipped": [], "truncated": []}
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    saved = checkpoint["hyper_parameters"]["config"]  # what evaluate.py rebuilds the network from
    assert saved["lora"]["r"] > 0 and saved["model"]["path"]
    assert not list((uninterrupted / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_sigkill_mid_epoch_then_resume_gives_the_same_adapter(tmp_path, tiny_checkpoint, uninterrupted):
    command = [sys.executable, "train.py", f"model.path={tiny_checkpoint}", *RUN]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    process = subprocess.Popen(
        [*command, f"hydra.run.dir={tmp_path / 'killed'}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while not last.exists() and process.poll() is None and time.perf_counter() - start < 240:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]  # killed, not finished
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] < 9
    assert (
        checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] % 6 != 0
    )  # mid-epoch

    resumed = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={last}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_adapter(tmp_path / "resumed", uninterrupted)


# Rows of three frames each (the synthetic clips), their image tokens pooled 2x2: the same 6 steps an epoch.
CLIPS = ["data=synthetic_video", "data.synthetic.num_train=24", "data.synthetic.num_val=8",
         "data.synthetic.image_size=32", "data.synthetic.num_frames=3", "data.frame_token_pool=2"]  # fmt: skip


@pytest.mark.slow  # a reference run and two subprocesses
def test_sigkill_mid_epoch_on_rows_of_several_pictures_then_resume_gives_the_same_adapter(
    tmp_path, tiny_checkpoint
):
    run = [*RUN, *CLIPS]
    train.train(compose_config(tmp_path / "uninterrupted", [f"model.path={tiny_checkpoint}", *run]))
    command = [sys.executable, "train.py", f"model.path={tiny_checkpoint}", *run]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([*command, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    start = time.perf_counter()
    while not last.exists() and process.poll() is None and time.perf_counter() - start < 240:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] < 9
    resumed = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={last}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_adapter(tmp_path / "resumed", tmp_path / "uninterrupted")


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_sigterm_mid_epoch_writes_last_ckpt_for_that_step_and_resuming_gives_the_same_adapter(
    tmp_path, tiny_checkpoint, uninterrupted
):
    """train.py on SIGTERM: last.ckpt for the step it stopped after, exit status 75, one line with the command
    that resumes it; that command ends with the uninterrupted run's adapter."""
    run = tmp_path / "stopped"
    command = [sys.executable, "train.py", f"model.path={tiny_checkpoint}", *RUN, f"hydra.run.dir={run}"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    start = time.perf_counter()
    while not (run / "checkpoints" / "last.ckpt").exists() and time.perf_counter() - start < 240:
        time.sleep(0.01)  # step 2 is saved: training runs
    os.kill(process.pid, signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == PREEMPTED_EXIT_STATUS, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"preempted by SIGTERM: stopped after step (\d+), which (\S+) holds; resume with: (.+)", line
    )
    assert match, stderr[-3000:]
    step, path, resume = int(match[1]), Path(match[2]), shlex.split(match[3])
    assert path == run / "checkpoints" / "last.ckpt" and 2 <= step < 6  # mid-epoch 0
    assert torch.load(path, weights_only=True)["global_step"] == step
    assert resume[:2] == ["python", "train.py"] and resume[-1] == f"ckpt_path={path}"

    train.train(compose_config(tmp_path / "resumed", resume[2:]))  # the printed command, in this process
    assert_same_adapter(tmp_path / "resumed", uninterrupted)


def test_checkpoint_of_another_lora_shape_is_a_clear_error(tmp_path, tiny_checkpoint, uninterrupted):
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    cfg = compose_config(tmp_path, [f"model.path={tiny_checkpoint}", *RUN, "lora.r=4", f"ckpt_path={ckpt}"])
    with pytest.raises(
        ConfigError, match=r"ckpt_path does not fit this model .*lora_A.* is \(8, 32\) there, \(4, 32\) here"
    ):
        train.train(cfg)


SAVE_FOREVER = """
import sys, torch
from paligemma.training.checkpoint_io import AtomicCheckpointIO
io, step = AtomicCheckpointIO(), 0
while True:
    io.save_checkpoint({"step": step, "weights": torch.full((4_000_000,), float(step))}, sys.argv[1])
    step += 1
"""


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_a_kill_while_saving_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], cwd=ROOT)
    start = time.perf_counter()
    while not path.exists() and process.poll() is None and time.perf_counter() - start < 120:
        time.sleep(0.01)
    time.sleep(0.5)  # a few more saves of 16 MB: the kill lands in one of them, or between two
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] >= 1 and torch.equal(
        checkpoint["weights"], torch.full((4_000_000,), float(checkpoint["step"]))
    )


def test_a_checkpoint_torch_cannot_load_is_a_one_line_checkpoint_error(tmp_path):
    """A whole checkpoint (it passes the config check) holding an object that ``weights_only`` refuses: torch's
    message of several lines becomes one."""
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "made_in": PurePosixPath("/elsewhere")}, path)
    with pytest.raises(
        CheckpointError, match=f"ckpt_path: {re.escape(str(path))} cannot be read as a checkpoint"
    ) as error:
        AtomicCheckpointIO().load_checkpoint(path)
    reason = str(error.value).split(" cannot be read as a checkpoint ")[1]
    assert "\n" not in reason and len(reason) <= len("()") + 200


class Keys(torch.utils.data.Dataset):
    """10 rows; a row is its (row, epoch) key."""

    def __len__(self):
        return 10

    def __getitem__(self, key):
        return key


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_and_starts_the_next_epoch_whole(workers):
    def loader():
        sampler = EpochSampler(Keys(), num_replicas=1, rank=0, shuffle=True, seed=3)
        return ResumableDataLoader(Keys(), sampler, seed=3, batch_size=3, collate_fn=lambda items: items,
                                   num_workers=workers, persistent_workers=workers > 0)  # fmt: skip

    first = loader()
    epoch0 = list(first)
    first.sampler.set_epoch(1)
    epoch1 = list(first)
    assert len(epoch0) == 4 and epoch0 != epoch1 and all(e == 0 for batch in epoch0 for _, e in batch)

    interrupted = loader()
    taken = []
    for batch in interrupted:
        taken.append(batch)
        if len(taken) == 2:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 2}

    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == 0
    assert taken + list(resumed) == epoch0
    assert resumed.state_dict() == {"epoch": 0, "batches": 4}
    resumed.sampler.set_epoch(1)
    assert list(resumed) == epoch1
