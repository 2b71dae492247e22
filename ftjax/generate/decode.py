"""Batched autoregressive decoding with a KV cache: one jitted prefill, one jitted decode loop.

Shape policy (so that repeated requests reuse compiled programs):
  - prompts are LEFT-padded to a common length rounded up to a multiple of PROMPT_BUCKET, so every
    row's last prompt token sits in the last column and all rows write the cache in lockstep;
  - the cache holds round_up(prompt length + max_new_tokens, CACHE_BUCKET) slots, plus a soft
    prompt's P virtual tokens (prompt tuning, config.prompt): the prefill writes them in front
    of the prompt, and later steps attend to them in the cache like to any earlier token;
  - max_new_tokens, eos ids, pad id, temperature, top_p and the seed are traced values.
So a compile is keyed by (batch size, prompt bucket, cache bucket, sampler kind, model); two
requests of similar length with different settings share both programs.

Why one `lax.while_loop` rather than a Python loop over a jitted step: the loop runs entirely on
the device, so the host neither dispatches nor synchronizes once per token (a Python loop must
read a flag back every step to stop early when all rows are done), and XLA updates the cache in
the loop carry in place. The cost is no token streaming; a streaming API would be a Python loop
over the same step.

Rows that emit an EOS id stop: later slots hold pad and the row's input to the model is pad
(its outputs are discarded). The loop exits when every row is done or max_new_tokens is reached.
Token t (t = 0 for the first new token) is drawn with fold_in(key(seed), t), so a fixed seed
reproduces a batch exactly; a row's sampled draws depend on the batch it is in.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.generate.sampling import (
    DecodeContext,
    Sampler,
    SamplingConfig,
    SamplingKnobs,
)
from ftjax.models import Model, init_cache
from ftjax.peft.fold import fold_prefix

PROMPT_BUCKET = 32
CACHE_BUCKET = 64


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class DecodeShapes:
    """Static shapes of one generation call: B rows, P padded prompt columns, S cache slots
    (of which `virtual` hold a soft prompt)."""

    batch: int
    prompt_length: int
    cache_length: int
    virtual: int = 0


def virtual_tokens(model: Model) -> int:
    """Cache slots a model's soft prompt takes before the real tokens (0 without one)."""
    prompt = getattr(model.config, "prompt", None)
    return prompt.num_tokens if prompt is not None else 0


def plan_shapes(prompt_lengths: Sequence[int], max_new_tokens: int,
                virtual: int = 0) -> DecodeShapes:
    prompt_length = round_up(max(prompt_lengths), PROMPT_BUCKET)
    cache_length = round_up(virtual + prompt_length + max_new_tokens, CACHE_BUCKET)
    return DecodeShapes(len(prompt_lengths), prompt_length, cache_length, virtual)


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
    """(ids (B, length) int32, mask (B, length) int32) with each prompt flush right."""
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):] = 1
    return ids, mask


@functools.partial(jax.jit, static_argnames=("model", "cache_length", "sampler"))
def _prefill(model: Model, params, prompt_ids_BP, prompt_mask_BP, knobs: SamplingKnobs, key,
             pad_id, adapter_ids_B=None, *, cache_length: int, sampler: Sampler):
    """Run the prompts through the model, filling a fresh cache; choose the first new token.

    Returns (cache, generated (B, N) with the first token in column 0 and pad elsewhere).
    """
    B, P = prompt_ids_BP.shape
    virtual = virtual_tokens(model)
    cache = init_cache(model.config, B, cache_length)
    # A soft prompt goes in front of the prompts here, once; decode steps find it in the cache.
    start = {"with_prompt": True} if virtual else {}
    out = model.apply({"params": params}, prompt_ids_BP, attention_mask=prompt_mask_BP,
                      cache=cache, prefill=True, **start, **row_adapters(adapter_ids_B))
    generated_BN = jnp.full((B, cache_length - virtual - P), pad_id, jnp.int32)
    context = DecodeContext(prompt_ids_BP, prompt_mask_BP, generated_BN, jnp.int32(0))
    # Left padding puts every row's last real token in the last column.
    first_B = sampler(out.logits[:, -1], jax.random.fold_in(key, 0), knobs, context)
    return out.cache, generated_BN.at[:, 0].set(first_B)


