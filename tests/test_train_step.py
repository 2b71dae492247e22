"""The pure train/eval step: overfitting, exact metrics, accumulation, one compile, NaN guard."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.models.layout import to_layout
from ftjax.objectives import loss_for_task
from ftjax.optim import trainability
from ftjax.optim.trainability import combine
from ftjax.train.step import (
    create_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
    scan_split_view,
)
from ftjax.utils.paths import leaf_paths


def _batch(cfg, lengths, *, num_labels=2, seed=0, B=None):
    """Right-padded classification batch with the pipeline's feature layout."""
    rng = np.random.default_rng(seed)
    B = B or len(lengths)
    T = max(lengths) + 2
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, cfg.vocab_size, n)
        mask[i, :n] = 1
    positions = np.where(mask, np.arange(T)[None], 0).astype(np.int32)
    return {
        "input_ids": ids, "attention_mask": mask, "positions": positions,
        "segment_ids": mask.copy(), "token_type_ids": np.zeros_like(ids),
        "labels": rng.integers(0, num_labels, B).astype(np.int32),
        "example_mask": np.ones(B, np.float32),
    }


def _setup(tx, head=HeadConfig("sequence", 2, "mean"), name="tiny-bert", **step_kw):
    cfg = preset(name)
    model = Model(cfg, head)
    params = init_params(model, jax.random.key(0))
    mask = jax.tree.map(lambda _: True, params)
    state = create_train_state(params, mask, tx, seed=0)
    step = make_train_step(model, tx, loss_for_task("classification"), **step_kw)
    return cfg, model, params, state, step


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_tiny_model_overfits_one_batch(name):
    head = HeadConfig("sequence", 2, "mean" if name == "tiny-bert" else "last")
    cfg, _, _, state, step = _setup(optax.adam(1e-2), head=head, name=name)
    batch = _batch(cfg, [7, 5, 9, 3, 8, 6])
    step = jax.jit(step, donate_argnums=0)
    first = None
    for _ in range(60):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < 0.05 < first
    assert float(metrics["accuracy"]) == 1.0


def test_eval_metrics_match_hand_computation():
    cfg, model, params, state, _ = _setup(optax.sgd(0.1))
    batch = _batch(cfg, [4, 6, 2, 5])
    batch["example_mask"] = np.array([1, 1, 1, 0], np.float32)  # a filler row counts for nothing
    sums = jax.jit(make_eval_step(model, loss_for_task("classification")))(
        state.trainable, state.frozen, batch)
    logits = np.asarray(model.apply({"params": params}, batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).logits)[:3]
    labels = batch["labels"][:3]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected_loss = -log_probs[np.arange(3), labels].sum()
    np.testing.assert_allclose(float(sums["loss_sum"]), expected_loss, rtol=1e-5)
    assert float(sums["weight"]) == 3
    assert float(sums["accuracy"]) == float((logits.argmax(-1) == labels).sum())


def test_accumulation_equals_one_big_batch():
    """k micro-batches of b == one batch of k*b, with uneven padding across micro-batches."""
    lengths = [9, 2, 7, 7, 3, 8, 1, 5]
    results = []
    for k in (1, 4):
        cfg, _, _, state, step = _setup(optax.sgd(0.5), accumulation_steps=k)
        batch = _batch(cfg, lengths)
        state, metrics = jax.jit(step)(state, batch)
        results.append((state.trainable, float(metrics["loss"])))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[0][0], results[1][0])


