"""EWC: the Fisher diagonal of a finished run (ftjax.train.fisher, `ftjax fisher`) and the `ewc`
loss term that holds the next stage near it."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import finished_run

from ftjax.io.fisher import flat_leaves, load_fisher, save_fisher
from ftjax.objectives.ewc import EWC, EWCConfig
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.fisher import estimate_fisher, fisher_diagonal
from ftjax.train.loop import train
from ftjax.train.restore import restore_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    """A finished full fine-tuning run of 4 steps (its last checkpoint is what it reports)."""
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data,
                        ["steps=4", "checkpoint_every=4", "eval_every=4", "eval_batch_size=5"])


@pytest.fixture(scope="module")
def fisher_file(stage_one):
    _, run = stage_one
    return estimate_fisher(run, max_examples=11, seed=3)


def test_the_fisher_diagonal_is_the_mean_squared_gradient_of_each_example_alone(stage_one):
    """Against a hand computation: each train example as a batch of its own through the eval
    step (no vmap, no chunks), its loss differentiated, squared and averaged. 11 examples in
    batches of 5: the last batch's filler rows must neither add nor count."""
    _, run = stage_one
    exp, restored = restore_run(run, roles=("train", "validation"))
    state = restored.state
    indices = [0, 3, 4, 8, 9, 13, 21, 22, 30, 31, 40]
    diagonal, examples = fisher_diagonal(
        exp.model, exp.terms, state.trainable, state.frozen,
        exp.eval_batches("train", indices=indices), rows_per_pass=2)
    assert examples == 11

    def loss_of(trainable, batch):
        return exp.eval_step(trainable, state.frozen, batch, state.constants)["loss_sum"]

    grad = jax.jit(jax.grad(loss_of))
    squares = None
    for i in indices:
        (batch,) = list(exp.eval_batches("train", indices=[i]))
        row = {k: v[:1] for k, v in batch.items()}  # the example alone
        g = flat_leaves(jax.device_get(grad(state.trainable, row)))
        squares = {k: np.square(v) + (0 if squares is None else squares[k]) for k, v in g.items()}
    assert diagonal.keys() == squares.keys() and any(k.startswith("head/") for k in diagonal)
    for key, value in squares.items():
        np.testing.assert_allclose(diagonal[key], value / 11, rtol=2e-4, atol=1e-9, err_msg=key)


def test_the_fisher_file_says_what_it_was_estimated_from_and_online_ewc_adds_a_decayed_one(
        stage_one, fisher_file, tmp_path):
    _, run = stage_one
    first, meta = load_fisher(fisher_file)
    assert meta["examples"] == 11 and meta["estimates"] == 1 and meta["labels"] == "empirical"
    assert meta["step"] == 4 and all(np.all(v >= 0) for v in first.values())
    online = estimate_fisher(run, max_examples=11, seed=3, previous=fisher_file, decay=0.5,
                             out=tmp_path / "online.safetensors")
    second, meta2 = load_fisher(online)
    assert meta2["estimates"] == 2 and meta2["decay"] == 0.5
    for key, value in first.items():  # the same sample again: 0.5 F + F
        np.testing.assert_allclose(second[key], 1.5 * value, rtol=1e-5, err_msg=key)
    with pytest.raises(FileExistsError, match="exists"):  # refused before any work
        estimate_fisher(run, out=online)


def test_the_term_is_half_the_fisher_weighted_squared_distance_to_the_anchor(tmp_path):
    trainable = {"a": np.array([1.0, 2.0, 3.0], np.float32), "b": None,
                 "c": {"k": np.array([[0.5, -1.0]], np.float32)}}
    path = save_fisher(tmp_path / "f.safetensors",
                       {"a": np.array([2.0, 0.0, 1.0]), "c/k": np.array([[4.0, 3.0]])}, {})
    term = EWC("ewc", EWCConfig(fisher=str(path)))
    setup = types.SimpleNamespace(trainable=trainable, place_like_trainable=lambda t: t)
    state = term.init_state(setup)
    moved = {"a": jnp.array([1.5, 7.0, 2.0]), "b": None, "c": {"k": jnp.array([[0.0, 1.0]])}}
    value = term(types.SimpleNamespace(state=state, trainable=moved)).total
    expected = 0.5 * (2 * 0.25 + 0 * 25 + 1 * 1 + 4 * 0.25 + 3 * 4)
    assert float(value) == pytest.approx(expected)


