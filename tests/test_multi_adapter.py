"""Many adapters on one base: a mixed batch equals each row run with its own adapter."""

import jax
import numpy as np
import pytest

from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.peft import LoraConfig, add_lora, insert_lora, lora_only, split_lora
from ftjax.peft.multi import apply_mixed, select_adapter, stack_adapters


def _adapters(name, head, n):
    model = Model(preset(name), head)
    base = init_params(model, jax.random.key(0))
    lora = LoraConfig(rank=3, alpha=6.0)
    adapters = []
    for i in range(n):
        lora_model, params = add_lora(model, base, lora, jax.random.key(10 + i))
        # Non-zero B (fresh adapters are the identity), different per adapter.
        adapter = jax.tree_util.tree_map_with_path(
            lambda p, x, i=i: x + 0.5 * jax.random.normal(jax.random.key(100 + i), x.shape)
            if "lora_b" in jax.tree_util.keystr(p) else x, lora_only(params))
        adapters.append(adapter)
    return lora_model, split_lora(base)[0], adapters


@pytest.mark.parametrize("name,head", [("tiny-llama", HeadConfig()),
                                       ("tiny-bert", HeadConfig("sequence", 3, "mean"))])
def test_mixed_batch_equals_each_row_with_its_adapter(name, head):
    model, base, adapters = _adapters(name, head, 3)
    stacked = stack_adapters(adapters)
    cfg = model.config
    ids = jax.random.randint(jax.random.key(5), (4, 9), 3, cfg.vocab_size)
    mask = np.ones((4, 9), np.int32)
    mask[1, 6:] = 0
    adapter_ids = np.array([2, 0, 1, 2])
    traces = []

    def counted(*args, **kw):
        traces.append(1)  # runs only while tracing
        return apply_mixed(model, *args, **kw)

    mixed_fn = jax.jit(counted)
    mixed = mixed_fn(base, stacked, adapter_ids, ids, attention_mask=mask).logits
    mixed_fn(base, stacked, np.array([0, 1, 1, 0]), ids, attention_mask=mask)
    assert len(traces) == 1  # one compiled program serves any mix of adapters
    single = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m).logits)

    for row, adapter in enumerate(adapter_ids):
        params = insert_lora(base, select_adapter(stacked, int(adapter)))
        expected = single(params, ids[row:row + 1], mask[row:row + 1])[0]
        np.testing.assert_allclose(mixed[row], expected, rtol=2e-5, atol=2e-5)
    # The adapters really differ: row 0 run with another adapter gives another result.
    wrong = single(insert_lora(base, select_adapter(stacked, 0)), ids[0:1], mask[0:1])[0]
    assert not np.allclose(mixed[0], wrong, rtol=1e-3, atol=1e-3)


def test_stack_errors_are_clear():
    _, _, adapters = _adapters("tiny-llama", HeadConfig(), 1)
    other = jax.tree.map(lambda x: x[..., :1] if x.ndim == 2 else x, adapters[0])
    with pytest.raises(ValueError, match="other shapes"):
        stack_adapters([adapters[0], other])
    with pytest.raises(IndexError, match="the stack holds 1"):
        select_adapter(stack_adapters(adapters), 3)