def test_token_loss_normalizes_by_real_tokens_of_global_batch():
    """Accumulated LM loss equals the mean over all real tokens, not a mean of means."""
    cfg = preset("tiny-llama")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    lengths = [9, 2, 7, 3]
    batch = _batch(cfg, lengths)
    batch["labels"] = np.roll(batch["input_ids"], -1, axis=1)
    batch["loss_mask"] = batch["attention_mask"].astype(np.float32)
    losses = []
    for k in (1, 2):
        tx = optax.sgd(0.0)
        state = create_train_state(params, jax.tree.map(lambda _: True, params), tx, 0)
        step = make_train_step(model, tx, loss_for_task("causal_lm"), accumulation_steps=k)
        metrics = jax.jit(step)(state, batch)[1]
        losses.append(float(metrics["loss"]))
        # Real tokens over cells, whichever micro-batches they were split into.
        np.testing.assert_allclose(float(metrics["real_token_share"]),
                                   sum(lengths) / batch["attention_mask"].size, rtol=1e-6)
    logits = model.apply({"params": params}, batch["input_ids"],
                         attention_mask=batch["attention_mask"],
                         segment_ids=batch["segment_ids"], positions=batch["positions"]).logits
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    expected = float((per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    np.testing.assert_allclose(losses, [expected, expected], rtol=1e-5)


def test_train_step_compiles_once():
    cfg, _, _, state, step = _setup(optax.adamw(1e-3))
    traces = []

    def counted(state, batch):
        traces.append(1)  # runs only while tracing
        return step(state, batch)

    jitted = jax.jit(counted, donate_argnums=0)
    for seed in range(6):
        state, _ = jitted(state, _batch(cfg, [4, 6, 2, 5], seed=seed))
    assert len(traces) == 1


def test_nonfinite_update_is_skipped_and_counted():
    cfg, model, params, state, step = _setup(optax.sgd(0.1))
    poisoned = jax.tree.map(lambda x: x, state.trainable)
    poisoned["head"]["classifier"]["bias"] = jnp.array([jnp.nan, 0.0])
    state = state.replace(trainable=poisoned)
    new_state, metrics = jax.jit(step)(state, _batch(cfg, [4, 6]))
    assert int(metrics["nonfinite"]) == 1 and int(new_state.nonfinite_steps) == 1
    assert int(new_state.step) == 1
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b, equal_nan=True)),
                        new_state.trainable, state.trainable)
    assert all(jax.tree.leaves(same))


def test_frozen_leaves_come_out_bit_identical():
    cfg = preset("tiny-bert")
    model = Model(cfg, HeadConfig("sequence", 2, "mean"))
    params = init_params(model, jax.random.key(0))
    mask = {"backbone": jax.tree.map(lambda _: False, params["backbone"]),
            "head": jax.tree.map(lambda _: True, params["head"])}
    tx = optax.adam(1e-2)
    state = create_train_state(params, mask, tx, seed=0)
    assert all(x is None for x in jax.tree.leaves(state.trainable["backbone"],
                                                  is_leaf=lambda x: x is None))
    step = jit_train_step(make_train_step(model, tx, loss_for_task("classification")))
    for seed in range(3):
        state, _ = step(state, _batch(cfg, [4, 6, 3], seed=seed))
    # The caller's frozen arrays survive the donating step (only trainable state is donated).
    assert not any(x.is_deleted() for x in jax.tree.leaves(params["backbone"]))
    out = combine(state.trainable, state.frozen)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), out["backbone"],
                        params["backbone"])
    assert all(jax.tree.leaves(same))
    assert not np.array_equal(out["head"]["classifier"]["kernel"],
                              params["head"]["classifier"]["kernel"])


def _weight_grads_in_scans(fn, *args) -> int:
    """How many per-layer weight gradients fn's program computes inside scans: dot_generals with
    a 2-D result (a block's activations are (B, T, ...)), each counted once per iteration."""
    def count(jaxpr, times: int, in_scan: bool) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                n += times * (in_scan and len(eqn.outvars[0].aval.shape) == 2)
            scan = eqn.primitive.name == "scan"
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                    if hasattr(sub, "eqns"):
                        n += count(sub, times * (eqn.params["length"] if scan else 1),
                                   in_scan or scan)
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr, 1, False)


def _layer_rules(arch, trained):
    """Trainability rules of a case: layer index -> "all" or a component name."""
    from ftjax.models.components import component
    spec = [(component(part, arch, layers=[i]) if part != "all" else rf"backbone/layers_{i}/.*",
             trainability.TRAIN) for i, part in trained]
    return spec + [("head/.*", trainability.TRAIN), (".*", trainability.FROZEN)]


