"""Preemption: a signal stops training after the current optimizer step with last.ckpt written for it; a signal
during that write waits for it. (SIGTERM to train.py, then resuming: tests/training/test_resume.py.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from paligemma.errors import PREEMPTED_EXIT_STATUS, ConfigError, Preempted
from paligemma.training.checkpoint_io import AtomicCheckpointIO
from paligemma.training.preemption import Preemption, signal_numbers, sigterm_outside_training_is_preemption

ROOT = Path(__file__).resolve().parents[2]


class Steps(L.LightningModule):
    """``size`` weights that SGD pulls towards 1; sends itself ``signum`` during step ``signal_at``."""

    def __init__(self, size: int = 4, signal_at: int | None = None, signum: int = signal.SIGTERM):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(size))
        self.signal_at, self.signum = signal_at, signum

    def training_step(self, batch, batch_idx):
        if self.global_step == self.signal_at:
            print(f"signalling at step {self.global_step}", flush=True)
            signal.raise_signal(self.signum)
        return (self.weight[:4] - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def handlers() -> dict[int, object]:
    """The SIGINT and SIGTERM handlers as they stand: the launcher's (a background job or nohup ignores SIGINT)."""
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def fit(module: L.LightningModule, checkpoints: Path, accumulate: int = 1, max_steps: int = 10) -> L.Trainer:
    loader = torch.utils.data.DataLoader(range(64), batch_size=2)
    trainer = L.Trainer(
        max_steps=max_steps, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Preemption(str(checkpoints))], plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    trainer.fit(module, loader)
    return trainer


@pytest.mark.parametrize("signum, accumulate", [(signal.SIGTERM, 1), (signal.SIGUSR1, 3), (signal.SIGINT, 2)])
def test_a_signal_stops_after_the_current_step_with_last_ckpt_for_it(tmp_path, signum, accumulate):
    before = handlers()
    with pytest.raises(Preempted) as stop:
        fit(Steps(signal_at=2, signum=signum), tmp_path, accumulate)
    assert (stop.value.signal_name, stop.value.step) == (signal.Signals(signum).name, 3)  # step 3 just ended
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert batches == 3 * accumulate  # at an optimizer step, never inside an accumulation
    assert handlers() == before  # the handlers found before the run are back


def test_without_a_signal_training_ends_as_usual_and_the_handlers_are_restored(tmp_path):
    before = handlers()
    trainer = fit(Steps(), tmp_path, max_steps=3)
    assert trainer.global_step == 3 and not (tmp_path / "last.ckpt").exists()
    assert handlers() == before


class SignalledValidation(Steps):
    def validation_step(self, batch, batch_idx):
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: trainer.validate runs outside training


def test_sigterm_outside_training_is_a_preemption_not_a_success(tmp_path):
    """Lightning ends trainer.validate on SIGTERM with SystemExit(None): status 0, as if the run had succeeded."""
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = torch.utils.data.DataLoader(range(8), batch_size=2)
    expected = pytest.raises(Preempted, match="preempted by SIGTERM: outside training, at step 0")
    with expected as stop, sigterm_outside_training_is_preemption(trainer):
        trainer.validate(SignalledValidation(), loader)
    assert stop.value.path is None


def test_unknown_signal_name_is_a_config_error():
    assert signal_numbers(["SIGTERM", "SIGUSR1"]) == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(ConfigError, match="preemption.signals: unknown signal 'SIGTREM'"):
        signal_numbers(["SIGTREM"])


# A 40 MB checkpoint, long enough to write that the test can signal the process while it does.
SAVE_UNDER_FIRE = """
import sys
from pathlib import Path
from paligemma.errors import PREEMPTED_EXIT_STATUS, Preempted
from tests.training.test_preemption import Steps, fit
try:
    fit(Steps(size=10_000_000, signal_at=2), Path(sys.argv[1]))
except Preempted as stop:
    print(f"stopped after step {stop.step}", flush=True)
    sys.exit(PREEMPTED_EXIT_STATUS)
"""


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_signals_during_the_checkpoint_write_leave_a_whole_last_ckpt(tmp_path):
    """SIGTERM stops the run; while last.ckpt is being written (its temporary file exists) the test sends SIGTERM,
    SIGINT and SIGUSR1 again and again: the write finishes and the run exits as preempted."""
    process = subprocess.Popen([sys.executable, "-c", SAVE_UNDER_FIRE, str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    during_write = 0
    start = time.perf_counter()
    while process.poll() is None and time.perf_counter() - start < 120:
        if list(tmp_path.glob(".last.ckpt.*.tmp")):
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                os.kill(process.pid, signum)
            during_write += 1
        time.sleep(0.002)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == PREEMPTED_EXIT_STATUS, stderr[-3000:]
    assert during_write >= 3, "the write ended before the test could signal during it"
    assert "stopped after step 3" in stdout
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    weight = checkpoint["state_dict"]["weight"]
    assert checkpoint["global_step"] == 3 and weight.shape == (10_000_000,) and bool((weight[4:] == 0).all())
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))
