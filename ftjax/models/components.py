"""Regexes for the components of each architecture, for writing trainability specs.

They match canonical per-layer paths, so they serve both layouts:

    component("attention", "llama", layers=top(2, 30))  -> backbone/layers_(28|29)/self_attn/.*
    component("norms", "bert")                           -> every LayerNorm, embeddings' included
"""

from __future__ import annotations

from typing import Iterable

from ftjax.optim.selectors import NOTHING, layer_alternation

# name -> (pattern inside a block (after `layers_N/`), pattern outside the blocks); None: none.
_COMPONENTS: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "llama": {
        "attention": ("self_attn/.*", None),
        "mlp": ("mlp/.*", None),
        "norms": ("[^/]*norm/.*", "backbone/norm/.*"),
        "embeddings": (None, "backbone/embed_tokens/.*"),
        "final_norm": (None, "backbone/norm/.*"),
        "pooler": (None, None),
        "head": (None, "head/.*"),
    },
    "bert": {
        "attention": ("attention/.*", None),
        # BERT names its MLP `intermediate` + `output` (its attention output is attention/output).
        "mlp": ("(?:intermediate|output)/.*", None),
        "norms": ("[^/]*norm/.*", "backbone/embeddings/norm/.*"),
        "embeddings": (None, "backbone/embeddings/.*"),
        "final_norm": (None, None),  # post-LN: the last block's output_norm is the final norm
        "pooler": (None, "backbone/pooler/.*"),
        "head": (None, "head/.*"),
    },
}
COMPONENTS = tuple(_COMPONENTS["llama"])


def component(name: str, arch: str, layers: Iterable[int] | None = None) -> str:
    """Regex for one component of an architecture ("llama" or "bert").

    With `layers`, only the part of the component inside those blocks; without, the component
    everywhere (norms: every norm, the final / embedding norm included).
    """
    if arch not in _COMPONENTS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {tuple(_COMPONENTS)}")
    if name not in _COMPONENTS[arch]:
        raise ValueError(f"unknown component {name!r}; expected one of {COMPONENTS}")
    inside, outside = _COMPONENTS[arch][name]
    if layers is not None:
        if inside is None:
            raise ValueError(f"{name!r} does not live inside the blocks; select it without layers")
        return f"backbone/layers_{layer_alternation(layers)}/{inside}"
    options = [rf"backbone/layers_\d+/{inside}"] if inside else []
    options += [outside] if outside else []
    return "|".join(f"(?:{o})" for o in options) if options else NOTHING
