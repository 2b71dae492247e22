"""Many adapters on one base, for every PEFT method: a mixed batch equals each row run with its
own adapter, in one compiled program; gradients reach only the rows' own adapters."""

import jax
import numpy as np
import pytest

from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.models import init_cache
from ftjax.peft import PEFT_LEAVES, add_peft, from_adapters, single_adapter, with_slots
from ftjax.peft.multi import stack_slots
from ftjax.utils.tree import split_leaves

SETTINGS = {"lora": {"rank": 3, "alpha": 6.0}, "houlsby": {"size": 5},
            "pfeiffer": {"size": 5}, "prefix": {"num_tokens": 3}, "prompt": {"num_tokens": 3},
            "ia3": {}}
BITFIT = {"llama": ".*/scale", "bert": ".*/bias"}  # a decoder has no biases: its norm scales
MODELS = [("tiny-llama", HeadConfig()), ("tiny-bert", HeadConfig("sequence", 3, "mean"))]


def _method(name, head, method):
    """(single-adapter model, bare base, leaves regex, 3 distinct adapters)."""
    model = Model(preset(name), head)
    base = init_params(model, jax.random.key(0))
    if method == "bitfit":
        leaves, single = BITFIT[model.config.arch], model
    else:
        leaves = PEFT_LEAVES[method]
        single, params = add_peft(model, base, method, SETTINGS[method], jax.random.key(1))
        base = split_leaves(params, leaves)[0]
    fresh = split_leaves(init_params(single, jax.random.key(1)), leaves)[1]
    # Fresh adapters are mostly the identity: perturb each differently.
    adapters = [jax.tree.map(lambda x, i=i: x + 0.3 * jax.random.normal(
        jax.random.fold_in(jax.random.key(7), i), x.shape), fresh) for i in range(3)]
    if method == "bitfit":
        base = split_leaves(base, leaves)[0]
    return single, base, leaves, adapters


@pytest.mark.parametrize("method", [*SETTINGS, "bitfit"])
@pytest.mark.parametrize("name,head", MODELS, ids=["llama", "bert"])
def test_mixed_batch_equals_each_row_with_its_adapter(name, head, method):
    single, base, leaves, adapters = _method(name, head, method)
    model, params = from_adapters(single, base, dict(zip("abc", adapters)), leaves)
    ids = jax.random.randint(jax.random.key(5), (4, 9), 3, model.config.vocab_size)
    mask = np.ones((4, 9), np.int32)
    mask[1, 6:] = 0
    traces = []

    def forward(p, x, m, a):
        traces.append(1)  # runs only while tracing
        return model.apply({"params": p}, x, attention_mask=m, adapter_ids=a).logits

    mixed_fn = jax.jit(forward)
    adapter_ids = np.array([2, 0, 1, 2])
    mixed = mixed_fn(params, ids, mask, adapter_ids)
    mixed_fn(params, ids, mask, np.array([0, 1, 1, 0]))
    assert len(traces) == 1  # one compiled program serves any mix of adapters
    one = jax.jit(lambda p, x, m: single.apply({"params": p}, x, attention_mask=m).logits)
    for row, slot in enumerate(adapter_ids):
        _, own = single_adapter(model, params, "abc"[slot])
        expected = one(own, ids[row:row + 1], mask[row:row + 1])[0]
        np.testing.assert_allclose(mixed[row], expected, rtol=3e-5, atol=3e-5)
    # The adapters really differ: row 0 with another adapter gives another result.
    _, other = single_adapter(model, params, "a")
    assert np.abs(mixed[0] - one(other, ids[:1], mask[:1])[0]).max() > 1e-4


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_decoding_with_a_cache_follows_each_rows_adapter(method):
    single, base, leaves, adapters = _method("tiny-llama", HeadConfig(), method)
    model, params = from_adapters(single, base, dict(zip("abc", adapters)), leaves)
    ids = jax.random.randint(jax.random.key(5), (3, 6), 3, model.config.vocab_size)
    extra = {"with_prompt": True} if method == "prompt" else {}
    slots = np.array([1, 2, 0])
    first = model.apply({"params": params}, ids, adapter_ids=slots,
                        cache=init_cache(model.config, 3, 16), **extra)
    step = model.apply({"params": params}, ids[:, :1], adapter_ids=slots, cache=first.cache)
    for row, slot in enumerate(slots):
        _, own = single_adapter(model, params, "abc"[slot])
        a = single.apply({"params": own}, ids[row:row + 1],
                         cache=init_cache(single.config, 1, 16), **extra)
        b = single.apply({"params": own}, ids[row:row + 1, :1], cache=a.cache)
        np.testing.assert_allclose(step.logits[row], b.logits[0], rtol=3e-5, atol=3e-5)


@pytest.mark.parametrize("method", ["lora", "houlsby", "ia3"])
def test_a_slot_gets_gradient_only_from_its_own_rows(method):
    single, base, leaves, adapters = _method("tiny-bert", HeadConfig("sequence", 3, "mean"),
                                             method)
    model, params = from_adapters(single, base, dict(zip("abc", adapters)), leaves)
    ids = jax.random.randint(jax.random.key(5), (4, 7), 3, model.config.vocab_size)

    def loss(p):
        out = model.apply({"params": p}, ids, adapter_ids=np.array([0, 0, 2, 2]),
                          deterministic=False, rngs={"dropout": jax.random.key(3)})
        return (out.logits ** 2).sum()

    grads = split_leaves(jax.grad(loss)(params), leaves)[1]
    per_slot = np.stack([np.abs(np.asarray(g)).reshape(3, -1).max(1)
                         for g in jax.tree.leaves(grads)]).max(0)
    assert per_slot[0] > 0 and per_slot[2] > 0
    assert per_slot[1] == 0.0  # no row used adapter b


def test_slots_start_as_the_single_adapter_and_errors_are_clear():
    single, base, leaves, adapters = _method("tiny-llama", HeadConfig(), "lora")
    params = from_adapters(single, base, {"x": adapters[0]}, leaves)[1]
    _, params_x = single_adapter(*from_adapters(single, base, {"x": adapters[0]}, leaves), "x")
    model, slotted = with_slots(single, params_x, ["p", "q"], leaves)
    for name in "pq":
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params_x,
                            single_adapter(model, slotted, name)[1])
        assert all(jax.tree.leaves(same))
    ids = np.ones((2, 4), np.int32)
    with pytest.raises(ValueError, match="give each row's adapter"):
        model.apply({"params": slotted}, ids)
    with pytest.raises(ValueError, match="without adapter slots"):
        single.apply({"params": params_x}, ids, adapter_ids=np.zeros(2, np.int32))
    with pytest.raises(KeyError, match="no adapter 'z'"):
        single_adapter(model, slotted, "z")
    other = jax.tree.map(lambda x: x[..., :1], adapters[1])
    with pytest.raises(ValueError, match="other shapes"):
        stack_slots([adapters[0], other])
    assert params is not None
