"""Parameter-efficient fine-tuning: leaves a method adds, how layers use them, merge/unmerge.

One file per method. LoRA: `LoraConfig` on the backbone config (`config.lora`) makes every
targeted Dense own `lora_a` / `lora_b`; `add_lora` inserts fresh ones into loaded params.
"""

from ftjax.peft.attach import add_lora, dense_module_paths, with_lora
from ftjax.peft.multi import apply_mixed, num_adapters, select_adapter, stack_adapters
from ftjax.peft.lora import (
    DEFAULT_TARGETS,
    LoraConfig,
    insert_lora,
    lora_only,
    lora_paths,
    merge,
    split_lora,
    unmerge,
)

__all__ = [
    "DEFAULT_TARGETS", "LoraConfig", "add_lora", "apply_mixed", "dense_module_paths",
    "insert_lora", "lora_only", "lora_paths", "merge", "num_adapters", "select_adapter",
    "split_lora", "stack_adapters", "unmerge", "with_lora",
]
