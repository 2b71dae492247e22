"""Text in, text out: the notebook entry point `ftjax.generate(...)`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ftjax.data.chat import encode_prompts
from ftjax.generate.beam import beam_search
from ftjax.generate.decode import Generation, run_generation
from ftjax.generate.sampling import SamplingConfig
from ftjax.io import load_pretrained
from ftjax.models import Model


def stop_ids(model: Model, tokenizer: Any) -> list[int]:
    """EOS ids from the tokenizer and the model config (they usually agree; either may be unset)."""
    ids = {getattr(tokenizer, "eos_id", None), model.config.eos_token_id}
    return sorted(i for i in ids if i is not None)


def complete(model: Model, params, tokenizer: Any, texts: Sequence[str], *,
             sampling: SamplingConfig, max_new_tokens: int, chat: bool = False,
             system: str | None = None, warmup: bool = False, num_beams: int = 1,
             length_penalty: float = 1.0,
             adapters: Sequence[int] | None = None) -> tuple[list[str], Generation]:
    """Continuations of `texts` (special tokens dropped) plus the token-level `Generation`.

    num_beams > 1: beam search (`ftjax.generate.beam`; `sampling` and `warmup` are then ignored)
    with score sum(log p) / length ** length_penalty; 1 keeps greedy / sampled decoding.
    adapters: with a model of many adapters (ftjax.peft.from_adapters / io.load_adapters),
    each text's adapter index; every row decodes with its own in one batch.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {i} is a {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"prompt {i} is empty or blank: give some text to continue or answer")
    prompt_ids = encode_prompts(tokenizer, texts, chat=chat, system=system)
    return complete_ids(model, params, tokenizer, prompt_ids, sampling=sampling,
                        max_new_tokens=max_new_tokens, warmup=warmup, num_beams=num_beams,
                        length_penalty=length_penalty, adapters=adapters)


def complete_ids(model: Model, params, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *,
                 sampling: SamplingConfig, max_new_tokens: int, warmup: bool = False,
                 num_beams: int = 1, length_penalty: float = 1.0,
                 adapters: Sequence[int] | None = None) -> tuple[list[str], Generation]:
    """`complete` for prompts already encoded (a task's own prompt ids)."""
    if num_beams > 1:
        result = beam_search(model, params, prompt_ids, max_new_tokens=max_new_tokens,
                             num_beams=num_beams, length_penalty=length_penalty,
                             eos_ids=stop_ids(model, tokenizer),
                             pad_id=tokenizer.pad_id, adapters=adapters).generation
    else:
        result = run_generation(model, params, prompt_ids, max_new_tokens=max_new_tokens,
                                sampling=sampling, eos_ids=stop_ids(model, tokenizer),
                                pad_id=tokenizer.pad_id, warmup=warmup, adapters=adapters)
    texts_out = [tokenizer.decode(ids, skip_special_tokens=True) for ids in result.token_ids]
    return texts_out, result


def decode_prompts(model: Model, params, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                   batch_size: int = 32, max_new_tokens: int = 128, num_beams: int = 1,
                   length_penalty: float = 1.0) -> list[str]:
    """Greedy (or beam-searched) text of every encoded prompt, stripped, decoded in chunks of
    `batch_size` prompts (generation evaluation and teachers' targets)."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts, _ = complete_ids(model, params, tokenizer, prompts[start : start + batch_size],
                                sampling=SamplingConfig(greedy=True),
                                max_new_tokens=max_new_tokens, num_beams=num_beams,
                                length_penalty=length_penalty)
        out.extend(text.strip() for text in texts)
    return out


def _resolve(model_or_pretrained: Any, params: Any, tokenizer: Any) -> tuple[Model, Any, Any]:
    """(model, params, tokenizer) from a Pretrained, a name/path, or a Model plus keywords."""
    if isinstance(model_or_pretrained, (str, os.PathLike)):
        model_or_pretrained = load_pretrained(model_or_pretrained)
    if isinstance(model_or_pretrained, Model):
        model = model_or_pretrained
    elif all(hasattr(model_or_pretrained, a) for a in ("model", "params", "tokenizer")):
        model = model_or_pretrained.model
        params = model_or_pretrained.params if params is None else params
        tokenizer = model_or_pretrained.tokenizer if tokenizer is None else tokenizer
    else:
        raise TypeError(f"expected a Pretrained (from ftjax.io.load_pretrained), a model name or "
                        f"path, or a Model with params= and tokenizer=; got "
                        f"{type(model_or_pretrained).__name__}")
    if params is None and getattr(model_or_pretrained, "params", 0) is None:
        raise TypeError("this Pretrained's params moved into a training state "
                        "(build_experiment): pass the Experiment itself, or params=exp.params")
    if params is None or tokenizer is None:
        raise TypeError("a bare Model needs params= and tokenizer=")
    return model, params, tokenizer


def generate(
    model_or_pretrained: Any,
    prompts: str | Sequence[str],
    *,
    chat: bool = False,
    max_new_tokens: int = 64,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    system: str | None = None,
    params: Any = None,
    tokenizer: Any = None,
) -> str | list[str]:
    """Continue one prompt (str -> str) or several (list -> list, batched in one decode).

    model_or_pretrained: a `Pretrained` (ftjax.io.load_pretrained), a model name or path (loaded
      on every call: load once and pass the Pretrained when calling repeatedly), or a `Model`
      together with params= and tokenizer=.
    chat: wrap each prompt as a user message (after `system`, if given) in the tokenizer's chat
      template with the assistant generation prompt.
    greedy (or temperature=0): argmax decoding; otherwise sample with temperature, top_k (0: off)
      and top_p (1: off), reproducibly for a given seed and batch.
    num_beams > 1: beam search instead (deterministic; the sampling options are ignored), ranking
      by sum(log p) / length ** length_penalty (length counts the EOS).
    Stops at the tokenizer's / model's EOS or after max_new_tokens; special tokens are dropped
    from the returned text.
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    if not texts:
        return []
    model, params, tokenizer = _resolve(model_or_pretrained, params, tokenizer)
    sampling = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed)
    outputs, _ = complete(model, params, tokenizer, texts, sampling=sampling,
                          max_new_tokens=max_new_tokens, chat=chat, system=system,
                          num_beams=num_beams, length_penalty=length_penalty)
    return outputs[0] if single else outputs
