"""Read what an offline W&B run wrote: its .wandb file is a LevelDB-style log of protobuf records."""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER_BYTES, BLOCK_BYTES = 7, 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes):
    pos = HEADER_BYTES
    while pos + 7 <= len(data):
        if BLOCK_BYTES - (pos - HEADER_BYTES) % BLOCK_BYTES < 7:  # block trailer: skip to the next block
            pos += BLOCK_BYTES - (pos - HEADER_BYTES) % BLOCK_BYTES
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        yield kind, data[pos + 7 : pos + 7 + length]
        pos += 7 + length


def records(run_dir: Path) -> list:
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    out, pending = [], b""
    for kind, chunk in _chunks(path.read_bytes()):
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (FIRST, MIDDLE):
            pending += chunk
    return out


def history(run_dir: Path) -> list[dict]:
    """Every logged row as {metric name: value}."""
    rows = [r.history for r in records(run_dir) if r.WhichOneof("record_type") == "history"]
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item} for h in rows
    ]


def run_group(run_dir: Path) -> str:
    (run,) = [r.run for r in records(run_dir) if r.WhichOneof("record_type") == "run"]
    return run.run_group
