"""The scalars of an offline wandb run, read back from its `.wandb` file.

wandb (0.2x-0.3x) has no Python reader of that file any more; its layout is LevelDB's log format: a 7-byte
header (":W&B", magic, version), then 32 KiB blocks of records, each a 7-byte header (CRC, length,
type: 1 full, 2 first, 3 middle, 4 last) and a piece of a protobuf `Record` (wandb.proto).
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[bytes]:
    data, out, pieces, pos = path.read_bytes(), [], b"", HEADER
    assert data[:4] == b":W&B", f"{path}: not a wandb transaction log"
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + HEADER])
        pieces += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            out.append(pieces)
            pieces = b""
    return out


def history(run_dir: Path) -> dict[str, dict[int, float]]:
    """{scalar name: {step: value}} of the one offline run under `run_dir` (a WANDB_DIR or wandb.init dir)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (log,) = Path(run_dir).glob("**/offline-run-*/run-*.wandb")
    out: dict[str, dict[int, float]] = {}
    for raw in records(log):
        record = Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        step = record.history.step.num
        for item in record.history.item:
            name = item.key or "/".join(item.nested_key)
            if not name.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                out.setdefault(name, {})[step] = json.loads(item.value_json)
    return out
