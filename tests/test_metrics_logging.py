"""The run's metric files: metrics.jsonl rows and the TensorBoard events written on their own
thread (every row, in order; the writer's errors raised in the caller)."""

import json
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event

from ftjax.train.logging import MetricsWriter, TensorBoardWriter


def read_events(directory):
    """Every Event of the directory's event files (TFRecord framing: length, crc, data, crc)."""
    events = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            events.append(Event.FromString(data[12:12 + length]))
            data = data[12 + length + 4:]
    return events


def test_every_row_reaches_tensorboard_in_order(tmp_path):
    writer = MetricsWriter(tmp_path)
    rows = [{"step": s, "loss": 1.0 / s, "grad_norm": float(s)} for s in range(1, 41)]
    for row in rows:
        writer.write(row)
    writer.write({"step": 40, "split": "validation", "accuracy": 0.75}, prefix="validation")
    writer.close()
    scalars = [(e.step, v.tag, v.simple_value) for e in read_events(tmp_path / "tensorboard")
               for v in e.summary.value]
    expected = [(r["step"], f"train/{k}", pytest.approx(r[k])) for r in rows
                for k in ("loss", "grad_norm")] + [(40, "validation/accuracy",
                                                     pytest.approx(0.75))]
    assert scalars == expected
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            ][:2] == rows[:2]


def test_a_writer_that_cannot_open_raises_in_the_caller(tmp_path):
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("a file where the event directory should be")
    writer = TensorBoardWriter(blocked / "tensorboard")
    with pytest.raises(OSError):
        writer.write({"step": 1, "loss": 0.5}, "train")
        writer.close()
