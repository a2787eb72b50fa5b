"""DataSettings: counts that cannot work are one line naming the key; the worker count follows the machine."""

import os

import pytest

from paligemma.data.settings import MAX_DEFAULT_WORKERS, DataSettings
from paligemma.errors import ConfigError


def test_default_workers_leave_the_main_process_a_core_and_never_exceed_the_machine():
    cores = len(os.sched_getaffinity(0))
    assert DataSettings(path="x").workers == min(MAX_DEFAULT_WORKERS, cores - 1)
    assert DataSettings(path="x").workers < cores  # torch warns above the cores this process may use
    assert DataSettings(path="x", num_workers=3).workers == 3  # what a user asks for, as asked


@pytest.mark.parametrize(
    "key, value",
    [
        ("batch_size", 0),
        ("val_batch_size", 0),
        ("max_train_samples", 0),
        ("max_val_samples", -1),
        ("num_workers", -1),
    ],
)
def test_impossible_counts_are_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be .*, got {value}$"):
        DataSettings(path="x", **{key: value})


@pytest.mark.parametrize(
    ("key", "value"), [("pan_and_scan_min_crop_size", 0), ("pan_and_scan_max_num_crops", 1)]
)
def test_impossible_pan_and_scan_sizes_name_the_keys(key, value):
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be at least .*, got {value}$"):
        DataSettings(path="x", pan_and_scan=True, **{key: value})


def test_pan_and_scan_options_are_transformers_processor_arguments():
    assert DataSettings(path="x").pan_and_scan_options == {}
    options = DataSettings(path="x", pan_and_scan=True, pan_and_scan_max_num_crops=3).pan_and_scan_options
    assert options == {
        "do_pan_and_scan": True,
        "pan_and_scan_min_crop_size": 256,
        "pan_and_scan_max_num_crops": 3,
        "pan_and_scan_min_ratio_to_activate": 1.2,
    }
