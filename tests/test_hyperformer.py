"""HyperFormer: a shared hypernetwork generates each task's adapters from task, layer and place
embeddings; only it, the embeddings and the heads train; a new task trains only its
embedding."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from ftjax.io import load_pretrained
from ftjax.io.adapter import load_adapter
from ftjax.models import HeadConfig, Model, init_params, param_shapes, preset
from ftjax.nn.adapters import ADAPTER_LEAVES
from ftjax.nn.hyperformer import HyperConfig
from ftjax.peft import add_peft, method_config, single_adapter
from ftjax.peft.hyperformer import add_hyper_task, add_hyperformer
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train
from ftjax.utils.tree import leaf_paths, split_leaves
from test_multitask import config, task_data  # noqa: F401  (fixtures)

HYPER = HyperConfig(task_dim=7, projector_hidden=11, embedding_dim=5)
HEAD = HeadConfig("sequence", 3, "mean")


def _models(name, scanned, kind="houlsby", norm=True):
    model = Model(preset(name).with_policy(scan_layers=scanned), HEAD)
    base = init_params(model, jax.random.key(0))
    adapter = method_config(kind, {"size": 5, "norm": norm})
    hyper_model, params = add_hyperformer(model, base, ("x", "y", "z"),
                                          dataclasses.replace(HYPER, adapter_kind=kind),
                                          adapter, jax.random.key(1))
    return model, base, hyper_model, params


@pytest.mark.parametrize("kind,norm", [("houlsby", True), ("pfeiffer", False)])
@pytest.mark.parametrize("scanned", [False, True], ids=["per_layer", "scanned"])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_generated_adapters_have_the_shapes_of_hand_written_ones(name, scanned, kind, norm):
    model, base, hyper_model, params = _models(name, scanned, kind, norm)
    hand_model, _ = add_peft(model, base, kind, {"size": 5, "norm": norm}, jax.random.key(1))
    hand = split_leaves(param_shapes(hand_model), ADAPTER_LEAVES)[1]
    generated = hyper_model.apply({"params": params}, method=lambda m: m.hyper())
    assert leaf_paths(generated) == leaf_paths(hand)
    shapes = jax.tree.map(lambda g, h: g.shape == (3, *h.shape), generated, hand)
    assert all(jax.tree.leaves(shapes))
    # Only the hypernetwork is new: no adapter leaf is stored.
    assert not leaf_paths(split_leaves(params, ADAPTER_LEAVES)[1])
    assert set(params) == {"backbone", "head", "hyper"}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_it_starts_as_the_base_function_and_routes_each_row_to_its_task(name):
    model, base, hyper_model, params = _models(name, scanned=False)
    ids = jax.random.randint(jax.random.key(5), (4, 9), 3, model.config.vocab_size)
    task_ids = np.array([0, 2, 1, 0])
    start = hyper_model.apply({"params": params}, ids, adapter_ids=task_ids).logits
    np.testing.assert_array_equal(start, model.apply({"params": base}, ids).logits)

    # Trained (perturbed) hypernetwork: each row equals its task's generated adapter alone.
    params = {**params, "hyper": jax.tree.map(
        lambda x: x + 0.2 * jax.random.normal(jax.random.key(3), x.shape), params["hyper"])}
    mixed = hyper_model.apply({"params": params}, ids, adapter_ids=task_ids).logits
    for row, task in enumerate(task_ids):
        single, own = single_adapter(hyper_model, params, "xyz"[task])
        alone = single.apply({"params": own}, ids[row:row + 1]).logits[0]
        np.testing.assert_allclose(mixed[row], alone, rtol=3e-5, atol=3e-5)
    assert np.abs(mixed[0] - mixed[1]).max() > 0  # tasks differ


def test_a_new_task_trains_only_its_embedding():
    model, base, hyper_model, params = _models("tiny-bert", scanned=False)
    params = {**params, "hyper": jax.tree.map(  # a "trained" hypernetwork
        lambda x: x + 0.2 * jax.random.normal(jax.random.key(3), x.shape), params["hyper"])}
    grown, params = add_hyper_task(hyper_model, params, "w", jax.random.key(9))
    assert grown.adapter_slots.names == ("x", "y", "z", "w")
    ids = jax.random.randint(jax.random.key(5), (4, 9), 3, model.config.vocab_size)
    rows = np.array([0, 1, 2, 3])
    before = grown.apply({"params": params}, ids, adapter_ids=rows).logits

    trains = lambda path: path.startswith("hyper/task_w/")  # noqa: E731
    flat_mask = jax.tree_util.tree_map_with_path(
        lambda p, _: trains("/".join(str(k.key) for k in p)), params)
    tx = optax.masked(optax.adam(1e-2), flat_mask)
    opt_state = tx.init(params)

    def loss(p):
        return (grown.apply({"params": p}, ids[3:], adapter_ids=rows[3:]).logits ** 2).sum()

    new = params
    for _ in range(3):
        updates, opt_state = tx.update(jax.grad(loss)(new), opt_state, new)
        updates = jax.tree.map(lambda u, m: u if m else 0.0 * u, updates, flat_mask)
        new = optax.apply_updates(new, updates)
    changed = [p for p, a, b in zip(leaf_paths(params), jax.tree.leaves(params),
                                    jax.tree.leaves(new)) if not np.array_equal(a, b)]
    assert changed == ["hyper/task_w/embedding"]
    after = grown.apply({"params": new}, ids, adapter_ids=rows).logits
    np.testing.assert_array_equal(after[:3], before[:3])  # the old tasks compute as before
    assert np.abs(after[3] - before[3]).max() > 0


def test_a_hyperformer_run_trains_the_hypernetwork_and_writes_an_adapter_per_task(
        config, tiny_bert_dir, tmp_path):
    cfg = config("method=hyperformer", "adapter.size=4", "adapter.norm=True",
                 "hyperformer.task_dim=8", "hyperformer.projector_hidden=16",
                 "hyperformer.embedding_dim=8", "steps=4", "eval_every=4",
                 "checkpoint_every=4", "optimizer.learning_rate=1e-3")
    exp = build_experiment(cfg)
    flags = jax.tree_util.tree_flatten_with_path(exp.mask)[0]
    trained = ["/".join(str(k.key) for k in p) for p, m in flags if m]
    trained = [p for p in trained if not p.startswith("head/")]
    assert trained and all(p.startswith("hyper/") for p in trained)
    result = train(cfg, tmp_path / "run", quiet=True)
    assert sorted(p.name for p in (tmp_path / "run" / "adapters").iterdir()) == [
        "length", "ner", "sentiment"]
    assert 0.0 <= result.eval["validation/sentiment"]["accuracy"] <= 1.0
    # A task's exported adapter is its generated one: alone it computes what the run does.
    model, params = load_adapter(tmp_path / "run" / "adapters" / "sentiment",
                                 load_pretrained(str(tiny_bert_dir), dtype="float32"))
    assert model.config.adapter.norm and model.hypernetwork is None
    run = result.experiment
    batch = next(run.train_iterator())
    inputs = {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    expected = run.model.apply({"params": result.state.params}, batch["input_ids"], **inputs,
                               adapter_ids=batch["task_id"]).logits["sentiment"]
    rows = batch["task_id"] == 2
    got = model.apply({"params": params}, batch["input_ids"][rows],
                      **{k: v[rows] for k, v in inputs.items()}).logits
    np.testing.assert_allclose(got, expected[rows], rtol=1e-5, atol=1e-5)
