"""The loss-term protocol: the step minimizes a weighted sum of named terms.

    loss = sum over terms t of  weight_t(step) * value_t

A term is a `LossTerm` subclass with a settings block (`Config`, a subclass of `TermConfig`) and
one of two scopes:

- per example (`per_example = True`): evaluated on every micro-batch from the step's shared
  forward pass (`ctx.output`) or extra forward passes of its own (`ctx.forward(...)`: another
  dropout draw, perturbed embeddings, a teacher model held in `ctx.constants`). It returns
  SUMS over the micro-batch's examples or tokens; the step divides by `normalizer(batch)`
  summed over the whole global batch, which is known before any forward pass, so accumulation
  over micro-batches weighs every example the same however the batch is split.
- per step (`per_example = False`): a function of the trainable parameters alone (L1, L2-SP,
  EWC), evaluated once per optimizer step.

A term may own two pytrees that live in the train state, sharded like the rest of it and never
differentiated:
- `constants(setup)`: rebuilt identically whenever the run is set up (an anchor copy of the
  pretrained weights, a teacher's parameters); not saved in checkpoints, not donated.
- `init_state(setup)`: state that changes during training (a Fisher diagonal, a replay index,
  a moving average of the parameters); saved in checkpoints, updated once per step by
  `update_state`.

A term may also own parameters that train with the model (`init_params`: a learned projection
between a student's and a teacher's widths). They live in the parameter tree under
TERM_PARAMS/<term name> ("terms/..."), always trainable at the run's learning rate, in the
optimizer and in checkpoints like any trained leaf, and never in an export (TrainState.params
is the model's own tree); the term reads them from `ctx.params[TERM_PARAMS][name]`.

The weight follows a schedule of the step (`TermConfig.weight_start` .. `weight` over a ramp),
computed inside the jitted step, so a changing weight never recompiles.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ftjax.settings import setting


# The top-level key of the terms' own parameters in the parameter tree (see above).
TERM_PARAMS = "terms"


@dataclasses.dataclass(frozen=True)
class TermConfig:
    """Settings every term has (an entry of the `losses` config block); terms add their own."""

    kind: str = setting("", "the term: a built-in name (ftjax.objectives.TERMS) or "
                        "'module:Class'; empty: the entry's name")
    weight: float = setting(1.0, "the term's weight (after the ramp, if any)")
    weight_start: float | None = setting(
        None, "the weight before ramp_start, ramped to `weight` over ramp_steps; None: "
        "constant weight")
    ramp_start: int = setting(0, "the step where the ramp from weight_start begins")
    ramp_steps: int = setting(0, "steps of the ramp (0: a jump at ramp_start)")
    ramp: str = setting("linear", "the ramp's shape: linear | cosine", choices=("linear",
                                                                                "cosine"))

    def __post_init__(self):
        if self.ramp_start < 0 or self.ramp_steps < 0:
            raise ValueError(f"ramp_start and ramp_steps must be >= 0, got {self.ramp_start}, "
                             f"{self.ramp_steps}")
        if self.ramp not in ("linear", "cosine"):
            raise ValueError(f"ramp must be linear or cosine, got {self.ramp!r}")

    @property
    def scheduled(self) -> bool:
        return self.weight_start is not None and self.weight_start != self.weight

    def weight_at(self, step: jax.Array) -> jax.Array:
        """The weight at optimizer step `step` (traced; no recompile as it changes)."""
        if not self.scheduled:
            return jnp.asarray(self.weight, jnp.float32)
        if self.ramp_steps == 0:
            progress = (step >= self.ramp_start).astype(jnp.float32)
        else:
            progress = jnp.clip((step - self.ramp_start) / self.ramp_steps, 0.0, 1.0)
        if self.ramp == "cosine":
            progress = 0.5 - 0.5 * jnp.cos(jnp.pi * progress)
        return self.weight_start + (self.weight - self.weight_start) * progress


class TermValue(NamedTuple):
    """What a term returns.

    total: per-example terms: the sum over the micro-batch; per-step terms: the value.
    stats: sums normalized like `total` and logged under their own names (the task term's
      "accuracy": the count of correct predictions).
    per_row: per-example terms may give the (B,) per-row part of `total`, for per-source losses.
    """

    total: jax.Array
    stats: dict = {}
    per_row: jax.Array | None = None


@dataclasses.dataclass
class TermContext:
    """What a term sees inside the step.

    model / params: the forward pass's module and full parameters (for a scanned model with a
      partly trained stack, the scan-split view of ftjax.train.step.scan_split_view);
    trainable: the differentiated half (per-step terms compute from it);
    batch: the micro-batch (per-example terms; None for per-step terms);
    output: the shared forward pass on `batch` (logits; None for per-step terms);
    state / constants: this term's own pytrees;
    rng: a key of this term's own for this micro-batch; step: the optimizer step (traced);
    deterministic: False while training (dropout on), True in evaluation;
    params_of: trainable-shaped tree -> the forward pass's params with it (see below).
    """

    model: Any
    params: Any
    trainable: Any
    batch: dict | None
    output: Any
    state: Any
    constants: Any
    rng: jax.Array
    step: jax.Array
    deterministic: bool
    apply_inputs: Callable[[dict], dict] | None = None
    # The shared forward pass's sowed collection (each block's hidden states), when a term of
    # the step `captures` (ftjax.models.model.layer_hidden_states reads it); else None.
    intermediates: Any = None
    # One dict for all the terms on this micro-batch: work several terms need (a teacher's
    # forward pass) is done by the first and found by the others under an agreed key.
    shared: dict = dataclasses.field(default_factory=dict)
    # The forward pass's `params` for another trainable half laid out like `trainable` (a
    # moving average of the weights): the frozen half joined as the step joins it.
    params_of: Callable[[Any], Any] | None = None

    def forward(self, batch: dict | None = None, *, params: Any = None, model: Any = None,
                deterministic: bool | None = None, rng: jax.Array | None = None, **kwargs):
        """Another forward pass (the same model by default) inside the step: `kwargs` go to the
        model's __call__ (e.g. another input, or a different `deterministic`)."""
        batch = self.batch if batch is None else batch
        model = self.model if model is None else model
        params = self.params if params is None else params
        deterministic = self.deterministic if deterministic is None else deterministic
        rngs = {} if deterministic else {"dropout": self.rng if rng is None else rng}
        inputs = self.apply_inputs(batch) if self.apply_inputs is not None else {}
        return model.apply({"params": params}, batch["input_ids"],
                           **{**inputs, **kwargs}, deterministic=deterministic, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class TermSetup:
    """What a term may use to build its constants and state (before the first step).

    params: the run's initial parameters (the pretrained weights with any new leaves);
    mask: the trainable mask (ftjax.optim.trainability.trainable_mask);
    trainable: the trainable half of `params` (a fresh copy: the run's own arrays are donated);
    place_like_trainable / place_replicated: put a pytree on the run's devices, sharded like
      the trainable half / replicated (the state is created already placed);
    model, tokenizer, config: the run's model, tokenizer and run config;
    load_model: (spec, dtype) -> (model, params) of another model (a teacher): a pretrained
      name or path, an adapter directory or a finished run's workdir;
    train_rows: the features of a train row (name -> (shape, dtype)), for a term that reads
      more of the batch than the task's features (a teacher cache's outputs);
    shared: see below.
    """

    params: Any
    mask: Any
    trainable: Any
    place_like_trainable: Callable[[Any], Any]
    place_replicated: Callable[[Any], Any]
    model: Any = None
    tokenizer: Any = None
    config: Any = None
    load_model: Callable[[str, str], tuple] | None = None
    train_rows: Mapping[str, tuple] | None = None
    # One dict for all the terms of the run: what several terms build alike (a loaded, placed
    # teacher) is built by the first and found by the others under an agreed key.
    shared: dict = dataclasses.field(default_factory=dict)


class LossTerm(abc.ABC):
    """Base class of loss terms; see the module docstring for the protocol."""

    Config: ClassVar[type] = TermConfig
    per_example: ClassVar[bool] = True
    evaluated: ClassVar[bool] = False  # per-example terms also computed by the eval step
    captures: ClassVar[bool] = False  # reads the blocks' hidden states (ctx.intermediates)

    def __init__(self, name: str, config: TermConfig | None = None):
        self.name = name
        self.config = config if config is not None else self.Config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.config})"

    def init_params(self, setup: TermSetup, rng: jax.Array) -> Any:
        """Parameters the term trains with the model (see the module docstring), or None.
        Called before the train state exists: `setup` holds the model, its config, tokenizer,
        load_model and shared (the parameter fields are None)."""
        return None

    def constants(self, setup: TermSetup) -> Any:
        return None

    def init_state(self, setup: TermSetup) -> Any:
        return None

    def update_state(self, state: Any, constants: Any, trainable: Any, step: jax.Array) -> Any:
        """The new state after an optimizer step (the trainable half already updated)."""
        return state

    def normalizer(self, batch: dict) -> jax.Array:
        """Per-example terms: the (B,) weight of each row; the step divides the summed totals
        by these summed over the global batch. Default: the examples of a classification
        batch, or the target tokens of a token-level one."""
        if "loss_mask" in batch:
            return jnp.sum(batch["loss_mask"].astype(jnp.float32), axis=-1)
        return batch["example_mask"].astype(jnp.float32)

    @abc.abstractmethod
    def __call__(self, ctx: TermContext) -> TermValue:
        """The term's value on `ctx` (see TermValue)."""