def test_a_fisher_file_for_another_model_is_refused_by_the_leaf_that_differs(tmp_path):
    path = save_fisher(tmp_path / "f.safetensors", {"a": np.ones((4,))}, {})
    setup = types.SimpleNamespace(trainable={"a": np.ones((3,), np.float32)},
                                  place_like_trainable=lambda t: t)
    with pytest.raises(ConfigError, match=r"a has shape \(4,\) in the Fisher file but \(3,\)"):
        EWC("ewc", EWCConfig(fisher=str(path))).init_state(setup)
    with pytest.raises(ConfigError, match="no Fisher file"):
        EWC("ewc", EWCConfig(fisher=str(tmp_path / "none"))).init_state(setup)
    with pytest.raises(ValueError, match="ewc needs `fisher`"):
        EWCConfig()


def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r["loss"] for r in rows if "split" not in r]


def test_ewc_of_weight_zero_is_naive_sequential_training_bit_for_bit(stage_one, fisher_file,
                                                                     tmp_path):
    config, run = stage_one
    stage_two = [f"init_from={run}", "init_head=keep", "steps=3", "seed=1"]
    naive = train(load_config(config, stage_two), tmp_path / "naive", quiet=True)
    zero = train(load_config(config, [*stage_two, "losses.ewc.weight=0.0",
                                      f"losses.ewc.fisher={str(fisher_file)!r}"]),
                 tmp_path / "zero", quiet=True)
    assert _losses(tmp_path / "naive") == _losses(tmp_path / "zero")
    a, b = (flat_leaves(jax.device_get(r.state.trainable)) for r in (naive, zero))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_ewc_holds_the_weights_the_fisher_marks_and_resumes_from_its_checkpointed_state(
        stage_one, fisher_file, tmp_path):
    """Strong EWC moves the weights less from where the stage started than naive training
    (measured by the Fisher-weighted distance); its Fisher is in the checkpoint, so a stage
    resumed after the file was overwritten (a later estimate) continues exactly."""
    config, run = stage_one
    fisher = tmp_path / "fisher.safetensors"
    fisher.write_bytes(Path(fisher_file).read_bytes())
    stage_two = [f"init_from={run}", "init_head=keep", "steps=4", "checkpoint_every=2",
                 "seed=1"]
    held = [*stage_two, "losses.ewc.weight=1e4", f"losses.ewc.fisher={str(fisher)!r}"]
    naive = train(load_config(config, stage_two), tmp_path / "naive", quiet=True)
    full = train(load_config(config, held), tmp_path / "full", quiet=True)
    anchor, weights = restore_run(run)[1].state.trainable, load_fisher(fisher)[0]

    def moved(result):
        now, start = (flat_leaves(jax.device_get(t)) for t in (result.state.trainable, anchor))
        return sum(float(np.sum(weights[k] * np.square(now[k] - start[k]))) for k in weights)

    assert moved(full) < 0.5 * moved(naive)
    weights = dict(weights)
    train(load_config(config, [*held, "steps=2"]), tmp_path / "resumed", quiet=True)
    save_fisher(fisher, {k: 3 * v for k, v in weights.items()}, {}, overwrite=True)
    train(load_config(config, held), tmp_path / "resumed", quiet=True)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")


def test_the_command_writes_the_file_and_a_bad_workdir_is_one_line(stage_one, tmp_path):
    _, run = stage_one
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "ftjax.cli", "fisher", str(run), "--examples",
                         "4", "--out", str(tmp_path / "f.safetensors")], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert load_fisher(tmp_path / "f.safetensors")[1]["examples"] == 4
    bad = subprocess.run([sys.executable, "-m", "ftjax.cli", "fisher", str(tmp_path)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "no results.json" in bad.stderr


def test_packed_language_model_rows_are_the_fisher_s_examples(tiny_config_file, tiny_llama_dir,
                                                             tmp_path):
    """A packed row holds pieces of several documents (example_id -1): each row with target
    tokens is one example, the filler rows of a last batch none."""
    overrides = ["task.kind=causal_lm", "task.max_length=24", "task.packing=True",
                 f"model.name={tiny_llama_dir}", "head.kind=lm", "steps=2", "eval_every=2",
                 "checkpoint_every=2", "eval_batch_size=5"]
    train(load_config(tiny_config_file, overrides), tmp_path / "run", quiet=True)
    exp, restored = restore_run(tmp_path / "run", roles=("train", "validation"))
    batches = list(exp.eval_batches("train", indices=list(range(7))))
    rows = sum(int(np.sum(np.asarray(b["loss_mask"]).sum(-1) > 0)) for b in batches)
    assert all(np.all(np.asarray(b["example_id"]) == -1) for b in batches) and rows > 0
    diagonal, examples = fisher_diagonal(exp.model, exp.terms, restored.state.trainable,
                                         restored.state.frozen, batches, rows_per_pass=1)
    assert examples == rows
    assert all(np.all(np.isfinite(v)) for v in diagonal.values())
    assert any(np.any(v > 0) for v in diagonal.values())