@functools.partial(jax.jit, static_argnames=("model", "sampler"), donate_argnames=("cache",))
def _decode_loop(model: Model, params, cache, generated_BN, prompt_ids_BP, prompt_mask_BP,
                 max_new_tokens, eos_ids_E, pad_id, knobs: SamplingKnobs, key, adapter_ids_B=None,
                 *, sampler: Sampler):
    """Feed each new token back until every row hit EOS or max_new_tokens tokens exist.

    Returns (generated (B, N), steps, cache): columns [0, steps) were produced. The cache is
    returned so that the donated input cache can alias it: the loop then updates the one buffer
    in place instead of holding two caches.
    """
    B = generated_BN.shape[0]
    done_B = jnp.isin(generated_BN[:, 0], eos_ids_E)

    def keep_going(state):
        step, _, _, done_B = state
        return (step < max_new_tokens) & ~jnp.all(done_B)

    def one_token(state):
        step, cache, generated_BN, done_B = state
        previous_B1 = jax.lax.dynamic_slice(generated_BN, (0, step - 1), (B, 1))
        out = model.apply({"params": params}, previous_B1,
                          attention_mask=jnp.ones((B, 1), jnp.int32), cache=cache,
                          **row_adapters(adapter_ids_B))
        context = DecodeContext(prompt_ids_BP, prompt_mask_BP, generated_BN, step)
        token_B = sampler(out.logits[:, 0], jax.random.fold_in(key, step), knobs, context)
        token_B = jnp.where(done_B, pad_id, token_B)
        generated_BN = jax.lax.dynamic_update_slice(generated_BN, token_B[:, None], (0, step))
        return step + 1, out.cache, generated_BN, done_B | jnp.isin(token_B, eos_ids_E)

    steps, cache, generated_BN, _ = jax.lax.while_loop(
        keep_going, one_token, (jnp.int32(1), cache, generated_BN, done_B))
    return generated_BN, steps, cache


@dataclasses.dataclass
class Generation:
    """Result of `run_generation`; times are wall seconds measured with block_until_ready.

    token_ids: new tokens per row, EOS excluded (see `generate_ids`).
    compile_seconds: the warm-up run (compiling prefill + decode loop, then a 1-token run), or
      0.0 when no warm-up was asked for; then the timed runs include any compile.
    prefill_seconds: prompt forward pass plus the first token.
    decode_seconds / decode_steps: the loop producing tokens 2..; each step advances every row
      (finished rows included), so rows * steps / seconds is the batch decode throughput.
    """

    token_ids: list[list[int]]
    shapes: DecodeShapes
    prompt_tokens: int
    compile_seconds: float
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int

    @property
    def decode_tokens_per_second(self) -> float:
        if not self.decode_steps:
            return 0.0
        return self.shapes.batch * self.decode_steps / self.decode_seconds


def row_adapters(adapter_ids_B) -> dict:
    """The model's keyword for each row's adapter, when the model holds several."""
    return {} if adapter_ids_B is None else {"adapter_ids": adapter_ids_B}


def adapter_ids_of(model: Model, adapters: Sequence[int] | None, rows: int):
    """Checked per-row adapter indices as an array (None for a model of one adapter)."""
    slots = model.adapter_slots
    if slots is None:
        if adapters is not None:
            raise ValueError("adapters were chosen per prompt, but the model holds one adapter")
        return None
    if adapters is None or len(adapters) != rows:
        raise ValueError(f"the model holds adapters {list(slots.names)}: give one per prompt "
                         f"({rows} prompts)")
    bad = [a for a in adapters if not 0 <= int(a) < slots.size]
    if bad:
        raise ValueError(f"adapter indices {bad} do not exist; the model holds {slots.size}")
    return jnp.asarray(adapters, jnp.int32)


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or not len(prompt):
            raise ValueError(f"prompt {i} is empty or not a list of ids: a decoder needs at least "
                             f"one token to condition on (e.g. BOS)")
        bad = [t for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds ids outside the vocabulary [0, {vocab_size}): "
                             f"{bad[:5]}")


@dataclasses.dataclass(frozen=True)
class Request:
    """What every decoder (sampling, beam search) settles before it runs."""

    virtual: int  # soft-prompt / prefix positions ahead of the prompt
    eos_ids: list[int]
    pad_id: int


