"""Experience replay: the reservoir is a uniform sample of every example seen, deterministic,
restored exactly on resume and continued across stages; a later stage trains on it through
`replay_from`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftjax.data.errors import DataError
from ftjax.data.replay import Reservoir, read_replay
from ftjax.train.config import load_config
from ftjax.train.experiment import build_data
from ftjax.train.loop import train

REPO = Path(__file__).resolve().parents[1]


def test_every_item_of_the_stream_is_held_with_the_same_chance():
    """Inclusion counts of 40 items in a 10-slot reservoir over 3000 seeds: each is held with
    probability 1/4, so each count is Binomial(3000, 1/4) (mean 750, sd 23.7); a chi-square test
    of the counts and the extremes within 5 sd (a bias toward early or late items fails)."""
    n, capacity, runs = 40, 10, 3000
    counts = np.zeros(n)
    for seed in range(runs):
        reservoir = Reservoir(capacity, seed)
        for item in range(n):
            reservoir.add(("s", item))
        assert len(reservoir.items) == capacity and reservoir.seen == n
        counts[[i for _, i in reservoir.items]] += 1
    expected = runs * capacity / n
    sd = np.sqrt(runs * (capacity / n) * (1 - capacity / n))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    chi2 = float(np.sum((counts - expected) ** 2 / (expected * (1 - capacity / n))))
    assert chi2 < 75  # chi-square, 39 degrees of freedom: p < 0.001 above ~73
    early, late = counts[:10].mean(), counts[-10:].mean()
    assert abs(early - late) < 3 * sd / np.sqrt(10) * np.sqrt(2)


def test_a_reservoir_continued_from_its_state_holds_what_one_pass_holds():
    whole = Reservoir(7, seed=3)
    for item in range(100):
        whole.add(("a" if item < 60 else "b", item))
    first = Reservoir(7, seed=3)
    for item in range(60):
        first.add(("a", item))
    second = Reservoir.from_state(json.loads(json.dumps(first.state_dict())))
    for item in range(60, 100):
        second.add(("b", item))
    assert second.items == whole.items and second.seen == whole.seen == 100
    with pytest.raises(DataError, match="capacity 0"):
        Reservoir(0)


def _config(config_file, data, *extra):
    return load_config(config_file, [
        "data.source=polarity", "data.path=None", "sources.reviews.kind=local",
        f"sources.reviews.path={data!r}", *extra])


def test_the_buffer_resumes_exactly_and_a_later_stage_trains_on_it(tiny_config_file,
                                                                   tiny_text_data, tmp_path):
    replay = ["replay.capacity=20", "replay.seed=5", "steps=12", "checkpoint_every=6"]
    train(_config(tiny_config_file, tiny_text_data, *replay), tmp_path / "full", quiet=True)
    full = read_replay(tmp_path / "full")
    assert full.seen == 12 * 8 and len(full.items) == 20
    assert all(source == "reviews" and 0 <= i < 96 for source, i in full.items)

    train(_config(tiny_config_file, tiny_text_data, *replay, "steps=6"), tmp_path / "resumed",
          quiet=True)
    assert not (tmp_path / "resumed" / "replay.json").exists() or \
        read_replay(tmp_path / "resumed").seen == 48
    train(_config(tiny_config_file, tiny_text_data, *replay), tmp_path / "resumed", quiet=True)
    resumed = read_replay(tmp_path / "resumed")
    assert resumed.items == full.items and resumed.seen == full.seen

    # The next stage: the buffer's reviews replayed beside a new source, and the buffer
    # continued over the new source's examples only.
    stage_two = _config(
        tiny_config_file, tiny_text_data, "replay.capacity=20", "replay.seed=5",
        f"replay.continue_from={str(tmp_path / 'full')!r}",
        f"sources.reviews.replay_from={str(tmp_path / 'full' / 'replay.json')!r}",
        "sources.more.kind=local", f"sources.more.path={tiny_text_data!r}",
        "data.mixing=fixed", "sources.reviews.weight=0.25", "steps=4")
    sources = {s.name: s for s in build_data(stage_two)}
    held = sorted(i for _, i in full.items)
    replayed = sources["reviews"].splits["train"]
    assert len(replayed) == 20
    original = {s.name: s for s in build_data(_config(tiny_config_file, tiny_text_data))}
    assert [replayed[k] for k in range(20)] == [original["reviews"].splits["train"][i]
                                                for i in held]
    result = train(stage_two, tmp_path / "stage_two", quiet=True)
    assert result.final_step == 4
    continued = read_replay(tmp_path / "stage_two")
    more = continued.seen - full.seen
    assert 0 < more < 4 * 8  # only the new source's rows entered (the replayed ones did not)
    assert {source for source, _ in continued.items} <= {"reviews", "more"}


def test_packed_documents_enter_the_buffer_once_each_and_are_replayed(tiny_config_file,
                                                                      tiny_text_data,
                                                                      tiny_llama_dir, tmp_path):
    """A packed language-model row holds several documents: each enters the reservoir once,
    when its first piece is trained on, so `seen` counts documents, not rows."""
    packed = ["task.kind=causal_lm", "task.max_length=24", "task.packing=True", "head.kind=lm",
              f"model.name={tiny_llama_dir}", "replay.capacity=10", "steps=3"]
    cfg = _config(tiny_config_file, tiny_text_data, *packed)
    train(cfg, tmp_path / "run", quiet=True)
    buffer = read_replay(tmp_path / "run")
    documents = len({s.name: s for s in build_data(cfg)}["reviews"].splits["train"])
    assert 3 * 8 < buffer.seen < documents  # more documents than rows, each counted once
    assert len(buffer.items) == 10 and len(set(buffer.items)) == 10
    assert all(source == "reviews" and 0 <= i < documents for source, i in buffer.items)
    replayed = _config(tiny_config_file, tiny_text_data, *packed,
                       f"sources.reviews.replay_from={str(tmp_path / 'run' / 'replay.json')!r}",
                       "replay.capacity=10")
    assert len({s.name: s for s in build_data(replayed)}["reviews"].splits["train"]) == 10
    assert train(replayed, tmp_path / "replayed", quiet=True).final_step == 3


def test_a_buffer_without_the_source_or_from_other_data_is_one_clear_line(
        tiny_config_file, tiny_text_data, tmp_path):
    buffer = tmp_path / "replay.json"
    buffer.write_text(json.dumps({"capacity": 2, "seed": 0, "seen": 2,
                                  "items": [["other", 1], ["other", 2]]}))
    with pytest.raises(DataError, match="holds no example of 'reviews'"):
        build_data(_config(tiny_config_file, tiny_text_data,
                           f"sources.reviews.replay_from={str(buffer)!r}"))
    buffer.write_text(json.dumps({"capacity": 1, "seed": 0, "seen": 5,
                                  "items": [["reviews", 500]]}))
    with pytest.raises(DataError, match="record 500 of 'reviews', whose train split has 96"):
        build_data(_config(tiny_config_file, tiny_text_data,
                           f"sources.reviews.replay_from={str(buffer)!r}"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ftjax.cli", "train", str(tiny_config_file), "--workdir",
         str(tmp_path / "run"), "--set", "data.source='polarity'", "--set", "data.path=None",
         "--set", "sources.reviews.kind='local'", "--set",
         f"sources.reviews.path={tiny_text_data!r}", "--set",
         f"sources.reviews.replay_from={str(tmp_path / 'none.json')!r}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no replay buffer at" in proc.stderr
