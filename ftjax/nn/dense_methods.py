"""The extension point for PEFT methods that live in Dense layers.

A `DenseMethod` is a frozen dataclass the model config carries (`dense_methods`); every Dense
whose canonical per-layer path the method targets calls it on its output, inside the Dense's
compact __call__, so the method creates its own leaves there (with `module.param`, logical axes
included: they shard and stack under scan like the kernel beside them). A new method is one
subclass in one file; ftjax.peft.add_dense_method puts fresh leaves into a loaded model, and
the trainability rules name them by `leaves`.

    @dataclasses.dataclass(frozen=True)
    class OutputBias(DenseMethod):
        targets: str = r".*/(?:q_proj|v_proj)"
        leaves: str = r".*/output_bias"

        def __call__(self, module, x, y, deterministic):
            bias = module.param("output_bias", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), (module.axes[1],)), (y.shape[-1],),
                module.param_dtype)
            return y + bias.astype(y.dtype)
"""

from __future__ import annotations

import abc
import dataclasses
import re

from ftjax.utils.tree import canonical_module_path


@dataclasses.dataclass(frozen=True)
class DenseMethod(abc.ABC):
    """targets: regex (fullmatch) over canonical module paths of the Dense layers it changes;
    leaves: regex over parameter paths of the leaves it adds (for attachment and rules)."""

    targets: str = r".*"
    leaves: str = r"(?!)"

    def targets_module(self, module_path: str) -> bool:
        return re.fullmatch(self.targets, canonical_module_path(module_path)) is not None

    @abc.abstractmethod
    def __call__(self, module, x, y, deterministic: bool):
        """The Dense output `y` (computed from input `x`) as this method changes it."""
