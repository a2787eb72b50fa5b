"""A rank that dies or hangs ends a DDP job (2 CPU ranks, gloo) with one line naming it, instead of a hang."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import rank_1_pid, wait_for

ROOT = Path(__file__).resolve().parents[2]
# trainer.strategy.timeout: how long a collective waits for a rank. It bounds the ranks' rendezvous at start too,
# which rank 1 reaches only once it has loaded everything: on a busy 2-core machine, well after 20 s.
TIMEOUT_S = 60


def start_ddp_run(tiny_checkpoint: Path, run: Path) -> subprocess.Popen:
    """A DDP run long enough to be interrupted: 400 rows, batch 2 per rank, a checkpoint every 2 steps."""
    args = [f"model.path={tiny_checkpoint}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", f"trainer.strategy.timeout.seconds={TIMEOUT_S}", "logger=none",
            "zero_shot=false", "data.batch_size=2", "data.num_workers=0", "data.synthetic.num_train=400",
            "data.synthetic.num_val=8", "data.synthetic.image_size=32", "checkpoint.every_n_steps=2",
            f"hydra.run.dir={run}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def stopped_with_one_line(process: subprocess.Popen, since: float) -> tuple[str, float]:
    stderr = process.communicate(timeout=120)[1]
    seconds = time.perf_counter() - since
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1], seconds


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_at_once_naming_it(tmp_path, tiny_checkpoint):
    process = start_ddp_run(tiny_checkpoint, tmp_path / "run")
    wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)  # step 2 is saved: training runs
    rank_1 = rank_1_pid(process)
    os.kill(rank_1, signal.SIGKILL)
    line, seconds = stopped_with_one_line(process, time.perf_counter())
    assert line == f"error: rank 1 (pid {rank_1}) was killed by SIGKILL; the job stops"
    assert seconds < TIMEOUT_S


# Three gloo ranks with a 3 s collective timeout; rank 2 never joins the second all-reduce.
HUNG_RANK = """
import datetime, os, sys, time
import torch, torch.distributed as dist
from paligemma.training.faults import fail_collective
rank = int(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=3, timeout=datetime.timedelta(seconds=3))
dist.all_reduce(torch.ones(1))
if rank == 2:
    time.sleep(60)
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError:
    fail_collective([])
"""


@pytest.mark.slow
def test_the_ranks_left_alive_name_a_hung_rank_after_the_collective_timeout():
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    port = str(find_free_network_port())
    ranks = [subprocess.Popen([sys.executable, "-c", HUNG_RANK, str(rank), port], cwd=ROOT, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for rank in range(3)]  # fmt: skip
    stderr = [rank.communicate(timeout=120)[1] for rank in ranks[:2]]
    ranks[2].kill()
    assert [rank.wait() for rank in ranks[:2]] == [1, 1]
    line = "error: rank 2 stopped answering (died, or hung past trainer.strategy.timeout); the job stops"
    assert stderr[0].strip() == line and stderr[1].strip() == ""  # rank 0 alone says it
