"""The model's keyword arguments from a pipeline batch (ftjax.data.features), for any model:
the step's forward pass and the extra forward passes of loss terms (a teacher's) share it."""

from __future__ import annotations

from ftjax.data.features import TASK_ID_FEATURE


def model_inputs(batch: dict, model) -> dict:
    """attention_mask and positions; segment_ids for a decoder, token_type_ids for an encoder
    that has them; with adapter slots (one adapter per task), each row's adapter is its
    task's."""
    kwargs = {"attention_mask": batch["attention_mask"], "positions": batch["positions"]}
    if model.adapter_slots is not None:
        kwargs["adapter_ids"] = batch[TASK_ID_FEATURE]
    if model.config.arch == "llama":
        kwargs["segment_ids"] = batch["segment_ids"]
    elif "token_type_ids" in batch:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    return kwargs
