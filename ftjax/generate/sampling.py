"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus), combinable.

Every sampler is a pure function of fp32 logits (B, V) and, where it draws, a PRNG key. The order
is the usual one: logits processors (none are built in yet: repetition penalty, logit bias, banned
words and constraints will be `LogitsProcessor`s) -> temperature -> top-k -> top-p -> draw.

A `SamplingConfig` splits into two parts so that decoding compiles as rarely as possible:
  - `Sampler` (static, hashable): greedy or not, k, whether top-p is on, the processors. These
    change the traced program (k is a shape; the others add or drop ops).
  - `SamplingKnobs` (traced arrays): temperature and top_p. Changing them reuses the compiled
    decode loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class DecodeContext:
    """What a logits processor may look at, all traced (shapes fixed for one compiled loop).

    prompt_ids / prompt_mask: (B, P) the left-padded prompts and their real-token mask.
    generated_ids: (B, N) tokens produced so far; slots at index >= step hold pad.
    step: int32 scalar, the index of the token being chosen now (0 for the first new token).
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    generated_ids: jax.Array
    step: jax.Array


# (logits (B, V) fp32, context) -> logits (B, V). Must be traceable and hashable (a plain function
# or a frozen dataclass): processors are part of the static `Sampler`.
LogitsProcessor = Callable[[jax.Array, DecodeContext], jax.Array]


def greedy(logits_BV: jax.Array) -> jax.Array:
    """The most likely token of each row (the lowest id on ties)."""
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def apply_temperature(logits_BV: jax.Array, temperature) -> jax.Array:
    """Divide by the temperature (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    return logits_BV / jnp.asarray(temperature, logits_BV.dtype)


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    """Keep each row's k largest logits, set the rest to -inf. k <= 0 or k >= V keeps all.

    Ties with the k-th largest value are all kept, so a row may keep slightly more than k.
    """
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    kth_largest_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV < kth_largest_B1, -jnp.inf, logits_BV)


def top_p_filter(logits_BV: jax.Array, top_p) -> jax.Array:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches
    top_p (the most likely token always survives), set the rest to -inf.

    top_p may be traced. Ties with the last kept value are kept.
    """
    sorted_desc = -jnp.sort(-logits_BV, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly better tokens
    keep = mass_before < jnp.asarray(top_p, probs.dtype)
    keep = keep.at[:, 0].set(True)  # top_p ~ 0 still leaves the argmax
    # Kept entries are a prefix of the sorted row: the smallest kept value is the threshold.
    threshold_B1 = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)


def draw(logits_BV: jax.Array, rng: jax.Array) -> jax.Array:
    """One token per row from softmax(logits); -inf logits are never drawn."""
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@flax.struct.dataclass
class SamplingKnobs:
    """The traced part of a sampling config: changing these does not recompile decoding."""

    temperature: jax.Array  # float32 scalar
    top_p: jax.Array  # float32 scalar


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The static part of a sampling config (hashable: a jit static argument)."""

    greedy: bool = False
    top_k: int = 0
    use_top_p: bool = False
    processors: tuple[LogitsProcessor, ...] = ()

    def __call__(self, logits_BV: jax.Array, rng: jax.Array, knobs: SamplingKnobs,
                 context: DecodeContext | None = None) -> jax.Array:
        """Token ids (B,) int32 for fp32 logits (B, V)."""
        for process in self.processors:
            logits_BV = process(logits_BV, context)
        if self.greedy:
            return greedy(logits_BV)
        logits_BV = apply_temperature(logits_BV, knobs.temperature)
        logits_BV = top_k_filter(logits_BV, self.top_k)
        if self.use_top_p:
            logits_BV = top_p_filter(logits_BV, knobs.top_p)
        return draw(logits_BV, rng)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each new token.

    greedy: take the argmax (temperature, top_k, top_p and seed are then ignored).
      temperature == 0 also means greedy, as in most generation APIs.
    temperature: > 0; logits are divided by it before filtering and drawing.
    top_k: keep only the k most likely tokens (0: no limit).
    top_p: nucleus sampling mass in (0, 1] (1: no limit).
    seed: the PRNG seed; token t of a batch is drawn with fold_in(key(seed), t).
    processors: logits transforms applied first, in order (see `LogitsProcessor`).
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    processors: tuple[LogitsProcessor, ...] = ()

    def __post_init__(self):
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 means no limit), got {self.top_p}")
        object.__setattr__(self, "processors", tuple(self.processors))

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def sampler(self) -> Sampler:
        if self.is_greedy:
            return Sampler(greedy=True, processors=self.processors)
        return Sampler(top_k=int(self.top_k), use_top_p=self.top_p < 1, processors=self.processors)

    def knobs(self) -> SamplingKnobs:
        # Greedy ignores them; fixed values keep the argument identical (no effect on compiles).
        temperature = 1.0 if self.is_greedy else self.temperature
        return SamplingKnobs(temperature=jnp.float32(temperature), top_p=jnp.float32(self.top_p))

    def key(self) -> jax.Array:
        return jax.random.key(self.seed)


def sample(logits_BV: jax.Array, rng: jax.Array, config: SamplingConfig,
           context: DecodeContext | None = None) -> jax.Array:
    """Token ids (B,) for logits (B, V) under `config` (convenience outside the decode loop)."""
    return config.sampler()(logits_BV, rng, config.knobs(), context)
