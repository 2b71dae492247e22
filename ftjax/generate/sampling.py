"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus), combinable.

Every sampler is a pure function of fp32 logits (B, V) and, where it draws, a PRNG key. The order
is the usual one: logits processors (none are built in yet: repetition penalty, logit bias, banned
words and constraints will be `LogitsProcessor`s) -> temperature -> top-k -> top-p -> draw. With
top-k the draw is among the k candidates (top-p renormalizes over them, as filtering then
softmax would).

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
    """Keep each row's k largest logits (exactly k: ties go to the lower id), set the rest to
    -inf. k <= 0 or k >= V keeps all. The sampler itself draws among `top_k_candidates`."""
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    values_BK, ids_BK = top_k_candidates(logits_BV, k)
    rows_B1 = jnp.arange(logits_BV.shape[0])[:, None]
    return jnp.full_like(logits_BV, -jnp.inf).at[rows_B1, ids_BK].set(values_BK)


def top_k_candidates(logits_BV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(logits (B, k) sorted descending, their token ids (B, k)).

    Drawing among these and mapping back through the ids avoids materializing a filtered (B, V)
    row. Use the ids, not just the values, on CPU: when only the values feed the result, XLA
    lowers top_k to a full sort of the vocabulary (~15 ms per 49k row instead of ~0.1 ms).
    """
    return jax.lax.top_k(logits_BV, k)


def nucleus_of_sorted(sorted_logits_BK: jax.Array, top_p) -> jax.Array:
    """Top-p on logits already sorted descending along the last axis: the smallest prefix whose
    probability reaches top_p survives (always at least the first); the rest become -inf."""
    probs = jax.nn.softmax(sorted_logits_BK, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly better tokens
    keep = mass_before < jnp.asarray(top_p, probs.dtype)
    keep = keep.at[:, 0].set(True)  # top_p ~ 0 still leaves the argmax
    return jnp.where(keep, sorted_logits_BK, -jnp.inf)


def top_p_filter(logits_BV: jax.Array, top_p) -> jax.Array:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches
    top_p (the most likely token always survives), set the rest to -inf. top_p may be traced.

    No sort: the kept set is {p_i >= t} for the largest t whose set still holds top_p of the
    mass, and t is found by bisection over the bit patterns of the probabilities (for floats
    >= 0 their int32 patterns are ordered like the values, so 32 halvings land on t exactly).
    That is 32 masked sums over the row instead of a full sort of the vocabulary, which on CPU
    costs ~18 ms per 49k row. Ties with the threshold are kept.
    """
    probs_BV = jax.nn.softmax(logits_BV, axis=-1)
    bits_BV = jax.lax.bitcast_convert_type(probs_BV, jnp.int32)
    top_p = jnp.asarray(top_p, probs_BV.dtype)

    def halve(_, bounds):  # invariant: mass(>= lo) >= top_p > mass(>= hi)
        lo_B1, hi_B1 = bounds
        mid_B1 = lo_B1 + (hi_B1 - lo_B1) // 2
        mass_B1 = jnp.sum(jnp.where(bits_BV >= mid_B1, probs_BV, 0.0), axis=-1, keepdims=True)
        enough = mass_B1 >= top_p
        return jnp.where(enough, mid_B1, lo_B1), jnp.where(enough, hi_B1, mid_B1)

    lo_B1 = jnp.zeros((logits_BV.shape[0], 1), jnp.int32)
    hi_B1 = jnp.max(bits_BV, axis=-1, keepdims=True) + 1
    threshold_B1, _ = jax.lax.fori_loop(0, 32, halve, (lo_B1, hi_B1))
    return jnp.where(bits_BV >= threshold_B1, logits_BV, -jnp.inf)


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
        if 0 < self.top_k < logits_BV.shape[-1]:
            candidates_BK, ids_BK = top_k_candidates(logits_BV, self.top_k)
            if self.use_top_p:
                candidates_BK = nucleus_of_sorted(candidates_BK, knobs.top_p)
            choice_B1 = draw(candidates_BK, rng)[:, None]
            return jnp.take_along_axis(ids_BK, choice_B1, axis=-1)[:, 0]
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
