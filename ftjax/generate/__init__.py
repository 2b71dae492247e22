"""Text generation: samplers, the KV-cache decode loop, prompt encoding and `generate`.

This package is itself callable: `ftjax.generate("smollm2-135m-instruct", "Hi")` is
`ftjax.generate.generate(...)`. A plain `generate` attribute on `ftjax` cannot work, because
importing this package (or any module in it) makes the import system bind `ftjax.generate` to the
package, replacing whatever function was there.
"""

import sys
import types

from ftjax.data.chat import chat_messages, encode_prompts
from ftjax.generate.api import complete, generate
from ftjax.generate.beam import BeamResult, beam_search
from ftjax.generate.decode import Generation, generate_ids, run_generation
from ftjax.generate.sampling import (
    DecodeContext,
    LogitsProcessor,
    Sampler,
    SamplingConfig,
    SamplingKnobs,
    apply_temperature,
    draw,
    greedy,
    nucleus_of_sorted,
    sample,
    top_k_candidates,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "BeamResult", "DecodeContext", "Generation", "LogitsProcessor", "Sampler", "SamplingConfig",
    "SamplingKnobs", "apply_temperature", "beam_search", "chat_messages", "complete", "draw",
    "encode_prompts", "generate", "generate_ids", "greedy", "nucleus_of_sorted", "run_generation",
    "sample", "top_k_candidates", "top_k_filter", "top_p_filter",
]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
