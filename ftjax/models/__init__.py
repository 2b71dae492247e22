"""Flax Linen models: Llama-family decoder, BERT encoder, task heads."""

from ftjax.models.config import (
    PRESETS,
    BertConfig,
    HeadConfig,
    LlamaConfig,
    default_compute_dtype,
    preset,
)
from ftjax.models.kv_cache import init_cache, stacked_kv
from ftjax.models.model import (
    Model,
    ModelOutput,
    init_params,
    lm_head_rows,
    logical_axes,
    param_shapes,
    replace_head,
    verbalizer_from_lm,
)
from ftjax.models.sharding import plan_for_model

__all__ = [
    "PRESETS", "BertConfig", "HeadConfig", "LlamaConfig", "Model", "ModelOutput",
    "default_compute_dtype", "init_cache", "init_params", "lm_head_rows", "logical_axes",
    "param_shapes", "plan_for_model", "preset", "replace_head", "stacked_kv", "verbalizer_from_lm",
]
