"""One adapter per task on one frozen base, trained in one multi-task run: each row runs with
and updates only its task's adapter; the run writes one loadable adapter per task."""

import jax
import numpy as np
import pytest

from ftjax.cli import main
from ftjax.io import load_pretrained
from ftjax.io.adapter import load_adapter, load_adapters
from ftjax.peft import single_adapter
from ftjax.settings import ConfigError
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train
from ftjax.utils.tree import split_leaves
from test_multitask import _rows, config, task_data  # noqa: F401  (fixtures)

TASKS = ("length", "ner", "sentiment")


def _slot_leaves(exp, params, task):
    _, own = single_adapter(exp.model, params, task)
    return {**split_leaves(own, exp.model.adapter_slots.leaves)[1],
            "head": params["head"][task]}


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


@pytest.mark.parametrize("method", ["lora", "pfeiffer", "bitfit"])
def test_a_batch_moves_only_the_adapters_and_heads_of_its_tasks(config, method):
    exp = build_experiment(config(f"method={method}", "adapter_per_task=True",
                                  "optimizer.weight_decay=0.0"))
    assert exp.model.adapter_slots.names == TASKS
    batch = next(exp.train_iterator())
    sentiment = [i for i, s in enumerate(exp.sources) if s.task.name == "sentiment"][0]
    only = _rows(batch, batch["source"] == sentiment)
    before = {t: _slot_leaves(exp, exp.state.params, t) for t in TASKS}
    state, _ = jax.jit(exp.train_step)(exp.state, only)
    for task in TASKS:
        moved = not _equal(before[task], _slot_leaves(exp, state.params, task))
        assert moved == (task == "sentiment"), task


def test_an_adapter_depends_only_on_its_own_tasks_rows(config):
    """Two runs whose batches differ only in the other tasks' rows train the same sentiment
    adapter, bit for bit (global-norm clipping off: it would couple the tasks)."""
    exp = build_experiment(config("method=lora", "adapter_per_task=True",
                                  "optimizer.grad_clip_norm=0"))
    step = jax.jit(exp.train_step)
    batches = [b for _, b in zip(range(3), exp.train_iterator())]
    sentiment = [i for i, s in enumerate(exp.sources) if s.task.name == "sentiment"][0]

    def run(change_others):
        state = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, exp.state)
        for batch in batches:
            if change_others:
                others = batch["source"] != sentiment
                batch = {**batch, "input_ids": np.where(others[:, None],
                                                        np.roll(batch["input_ids"], 1, axis=1),
                                                        batch["input_ids"])}
            state, _ = step(state, batch)
        return state

    first, second = run(False), run(True)
    assert _equal(_slot_leaves(exp, first.params, "sentiment"),
                  _slot_leaves(exp, second.params, "sentiment"))
    assert not _equal(_slot_leaves(exp, first.params, "length"),
                      _slot_leaves(exp, second.params, "length"))


def test_the_run_writes_an_adapter_per_task_that_serves_alone_and_together(
        config, tiny_bert_dir, tmp_path, capsys):
    result = train(config("method=lora", "adapter_per_task=True", "steps=4", "eval_every=4",
                          "checkpoint_every=4"), tmp_path / "run", quiet=True)
    exp = result.experiment
    store = tmp_path / "run" / "adapters"
    assert sorted(p.name for p in store.iterdir()) == list(TASKS)
    pretrained = load_pretrained(str(tiny_bert_dir), dtype="float32")
    batch = next(exp.train_iterator())
    inputs = {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    trained = exp.model.apply({"params": result.state.params}, batch["input_ids"], **inputs,
                              adapter_ids=batch["task_id"]).logits
    for index, task in enumerate(TASKS):
        model, params = load_adapter(store / task, pretrained)
        assert model.head_config == dict(exp.model.task_heads)[task]
        rows = batch["task_id"] == index
        alone = model.apply({"params": params}, batch["input_ids"][rows],
                            **{k: v[rows] for k, v in inputs.items()}).logits
        np.testing.assert_allclose(alone, trained[task][rows], rtol=1e-5, atol=1e-5)
    # All three on the base at once: a head per adapter, each row through its own adapter.
    model, params = load_adapters({t: store / t for t in TASKS}, pretrained)
    together = model.apply({"params": params}, batch["input_ids"], **inputs,
                           adapter_ids=batch["task_id"]).logits
    for task in TASKS:
        rows = batch["task_id"] == TASKS.index(task)
        np.testing.assert_allclose(together[task][rows], trained[task][rows], rtol=1e-5,
                                   atol=1e-5)
    assert result.eval["validation/sentiment"]["examples"] == 24
    # `ftjax export --format adapter` writes the same store; other formats refuse in one line.
    assert main(["export", "--workdir", str(tmp_path / "run"), "--format", "adapter",
                 "--out", str(tmp_path / "exported")]) == 0
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == list(TASKS)
    capsys.readouterr()
    assert main(["export", "--workdir", str(tmp_path / "run"), "--format", "hf",
                 "--backbone-only", "--out", str(tmp_path / "hf")]) == 2
    assert "one adapter per task" in capsys.readouterr().err


def test_adapter_per_task_is_checked(config, tiny_config_file):
    from ftjax.train.config import load_config

    with pytest.raises(ConfigError, match="needs a tasks block"):
        load_config(tiny_config_file, ["method=lora", "adapter_per_task=True"])
    with pytest.raises(ConfigError, match="the whole model"):
        config("method=full", "adapter_per_task=True")
