"""Parameter-efficient fine-tuning: leaves a method adds, how layers use them, merge/unmerge.

One file per method: lora, adapters (Houlsby / Pfeiffer), prefix, prompt, ia3. Each method's
config sits in one field of the backbone config (`config.lora`, `.adapter`, `.prefix`,
`.prompt`, `.ia3`) and makes the model's own modules create its leaves; `add_peft` inserts fresh
ones into loaded params (`add_lora` for LoRA), `merge_peft` folds the mergeable ones (LoRA,
(IA)^3) into the base weights, `fold_prefix` removes prefix tuning's reparameterization.
"""

from ftjax.nn.adapters import AdapterConfig
from ftjax.nn.ia3 import IA3Config
from ftjax.nn.lora import (
    DEFAULT_TARGETS,
    LoraConfig,
    insert_lora,
    lora_only,
    lora_paths,
    merge,
    split_lora,
    unmerge,
)
from ftjax.nn.prefix import PrefixConfig
from ftjax.nn.prompt import PromptConfig
from ftjax.peft.attach import (
    MERGEABLE,
    PEFT_LEAVES,
    PEFT_METHODS,
    add_dense_method,
    add_lora,
    add_peft,
    dense_module_paths,
    merge_peft,
    method_config,
    with_lora,
    with_peft,
)
from ftjax.peft.fold import fold_prefix
from ftjax.peft.multi import AdapterSlots, from_adapters, single_adapter, stack_slots, with_slots
from ftjax.peft.presets import (
    METHODS,
    SUGGESTED_LEARNING_RATES,
    MethodConfig,
    method_spec,
)
from ftjax.utils.tree import insert_leaves, split_leaves

__all__ = [
    "METHODS", "SUGGESTED_LEARNING_RATES", "MethodConfig", "method_spec",
    "DEFAULT_TARGETS", "MERGEABLE", "PEFT_LEAVES", "PEFT_METHODS", "AdapterConfig", "IA3Config",
    "LoraConfig", "PrefixConfig", "PromptConfig", "add_dense_method", "add_lora", "add_peft", "AdapterSlots", "from_adapters",
    "dense_module_paths", "fold_prefix", "insert_leaves", "insert_lora", "lora_only",
    "lora_paths", "merge", "merge_peft", "method_config", "single_adapter",
    "split_leaves", "split_lora", "stack_slots", "unmerge", "with_lora", "with_peft", "with_slots",
]