def prepare_request(model: Model, params, prompts, max_new_tokens, *, eos_ids, pad_id,
                    max_length) -> tuple[Model, Any, Request]:
    """Checks the prompts and lengths, folds a prefix MLP away and fills the defaults of
    eos_ids / pad_id / max_length from the model's config."""
    cfg = model.config
    _check_prompts(prompts, cfg.vocab_size)
    if getattr(cfg, "prefix", None) is not None and cfg.prefix.projection:
        # The prefix MLP is a training device: evaluate it once here rather than at every
        # decode step (SmolLM2 with 20 prefix tokens and a 512-wide MLP: 20 x (576 x 512 +
        # 512 x 30 x 2 x 192) = 124M multiply-adds per step, the model's cost for one token).
        model, params = fold_prefix(model, params)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    max_length = cfg.max_position_embeddings if max_length is None else max_length
    virtual = virtual_tokens(model)
    if virtual + longest + max_new_tokens > max_length:
        soft = f" plus the soft prompt ({virtual} virtual tokens)" if virtual else ""
        raise ValueError(
            f"the longest prompt ({longest} tokens){soft} plus max_new_tokens ({max_new_tokens}) "
            f"exceeds max_length={max_length} (default: the model's max_position_embeddings); "
            f"shorten the prompt, ask for fewer tokens or pass a larger max_length")
    if eos_ids is None:
        eos_ids = [] if cfg.eos_token_id is None else [cfg.eos_token_id]
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return model, params, Request(virtual, list(eos_ids), pad_id)


def run_generation(
    model: Model,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    max_length: int | None = None,
    warmup: bool = False,
    adapters: Sequence[int] | None = None,
) -> Generation:
    """`generate_ids` plus timings; `warmup=True` compiles first and times compile separately."""
    adapter_ids = adapter_ids_of(model, adapters, len(prompts))
    model, params, request = prepare_request(model, params, prompts, max_new_tokens,
                                             eos_ids=eos_ids, pad_id=pad_id,
                                             max_length=max_length)
    virtual, eos_ids, pad_id = request.virtual, request.eos_ids, request.pad_id
    shapes = plan_shapes([len(p) for p in prompts], int(max_new_tokens), virtual)
    ids, mask = left_pad(prompts, shapes.prompt_length, pad_id)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    # A (1,) sentinel when there are none: isin against it is always False.
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    pad = jnp.int32(pad_id)
    sampler, knobs, key = sampling.sampler(), sampling.knobs(), sampling.key()

    def prefill():
        return _prefill(model, params, ids, mask, knobs, key, pad, adapter_ids,
                        cache_length=shapes.cache_length, sampler=sampler)

    def decode(cache, generated, limit):
        return _decode_loop(model, params, cache, generated, ids, mask, jnp.int32(limit), eos,
                            pad, knobs, key, adapter_ids, sampler=sampler)

    compile_seconds = 0.0
    if warmup:  # the same shapes with a 1-token limit: compiles both programs, runs no loop step
        start = time.perf_counter()
        jax.block_until_ready(decode(*prefill(), 1))
        compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    cache, generated = jax.block_until_ready(prefill())
    prefilled = time.perf_counter()
    generated, steps, _ = jax.block_until_ready(decode(cache, generated, max_new_tokens))
    finished = time.perf_counter()

    steps = int(steps)
    stops = set(int(e) for e in eos_ids)
    rows = []
    for row in np.asarray(generated)[:, :steps].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return Generation(
        token_ids=rows, shapes=shapes, prompt_tokens=sum(len(p) for p in prompts),
        compile_seconds=compile_seconds, prefill_seconds=prefilled - start,
        decode_seconds=finished - prefilled, decode_steps=steps - 1,
    )


def generate_ids(
    model: Model,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    max_length: int | None = None,
    adapters: Sequence[int] | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens.

    Returns the NEW tokens of each row, in prompt order, with the stopping EOS EXCLUDED: a row
    shorter than max_new_tokens stopped at an EOS id; a row of exactly max_new_tokens ran out.
    eos_ids: ids that end a row (default: the model config's eos_token_id; [] never stops).
    pad_id: filler for left padding and finished rows (default: config pad_token_id, else 0);
      never attended to and never returned.
    max_length: the longest prompt + max_new_tokens may not exceed it (default: the model's
      max_position_embeddings); a ValueError says so before anything runs.
    adapters: with a model of many adapters (ftjax.peft.from_adapters), each prompt's adapter
      index; all rows decode together in one program.
    Works with `config.scan_layers` True or False (params in the matching layout).
    """
    return run_generation(model, params, prompts, max_new_tokens=max_new_tokens,
                          sampling=sampling, eos_ids=eos_ids, pad_id=pad_id,
                          max_length=max_length, adapters=adapters).token_ids
