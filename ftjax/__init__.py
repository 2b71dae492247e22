"""ftjax: fine-tuning language models on one functional JAX core."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: `import ftjax` must not import jax/flax. `ftjax.generate` is the generate package,
    # which is callable (see ftjax/generate/__init__.py), so `ftjax.generate(model, "Hi")` works.
    if name == "generate":
        return importlib.import_module("ftjax.generate")
    raise AttributeError(f"module 'ftjax' has no attribute {name!r}")
