"""The DenseMethod extension point: a method defined here adds its leaves to every targeted
Dense, in both layer layouts, starts as the base function, and is refused where it cannot go."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from ftjax.models import Model, init_params, preset
from ftjax.models.layout import to_layout
from ftjax.nn.dense_methods import DenseMethod
from ftjax.peft import add_dense_method, merge_peft
from ftjax.utils.tree import leaf_paths


@dataclasses.dataclass(frozen=True)
class OutputBias(DenseMethod):
    targets: str = r".*/(?:q_proj|v_proj)"
    leaves: str = r".*/output_bias"

    def __call__(self, module, x, y, deterministic):
        bias = module.param("output_bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (module.axes[1],)), (y.shape[-1],), module.param_dtype)
        return y + bias.astype(y.dtype)


@pytest.mark.parametrize("scan", [False, True])
def test_leaves_in_both_layouts_and_identity_at_init(scan):
    model = Model(preset("tiny-llama", scan_layers=scan))
    params = to_layout(init_params(Model(preset("tiny-llama")), jax.random.key(0)), scan)
    ids = np.arange(12).reshape(2, 6) % 97
    before = model.apply({"params": params}, ids).logits
    adapted, with_bias = add_dense_method(model, params, OutputBias(), jax.random.key(1))
    added = [p for p in leaf_paths(with_bias) if p.endswith("output_bias")]
    if scan:  # stacked on the layer axis like the kernel beside it
        assert added == ["backbone/layers/block/self_attn/q_proj/output_bias",
                         "backbone/layers/block/self_attn/v_proj/output_bias"]
        assert with_bias["backbone"]["layers"]["block"]["self_attn"]["q_proj"][
            "output_bias"].shape[0] == 2
    else:
        assert len(added) == 4 and all("layers_" in p for p in added)
    np.testing.assert_array_equal(adapted.apply({"params": with_bias}, ids).logits, before)


def test_a_method_that_targets_nothing_or_cannot_merge_is_refused():
    model = Model(preset("tiny-llama"))
    params = init_params(model, jax.random.key(0))
    with pytest.raises(ValueError, match="match no module"):
        add_dense_method(model, params, OutputBias(targets="nothing/.*"), jax.random.key(1))
    adapted, with_bias = add_dense_method(model, params, OutputBias(), jax.random.key(1))
    with pytest.raises(ValueError, match="already carry"):
        add_dense_method(adapted, with_bias, OutputBias(), jax.random.key(1))
    with pytest.raises(ValueError, match="OutputBias.*cannot be merged"):
        merge_peft(adapted, with_bias)
