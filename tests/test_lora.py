"""LoRA invariants: B = 0 changes nothing, merge equals the adapter forward, leaves exactly where
targeted, only adapter (+ head) leaves train, trainable counts equal the hand count."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.models import HeadConfig, Model, init_params, logical_axes, param_shapes, preset
from ftjax.optim.trainability import report, resolve
from ftjax.peft import (
    LoraConfig,
    add_lora,
    dense_module_paths,
    insert_lora,
    lora_only,
    lora_paths,
    merge,
    split_lora,
    unmerge,
    with_lora,
)
from ftjax.peft.presets import method_spec

IDS = jnp.array([[5, 9, 17, 3, 40, 2, 11], [7, 1, 8, 30, 4, 0, 0]], jnp.int32)
MASK = jnp.array([[1] * 7, [1] * 5 + [0] * 2], jnp.int32)
ARCHS = [("tiny-llama", False), ("tiny-llama", True), ("tiny-bert", False), ("tiny-bert", True)]


def _logits(model, params, deterministic=True, rng=None):
    rngs = {"dropout": rng} if rng is not None else {}
    return jax.jit(lambda p: model.apply({"params": p}, IDS, attention_mask=MASK,
                                         deterministic=deterministic, rngs=rngs).logits)(params)


def _base(name, scan, head=HeadConfig("sequence", num_labels=3)):
    model = Model(preset(name, scan_layers=scan), head)
    return model, init_params(model, jax.random.key(0))


def _trained_adapter(params, seed=7):
    """Random A and non-zero B everywhere, so the adapter actually changes the function."""
    base, lora = split_lora(params)
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return insert_lora(base, jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize("name,scan", ARCHS)
def test_b_zero_is_the_base_model_and_merge_matches(name, scan):
    model, params = _base(name, scan)
    lora_cfg = LoraConfig(rank=4, alpha=8.0)
    lmodel, lparams = add_lora(model, params, lora_cfg, jax.random.key(1))
    base_out = _logits(model, params)
    # B = 0 at init: the adapted model computes exactly the base function.
    np.testing.assert_array_equal(_logits(lmodel, lparams), base_out)
    assert all(not np.any(leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(lparams)
               if "lora_b" in jax.tree_util.keystr(p))

    trained = _trained_adapter(lparams)
    adapted = _logits(lmodel, trained)
    assert not np.allclose(adapted, base_out, atol=1e-4)  # the adapter does something
    merged = merge(trained, lora_cfg)
    assert not lora_only(merged) and jax.tree.structure(merged) == jax.tree.structure(params)
    np.testing.assert_allclose(_logits(model, merged), adapted, atol=2e-5, rtol=2e-5)
    # unmerge(merge(W)) == W within fp tolerance, leaves back in place.
    restored = unmerge(merged, lora_only(trained), lora_cfg)
    assert jax.tree.structure(restored) == jax.tree.structure(trained)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(trained)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_leaves_exactly_on_targets_with_shapes_and_axes():
    llama = Model(preset("tiny-llama"), HeadConfig("lm"))  # untied LM head: `head` is a module too
    shapes = param_shapes(with_lora(llama, LoraConfig(rank=3)))
    assert lora_paths(shapes) == [f"backbone/layers_{i}/self_attn/{p}_proj"
                                  for i in range(2) for p in "qv"]
    q, v = shapes["backbone"]["layers_1"]["self_attn"]["q_proj"], \
        shapes["backbone"]["layers_1"]["self_attn"]["v_proj"]
    assert (q["lora_a"].shape, q["lora_b"].shape) == ((31, 3), (3, 60))  # 6 heads x 10
    assert (v["lora_a"].shape, v["lora_b"].shape) == ((31, 3), (3, 20))  # 2 kv heads x 10
    axes = logical_axes(with_lora(llama, LoraConfig(rank=3)))["backbone"]["layers_0"]["self_attn"]
    assert tuple(axes["q_proj"]["lora_a"]) == ("embed", "lora_rank")
    assert tuple(axes["v_proj"]["lora_b"]) == ("lora_rank", "kv_heads")

    everything = LoraConfig(targets=r".*")
    all_paths = lora_paths(param_shapes(with_lora(llama, everything)))
    assert all_paths == sorted(dense_module_paths(llama)) and "head" in all_paths

    mlp_bert = LoraConfig(rank=2, targets=r".*/(intermediate|output)")
    bert = Model(preset("tiny-bert", scan_layers=True), HeadConfig("sequence", num_labels=2))
    stacked = param_shapes(with_lora(bert, mlp_bert))
    assert lora_paths(stacked) == ["backbone/layers/block/attention/output",
                                   "backbone/layers/block/intermediate",
                                   "backbone/layers/block/output"]
    assert stacked["backbone"]["layers"]["block"]["intermediate"]["lora_a"].shape == (2, 30, 2)

    assert LoraConfig(rank=16, alpha=32.0).scale == 2.0
    assert LoraConfig(rank=16, alpha=32.0, rslora=True).scale == 32.0 / math.sqrt(16) == 8.0


def test_bad_targets_and_configs_fail_loudly():
    model, params = _base("tiny-llama", False)
    with pytest.raises(ValueError, match="(?s)match no module.*self_attn/q_proj"):
        add_lora(model, params, LoraConfig(targets="nothing/here"), jax.random.key(0))
    scanned, sparams = _base("tiny-llama", True)
    with pytest.raises(ValueError, match="scan_layers every layer"):
        add_lora(scanned, sparams, LoraConfig(targets=r"backbone/layers_1/self_attn/q_proj"),
                 jax.random.key(0))
    _, lparams = add_lora(model, params, LoraConfig(), jax.random.key(0))
    with pytest.raises(ValueError, match="already carry LoRA"):
        add_lora(model, lparams, LoraConfig(), jax.random.key(0))
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="init"):
        LoraConfig(init="zeros")
    with pytest.raises(KeyError, match="did you mean 'rank'"):
        LoraConfig.from_config({"rnak": 4})


def test_init_and_dropout():
    model, params = _base("tiny-llama", False)
    _, default = add_lora(model, params, LoraConfig(rank=4), jax.random.key(0))
    _, gauss = add_lora(model, params, LoraConfig(rank=4, init="gaussian"), jax.random.key(0))
    a = default["backbone"]["layers_0"]["self_attn"]["q_proj"]["lora_a"]
    assert float(jnp.abs(a).max()) <= 1 / math.sqrt(31) and float(jnp.std(a)) > 0.05
    g = gauss["backbone"]["layers_0"]["self_attn"]["q_proj"]["lora_a"]
    assert abs(float(jnp.std(g)) - 0.25) < 0.08  # std 1/rank
    # Dropout acts on the LoRA branch only, in training mode only.
    lmodel, lparams = add_lora(model, params, LoraConfig(dropout=0.5), jax.random.key(0))
    trained = _trained_adapter(lparams)
    eval_out = _logits(lmodel, trained)
    np.testing.assert_array_equal(_logits(lmodel, trained, False, jax.random.key(3)),
                                  _logits(lmodel, trained, False, jax.random.key(3)))
    assert not np.allclose(_logits(lmodel, trained, False, jax.random.key(3)), eval_out)
    # ... and with B = 0 even training-mode dropout leaves the base function.
    np.testing.assert_array_equal(_logits(lmodel, lparams, False, jax.random.key(3)),
                                  _logits(model, params))


def _hand_count_smollm2(rank=8):
    d, kv = 576, 3 * 64  # hidden, kv heads x head size
    return 30 * (d * rank + rank * d + d * rank + rank * kv)


def test_lora_spec_trainable_share_on_smollm2_equals_hand_count():
    model = with_lora(Model(preset("smollm2-135m"), HeadConfig("lm")), LoraConfig(rank=8))
    shapes = param_shapes(model)  # no allocation: ShapeDtypeStructs
    spec = method_spec("lora", model.config, head_kind="lm")
    rep = report(shapes, resolve(spec, shapes))
    assert rep["trainable"] == _hand_count_smollm2() == 460_800
    assert rep["trainable"] / rep["total"] < 0.004  # ~0.34% of 134.5M
    # A new task head trains beside the adapter; a pretrained (here tied) LM head does not.
    cls = with_lora(Model(preset("smollm2-135m"), HeadConfig("sequence", num_labels=2)),
                    LoraConfig(rank=8))
    cls_shapes = param_shapes(cls)
    cls_rep = report(cls_shapes, resolve(method_spec("lora", cls.config, head_kind="sequence"),
                                         cls_shapes))
    assert cls_rep["trainable"] == _hand_count_smollm2() + 576 * 2 + 2
    untied = with_lora(Model(preset("tiny-llama"), HeadConfig("lm")), LoraConfig(rank=2))
    untied_shapes = param_shapes(untied)
    resolved = resolve(method_spec("lora", untied.config, head_kind="lm"), untied_shapes)
    assert not resolved["head"]["kernel"].trains
    resolved = resolve(method_spec("lora", untied.config, head_kind="lm",
                                   method_cfg={"train_head": True}), untied_shapes)
    assert resolved["head"]["kernel"].trains


def _paths(tree):
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_train_lora_through_the_loop(tiny_config_file, tmp_path):
    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_experiment
    from ftjax.train.loop import train

    # A random tiny BERT learns the cue-word task slowly through rank-4 q/v adapters: 60 steps.
    cfg = load_config(tiny_config_file, [
        "method=lora", "lora.rank=4", "lora.dropout=0.1", "optimizer.learning_rate=0.01",
        "steps=60", "eval_every=60", "checkpoint_every=30", "best_metric=",
    ])
    exp = build_experiment(cfg)
    # Host copies: the train step donates the state, whose frozen leaves are these buffers.
    before = _paths(jax.tree.map(np.array, exp.state.params))  # base + fresh adapter, copied
    result = train(cfg, tmp_path, quiet=True, experiment=exp)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "split" not in r]
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1

    after = _paths(result.state.params)
    assert before.keys() == after.keys()
    adapter = {p for p in before if p.rsplit("/", 1)[-1] in ("lora_a", "lora_b")}
    head = {p for p in before if p.startswith("head/")}
    assert adapter and head
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == (path in adapter | head), path  # frozen base bit-identical

    # tiny-bert: D=30, 2 layers, q and v (30 -> 30), rank 4; sequence head 30 x 2 + 2.
    hand = 2 * 2 * (30 * 4 + 4 * 30) + 30 * 2 + 2
    rep = json.loads((tmp_path / "params_report.json").read_text())
    assert rep["trainable"] == hand == sum(before[p].size for p in adapter | head)

    # The checkpoint is adapter-only: its params are exactly the LoRA and head leaves.
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(Path(tmp_path, "checkpoints", "60", "state"))
    saved_params = {p for p, x in _paths(saved["trainable"]).items() if x is not None}
    assert saved_params == adapter | head
