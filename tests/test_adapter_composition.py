"""Trained adapters composed for a new task, frozen: AdapterFusion and stacking."""

import jax
import numpy as np
import pytest

from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.nn.adapters import ADAPTER_LEAVES
from ftjax.peft import add_peft, method_config
from ftjax.peft.composition import compose_adapters
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.utils.tree import insert_leaves, split_leaves
from test_multitask import config, task_data  # noqa: F401  (fixtures)

HEAD = HeadConfig("sequence", 3, "mean")


def _trained_adapters(n, kind="pfeiffer"):
    """The bare base and n distinct (perturbed) adapters of one kind and size."""
    model = Model(preset("tiny-bert"), HEAD)
    base = init_params(model, jax.random.key(0))
    adapters = []
    for i in range(n):
        single, params = add_peft(model, base, kind, {"size": 5}, jax.random.key(1 + i))
        leaves = split_leaves(params, ADAPTER_LEAVES)[1]
        adapters.append(jax.tree.map(
            lambda x, i=i: x + 0.3 * jax.random.normal(jax.random.key(50 + i), x.shape), leaves))
    return model, base, single, adapters


def _logits(model, params, ids):
    return model.apply({"params": params}, ids).logits


def test_fusing_one_adapter_computes_that_adapter():
    model, base, single, (adapter,) = _trained_adapters(1)
    fused, params = compose_adapters(model, base, {"a": adapter},
                                     method_config("pfeiffer", {"size": 5}), "fusion",
                                     jax.random.key(3))
    ids = jax.random.randint(jax.random.key(5), (3, 8), 3, model.config.vocab_size)
    # One adapter: softmax weight 1, the value projection the identity.
    np.testing.assert_allclose(_logits(fused, params, ids),
                               _logits(single, insert_leaves(base, adapter), ids),
                               rtol=2e-5, atol=2e-5)


def test_stacking_applies_the_adapters_in_turn_and_starts_the_new_one_at_identity():
    model, base, single, (a, b) = _trained_adapters(2)
    settings = method_config("pfeiffer", {"size": 5})
    stacked, params = compose_adapters(model, base, {"a": a, "b": b}, settings, "stack",
                                       jax.random.key(3), target="new")
    ids = jax.random.randint(jax.random.key(5), (3, 8), 3, model.config.vocab_size)
    got = _logits(stacked, params, ids)
    # By hand: a then b on the same hidden states, composed through a model that has both
    # as a stack of two (the fresh third adds nothing).
    only_ab, params_ab = compose_adapters(model, base, {"a": a, "b": b}, settings, "stack",
                                          jax.random.key(4), target="other")
    np.testing.assert_allclose(got, _logits(only_ab, params_ab, ids), rtol=2e-5, atol=2e-5)
    one, params_a = compose_adapters(model, base, {"a": a}, settings, "stack",
                                     jax.random.key(4), target="new")
    np.testing.assert_allclose(_logits(one, params_a, ids),
                               _logits(single, insert_leaves(base, a), ids),
                               rtol=2e-5, atol=2e-5)
    assert np.abs(got - _logits(one, params_a, ids)).max() > 1e-4  # b changes the output
    with pytest.raises(ValueError, match="name it"):
        compose_adapters(model, base, {"a": a}, settings, "stack", jax.random.key(4),
                         target="a")


@pytest.mark.parametrize("method", ["fusion", "stack"])
def test_a_composition_run_trains_only_its_new_leaves(config, tiny_config_file, method,
                                                      tmp_path):
    # Source adapters: a multi-task run with one Pfeiffer adapter per task.
    train(config("method=pfeiffer", "adapter_per_task=True", "adapter.size=4", "steps=3",
                 "eval_every=3", "checkpoint_every=3"), tmp_path / "sources", quiet=True)
    store = tmp_path / "sources" / "adapters"
    cfg = load_config(tiny_config_file, [
        f"method={method}", "steps=3", "eval_every=3", "checkpoint_every=3",
        f"compose.adapters=('sentiment={store / 'sentiment'}', 'length={store / 'length'}')"])
    result = train(cfg, tmp_path / "run", quiet=True)
    exp = result.experiment
    assert exp.model.config.adapter.compose == (
        ("sentiment", "length") if method == "fusion" else ("sentiment", "length", "target"))
    flags = jax.tree_util.tree_flatten_with_path(exp.mask)[0]
    trained = {"/".join(str(k.key) for k in p) for p, m in flags if m}
    new = "fusion" if method == "fusion" else "target"
    assert trained and all(p.startswith("head/") or f"/{new}/" in p for p in trained)
    assert any(f"/{new}/" in p for p in trained)


def test_composition_is_checked(tiny_config_file, tmp_path):
    with pytest.raises(ConfigError, match="list them in compose.adapters"):
        load_config(tiny_config_file, ["method=fusion"])
    with pytest.raises(ConfigError, match="expected NAME=DIR"):
        load_config(tiny_config_file, ["method=fusion", "compose.adapters=('nodir',)"])
    with pytest.raises(ConfigError, match="not 'full'"):
        load_config(tiny_config_file, ["compose.adapters=('a=b',)"])