# (trained (layer, part) pairs of a 5-layer model, the scan breaks the step should choose)
LAYER_CASES = {
    "top": ([(3, "all"), (4, "all")], (3,)),
    "bottom": ([(0, "all"), (1, "all")], (2,)),
    "gaps": ([(1, "all"), (3, "all")], (1, 2, 3, 4)),
    "mixed": ([(1, "attention"), (2, "attention"), (2, "mlp")], (1, 2, 3)),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_scanned_partial_training_computes_weight_grads_of_trained_layers_only(name, case):
    """Whichever layers of a scanned model train (top, bottom, with gaps, different parts of
    different layers): the step cuts the scan where trained and frozen layers meet, so its
    program computes the weight gradients of the trained (layer, kernel) pairs and no others,
    where one scan over the combined stack computes them for every layer of each split leaf;
    the gradient is the same, and training equals the per-layer (unscanned) model's."""
    trained, breaks = LAYER_CASES[case]
    arch = "llama" if name == "tiny-llama" else "bert"
    cfg = preset(name, scan_layers=True, num_layers=5)
    model = Model(cfg, HeadConfig("sequence", 2, "mean"))
    params = init_params(model, jax.random.key(0))
    spec = _layer_rules(arch, trained)
    resolved = trainability.resolve(spec, params)
    trainable, frozen = trainability.partition(params, trainability.trainable_mask(resolved))
    batch = _batch(cfg, [4, 6, 3])
    inputs = {k: batch[k] for k in ("attention_mask", "positions")}
    forward, view = scan_split_view(model, trainable, frozen)
    assert forward.config.scan_breaks == breaks
    # Frozen layers enter each scan as the frozen half stores them: no slice, no copy.
    starts = (0, *breaks)
    mask = trainability.trainable_mask(resolved)["backbone"]["layers"]
    trains_at = [sum(bool(m) and (m is True or a in m.indices) for a in starts)
                 for m in jax.tree.leaves(mask)]
    stored = {id(x) for x in jax.tree.leaves(frozen)}
    pieces = jax.tree.leaves([view["backbone"][f"layer_segments_{i}"] for i in range(len(starts))])
    assert sum(id(x) in stored for x in pieces) == len(pieces) - sum(trains_at)

    def loss(t, split):
        fwd, p = scan_split_view(model, t, frozen) if split else (model, combine(t, frozen))
        return jnp.mean(fwd.apply({"params": p}, batch["input_ids"], **inputs).logits ** 2)

    kernels = [(m.indices if isinstance(m, trainability.TrainedLayers) else range(5))
               for m, x in zip(jax.tree.leaves(trainability.trainable_mask(resolved)),
                               jax.tree.leaves(params)) if m and x.ndim == 3]
    trained_kernels = sum(len(k) for k in kernels)
    counts = [_weight_grads_in_scans(jax.grad(functools.partial(loss, split=s)), trainable)
              for s in (True, False)]
    assert counts == [trained_kernels, 5 * len(kernels)]
    grads, ref = (jax.jit(jax.grad(loss), static_argnums=1)(trainable, s) for s in (True, False))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref)
    if case == "top":  # nothing below layer 3 trains: no backward loop over layers 0-2 at all
        whiles = [jax.jit(jax.grad(loss), static_argnums=1).lower(trainable, s).as_text()
                  .count("stablehlo.while") for s in (False, True)]
        assert whiles == [2, 3]  # forward + backward; + the frozen layers' forward

    if case not in ("gaps", "mixed"):
        return  # the cases below cover the others' wiring; the sharding cases train "top"

    # A few optimizer steps: the same as the unscanned model under the same rules.
    def train(m, p):
        r = trainability.resolve(spec, p)
        state = create_train_state(p, trainability.trainable_mask(r), optax.adam(1e-2), seed=0)
        step = jax.jit(make_train_step(m, optax.adam(1e-2), loss_for_task("classification")))
        for seed in range(3):
            state, metrics = step(state, _batch(cfg, [4, 6, 3], seed=seed))
        return combine(state.trainable, state.frozen), float(metrics["loss"])

    scanned, loss_scanned = train(model, params)
    flat, loss_flat = train(Model(dataclasses.replace(cfg, scan_layers=False), model.head_config),
                            to_layout(params, scan_layers=False))
    assert loss_scanned == pytest.approx(loss_flat, rel=1e-5)
    for (path, a), (_, b) in zip(leaf_paths(to_layout(scanned, scan_layers=False)),
                                 leaf_paths(flat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
