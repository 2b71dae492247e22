"""Invariants of the trainability toolkit (ftjax.optim): specs, optimizer, presets, report.

Tiny prime-dimension presets and toy linear trees keep every compile small; steps are jitted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax.models import HeadConfig, Model, param_shapes, preset
from ftjax.models.components import component
from ftjax.models.layout import stack_layers, unstack_layers
from ftjax.optim import (
    FROZEN,
    TRAIN,
    OptimizerConfig,
    Rule,
    StackedRule,
    UnmatchedParamsError,
    combine,
    effective_lrs,
    format_report,
    learning_rate_fn,
    make_optimizer,
    optimizer_step,
    partition,
    report,
    resolve,
    trainable_mask,
)
from ftjax.objectives import RegularizerConfig, TermContext, TermSetup, l1, l2, l2sp
from ftjax.optim.optimizer import leaf_constants
from ftjax.optim.rules import lr_multiplier
from ftjax.optim.selectors import layers, top
from ftjax.peft import METHODS, PEFT_METHODS, method_config, method_spec, with_peft
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.utils.paths import group_of, leaf_paths

SGD = dict(name="sgd", schedule="constant", weight_decay=0.0, grad_clip_norm=None)


def _model(name, head=HeadConfig(), **policy):
    return Model(preset(name, **policy), head)


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _changed(before, after) -> set[str]:
    return {p for (p, a), (_, b) in zip(leaf_paths(before), leaf_paths(after))
            if not _bits_equal(a, b)}


def _make_step(tx, loss_fn, traces=None):
    """One jitted update of the trainable half; `traces` counts how often it is traced."""

    @jax.jit
    def step(trainable, frozen, opt_state, batch):
        if traces is not None:
            traces.append(1)  # runs at trace time only
        grads = jax.grad(loss_fn)(trainable, frozen, batch)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    return step


def _lm_loss(model):
    def loss(trainable, frozen, ids):
        logits = model.apply({"params": combine(trainable, frozen)}, ids).logits
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, jnp.roll(ids, -1, 1)[..., None], -1)[..., 0])
    return loss


def _random_params(model, seed=0):
    """Random parameters from shapes: skips compiling the model's init (seconds on CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), s.dtype),
                        param_shapes(model))


def _ids(vocab, shape=(2, 7), seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


# ---------------------------------------------------------------------------------------------
# Specs and resolution


def test_resolve_error_lists_every_unmatched_path():
    params = param_shapes(_model("tiny-bert", HeadConfig("sequence", 2)))
    spec = [(".*/kernel", TRAIN), ("backbone/embeddings/.*", FROZEN)]
    all_paths = {p for p, _ in leaf_paths(params)}
    expected = {p for p in all_paths if not p.endswith("/kernel")
                and not p.startswith("backbone/embeddings/")}
    with pytest.raises(UnmatchedParamsError) as err:
        resolve(spec, params)
    assert set(err.value.paths) == expected and len(err.value.paths) == len(expected)
    for path in expected:
        assert path in str(err.value)
    assert "catch-all" in str(err.value)


def test_resolve_error_names_layer_slices_of_stacked_leaves():
    params = param_shapes(_model("tiny-llama", scan_layers=True))
    with pytest.raises(UnmatchedParamsError) as err:
        resolve([("backbone/layers_0/.*", TRAIN), ("head/.*|backbone/(norm|embed_tokens)/.*",
                                                    TRAIN)], params)
    assert err.value.paths and all(p.startswith("backbone/layers_1/") for p in err.value.paths)
    assert len(err.value.paths) == 9  # every leaf of block 1


def test_first_match_wins_and_fullmatch():
    params = {"backbone": {"a": {"bias": jnp.zeros(2), "kernel": jnp.zeros(2)}}}
    resolved = resolve([(".*bias", Rule(lr=3.0)), (".*", Rule(lr=2.0)), (".*bias", FROZEN)], params)
    assert resolved["backbone"]["a"]["bias"] == Rule(lr=3.0)
    assert resolved["backbone"]["a"]["kernel"] == Rule(lr=2.0)
    # fullmatch: "bias" alone does not match "backbone/a/bias".
    with pytest.raises(UnmatchedParamsError):
        resolve([("bias", TRAIN), ("kernel", TRAIN)], params)
    with pytest.raises(ValueError, match="invalid regex"):
        resolve([("(", TRAIN)], params)
    with pytest.raises(ValueError, match="both frozen"):
        Rule(frozen=True, unfreeze_at=3)


@pytest.mark.parametrize("method", ["llrd", "gradual_unfreeze", "top_layers"])
def test_scanned_layout_resolves_per_layer_along_axis_0(method):
    cfg = preset("tiny-bert")
    spec = method_spec(method, cfg, method_cfg={"top_k": 1, "decay": 0.5, "unfreeze_every": 3})
    per_layer = resolve(spec, param_shapes(Model(cfg, HeadConfig("sequence", 2))))
    scanned = resolve(spec, param_shapes(Model(dataclasses.replace(cfg, scan_layers=True),
                                               HeadConfig("sequence", 2))))
    stacked_leaf = scanned["backbone"]["layers"]["block"]["attention"]["query"]["kernel"]
    assert isinstance(stacked_leaf, StackedRule)
    assert stacked_leaf.layers == tuple(
        per_layer["backbone"][f"layers_{i}"]["attention"]["query"]["kernel"] for i in range(2))
    if method == "llrd":
        np.testing.assert_allclose(lr_multiplier(stacked_leaf), [0.5**2, 0.5])
    # Unstacking the resolved tree gives the per-layer resolution exactly.
    as_per_layer = unstack_layers(jax.tree.map(
        lambda r: np.asarray(r.layers, object) if isinstance(r, StackedRule) else r,
        scanned["backbone"], is_leaf=lambda x: isinstance(x, (Rule, StackedRule))))
    assert jax.tree.leaves(as_per_layer) == jax.tree.leaves(
        per_layer["backbone"], is_leaf=lambda x: isinstance(x, Rule))


# ---------------------------------------------------------------------------------------------
# Frozen means frozen and free


def test_frozen_leaves_bit_identical_and_absent_from_optimizer_state():
    params, coeffs = _toy(3)
    resolved = resolve(method_spec("bitfit", preset("tiny-bert"), num_layers=3), params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    tx = make_optimizer(dict(learning_rate=1e-2, weight_decay=0.1), resolved, trainable, 10)
    opt_state = tx.init(trainable)
    step = _make_step(tx, _linear_loss)
    t = trainable
    for _ in range(3):
        t, opt_state = step(t, frozen, opt_state, partition(coeffs, trainable_mask(resolved))[0])
    changed = _changed(params, combine(t, frozen))
    assert changed == {p for p, m in leaf_paths(trainable_mask(resolved)) if m}
    assert changed == {p for p, _ in leaf_paths(params) if p.endswith("bias") or "head" in p}
    # Adam moments exist for trainable leaves only (plus int32 step counters).
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    for moments in (adam.mu, adam.nu):
        assert jax.tree.structure(moments) == jax.tree.structure(trainable)
    n_trainable = len(jax.tree.leaves(trainable))
    counters = [x for x in jax.tree.leaves(opt_state) if x.shape == ()]
    assert len(jax.tree.leaves(opt_state)) == 2 * n_trainable + len(counters)
    rep = report(params, resolved, opt_state)
    assert rep["optimizer_state_bytes"] == 2 * rep["trainable_bytes"] + 4 * len(counters)
    assert rep["trainable_bytes"] == sum(x.nbytes for x in jax.tree.leaves(trainable))


def test_frozen_layer_slices_of_a_stacked_leaf_stay_bit_identical():
    """Scanned top_layers: block 0 lives inside trainable stacked arrays and must not move, not
    even a -0.0 turning into +0.0, with weight decay on."""
    params, coeffs = _toy(3)
    params["backbone"]["layers_0"]["mlp"]["up_proj"]["kernel"] = (
        params["backbone"]["layers_0"]["mlp"]["up_proj"]["kernel"].at[0].set(-0.0))
    params, coeffs = _stacked(params), _stacked(coeffs)
    resolved = resolve(method_spec("top_layers", preset("tiny-llama"), num_layers=3,
                                   method_cfg={"top_k": 2}), params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    tx = make_optimizer(dict(learning_rate=1e-2, weight_decay=0.1, no_decay=()), resolved,
                        trainable, 10)
    step = _make_step(tx, _linear_loss)
    t, opt_state = trainable, tx.init(trainable)
    for _ in range(3):
        t, opt_state = step(t, frozen, opt_state, partition(coeffs, trainable_mask(resolved))[0])
    changed = {group_of(p) for p in _changed(_unstacked(params), _unstacked(combine(t, frozen)))}
    assert changed == {"layers_1", "layers_2", "norm", "head"}


@pytest.mark.parametrize("trained", [(2, 3), (0,), (0, 2), (1, 3)])
def test_partly_trained_stack_is_split_along_its_layers(trained):
    """Whichever layers of a stack train (a top run, a bottom one, with gaps): the trainable half
    holds exactly those slices and the frozen half the rest, nothing twice; combine restores
    every bit; shape trees split the same way; and training matches the per-layer layout with
    each layer's own learning rate and weight decay, so per-layer constants follow the slices."""
    L = 4
    params, coeffs = _toy(L)
    layer_lrs = {i: 1.0 / (i + 1) for i in trained}
    spec = [(rf"backbone/layers_{i}/.*", Rule(lr=lr, wd=2.0 * lr)) for i, lr in layer_lrs.items()]
    spec += [("head/.*", TRAIN), (".*", FROZEN)]
    stacked, stacked_coeffs = _stacked(params), _stacked(coeffs)
    mask = trainable_mask(resolve(spec, stacked))
    trainable, frozen = partition(stacked, mask)
    for leaf, part in zip(jax.tree.leaves(stacked["backbone"]["layers"]),
                          jax.tree.leaves(trainable["backbone"]["layers"])):
        assert _bits_equal(part, np.asarray(leaf)[list(trained)])
    assert all(map(_bits_equal, jax.tree.leaves(combine(trainable, frozen)),
                   jax.tree.leaves(stacked)))
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(trainable) + size(frozen) == size(stacked)
    shapes, _ = partition(jax.eval_shape(lambda p: p, stacked), mask)
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, trainable)

    def train(tree, c):
        resolved = resolve(spec, tree)
        t, f = partition(tree, trainable_mask(resolved))
        tx = make_optimizer(dict(learning_rate=1e-2, weight_decay=0.1, no_decay=()), resolved,
                            t, 10)
        step, opt_state = _make_step(tx, _linear_loss), tx.init(t)
        for _ in range(3):
            t, opt_state = step(t, f, opt_state, partition(c, trainable_mask(resolved))[0])
        return combine(t, f), opt_state

    out, opt_state = train(stacked, stacked_coeffs)
    ref, _ = train(params, coeffs)
    for (path, a), (_, b) in zip(leaf_paths(_unstacked(out)), leaf_paths(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=path)
    assert {group_of(p) for p in _changed(params, ref)} == {f"layers_{i}" for i in trained} | {
        "head"}
    # Adam moments are shaped like the trained slices, not like the whole stack.
    adam = optax.tree_utils.tree_get(opt_state, "mu")
    assert jax.tree.map(jnp.shape, adam) == jax.tree.map(jnp.shape, trainable)


def test_frozen_leaves_of_a_real_model_bit_identical():
    """The train-step pattern end to end: grad w.r.t. the trainable half of a real model."""
    model = _model("tiny-llama")
    params = _random_params(model)
    resolved = resolve(method_spec("top_layers", model.config, method_cfg={"top_k": 1}), params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    tx = make_optimizer(dict(learning_rate=1e-2, weight_decay=0.1), resolved, trainable, 10)
    step = _make_step(tx, _lm_loss(model))
    t, opt_state = trainable, tx.init(trainable)
    for i in range(3):
        t, opt_state = step(t, frozen, opt_state, _ids(97, seed=i))
    changed = _changed(params, combine(t, frozen))
    assert changed == {p for p, m in leaf_paths(trainable_mask(resolved)) if m}
    assert {group_of(p) for p in changed} == {"layers_1", "norm", "head"}


# ---------------------------------------------------------------------------------------------
# Optimizer: equivalence, LLRD, gradual unfreezing


def _toy(num_layers=4, dim=3):
    """A linear 'model' with canonical Llama-like paths (plus biases, as BitFit needs).

    Returns (params, coeffs); the loss sum_leaf <c_leaf, w_leaf> has gradient exactly c.
    """
    rng = np.random.default_rng(7)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731

    def block():
        return {"input_layernorm": {"scale": normal(dim)},
                "mlp": {"up_proj": {"kernel": normal(dim, dim), "bias": normal(dim)}}}

    def tree():
        return {
            "backbone": {"embed_tokens": {"embedding": normal(5, dim)},
                         **{f"layers_{i}": block() for i in range(num_layers)},
                         "norm": {"scale": normal(dim)}},
            "head": {"kernel": normal(dim, 2), "bias": normal(2)},
        }

    return tree(), tree()


def _stacked(tree):
    return {**tree, "backbone": stack_layers(tree["backbone"])}


def _unstacked(tree):
    return {**tree, "backbone": unstack_layers(tree["backbone"])}


def _linear_loss(t, f, c):
    """sum <w, c> over the trainable leaves; `c` is partitioned like `t`."""
    del f
    leaves = [jnp.sum(w * g) for w, g in zip(jax.tree.leaves(t), jax.tree.leaves(c))]
    return sum(leaves)


def test_no_gating_equals_optax_adamw():
    params, coeffs = _toy()
    resolved = resolve([(".*", TRAIN)], params)
    cfg = OptimizerConfig(learning_rate=1e-2, weight_decay=0.1, grad_clip_norm=1.0,
                          schedule="cosine", warmup_steps=2)
    ours = make_optimizer(cfg, resolved, params, 10)
    mask = jax.tree_util.tree_map_with_path(
        lambda p, _: not any(k in jax.tree_util.keystr(p) for k in ("embedding", "scale", "bias")),
        params)
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(learning_rate_fn(cfg, 10), 0.9, 0.999, 1e-8, weight_decay=0.1,
                                  mask=mask))
    grads = jax.tree.map(lambda c: 3.0 * c, coeffs)

    @jax.jit
    def step(p1, p2, state_ours, state_ref):
        u1, state_ours = ours.update(grads, state_ours, p1)
        u2, state_ref = ref.update(grads, state_ref, p2)
        return optax.apply_updates(p1, u1), optax.apply_updates(p2, u2), state_ours, state_ref

    p1, p2, s1, s2 = params, params, ours.init(params), ref.init(params)
    for _ in range(4):
        p1, p2, s1, s2 = step(p1, p2, s1, s2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scan", [False, True])
def test_llrd_update_per_layer_is_lr_times_decay_power(scan):
    L, decay, lr = 4, 0.5, 0.1
    params, coeffs = _toy(L)
    if scan:
        params, coeffs = _stacked(params), _stacked(coeffs)
    spec = method_spec("llrd", preset("tiny-llama"), num_layers=L, method_cfg={"decay": decay})
    resolved = resolve(spec, params)
    tx = make_optimizer(dict(SGD, learning_rate=lr), resolved, params, 10)
    updates, _ = jax.jit(tx.update)(coeffs, tx.init(params), params)  # gradient = coeffs
    if scan:
        updates, coeffs = _unstacked(updates), _unstacked(coeffs)
    def depth(path):
        group = group_of(path)
        if group.startswith("layers_"):
            return int(group.removeprefix("layers_")) + 1
        return {"embeddings": 0, "head": L + 1, "norm": L + 1}[group]

    for (path, u), (_, c) in zip(leaf_paths(updates), leaf_paths(coeffs)):
        expected = -lr * decay ** (L + 1 - depth(path)) * np.asarray(c)
        np.testing.assert_allclose(u, expected, rtol=1e-6, err_msg=path)
    # Block i: lr * decay**(L - i); embeddings decay**(L + 1); head 1.
    u0 = updates["backbone"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    c0 = coeffs["backbone"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_allclose(u0, -lr * decay**L * c0, rtol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_gradual_unfreezing_follows_the_schedule_with_one_compile(scan):
    L, every, lr = 2, 2, 1e-2
    params, coeffs = _toy(L)
    if scan:
        params, coeffs = _stacked(params), _stacked(coeffs)
    resolved = resolve(method_spec("gradual_unfreeze", preset("tiny-llama"), num_layers=L,
                                   method_cfg={"unfreeze_every": every}), params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    assert jax.tree.leaves(frozen) == []  # every leaf trains at some step
    cfg = dict(learning_rate=lr, schedule="constant", weight_decay=0.0, grad_clip_norm=None)
    tx = make_optimizer(cfg, resolved, trainable, 20)
    traces = []
    step = _make_step(tx, _linear_loss, traces)
    # Head side (head, final norm) at 0, block 1 at 2, block 0 at 4, embeddings at 6.
    expected_groups = {0: {"head", "norm"}, 2: {"head", "norm", "layers_1"},
                       4: {"head", "norm", "layers_1", "layers_0"}}
    expected_groups[6] = expected_groups[4] | {"embeddings"}
    t, opt_state = trainable, tx.init(trainable)
    schedule = learning_rate_fn(OptimizerConfig(**cfg), 20)
    for i in range(8):
        assert int(optimizer_step(opt_state)) == i
        new, opt_state = step(t, frozen, opt_state, coeffs)
        before, after = (_unstacked(t), _unstacked(new)) if scan else (t, new)
        groups = {group_of(p) for p in _changed(before, after)}
        want = expected_groups[max(k for k in expected_groups if k <= i)]
        assert groups == want, (i, groups)
        assert {g for g, v in effective_lrs(i, resolved, schedule).items() if v > 0} == want
        if i in (2, 4):
            # Moments and bias correction start at the unfreeze step: a normal first Adam step,
            # |delta| = lr (up to eps and rounding), not one inflated ~1/sqrt(1 - b2) times.
            block = after["backbone"][f"layers_{2 - i // 2}"]["mlp"]["up_proj"]["kernel"]
            block0 = before["backbone"][f"layers_{2 - i // 2}"]["mlp"]["up_proj"]["kernel"]
            np.testing.assert_allclose(np.abs(block - block0), lr, rtol=1e-3)
        t = new
    assert len(traces) == 1


def test_nothing_trains_is_an_error():
    model = _model("tiny-llama-tied")  # tied LM head: no head/ parameters to probe
    params = param_shapes(model)
    resolved = resolve(method_spec("linear_probe", model.config), params)
    trainable, _ = partition(params, trainable_mask(resolved))
    with pytest.raises(ValueError, match="no parameter trains"):
        make_optimizer({}, resolved, trainable, 10)


# ---------------------------------------------------------------------------------------------
# Weight decay mask, schedules, config


def test_weight_decay_mask_excludes_norms_biases_embeddings_by_default():
    params = param_shapes(_model("tiny-bert", HeadConfig("sequence", 2)))
    resolved = resolve([(".*", Rule(wd=2.0))], params)
    _, wds, _ = leaf_constants(OptimizerConfig(weight_decay=0.1), resolved, params)
    for path, wd in leaf_paths(wds):
        excluded = path.endswith("/bias") or "norm/" in path or path.endswith("/embedding")
        assert float(wd) == (0.0 if excluded else pytest.approx(0.2)), path
    # Configurable: an empty policy decays everything; per-layer patterns work on stacks.
    _, wds, _ = leaf_constants(OptimizerConfig(weight_decay=0.1, no_decay=()), resolved, params)
    assert all(float(w) > 0 for w in jax.tree.leaves(wds))
    stacked = param_shapes(_model("tiny-bert", HeadConfig("sequence", 2), scan_layers=True))
    by_layer = OptimizerConfig(weight_decay=0.1, no_decay=("backbone/layers_0/.*",))
    _, wds, _ = leaf_constants(by_layer, resolve([(".*", TRAIN)], stacked), stacked)
    np.testing.assert_allclose(wds["backbone"]["layers"]["block"]["output"]["kernel"], [0.0, 0.1])


def test_schedules():
    def lr(total=100, **kw):
        return learning_rate_fn(OptimizerConfig(learning_rate=1.0, **kw), total)

    warm = lr(schedule="constant", warmup_steps=4)
    assert [float(warm(s)) for s in (0, 2, 4, 50)] == [0.0, 0.5, 1.0, 1.0]
    lin = lr(schedule="linear", warmup_steps=10, end_factor=0.1)
    assert float(lin(10)) == 1.0 and float(lin(100)) == pytest.approx(0.1)
    assert float(lin(55)) == pytest.approx(0.55)
    cos = lr(schedule="cosine", decay_steps=50)
    assert float(cos(25)) == pytest.approx(0.5) and float(cos(80)) == pytest.approx(0.0)
    inv = lr(schedule="inverse_sqrt", warmup_steps=4)
    assert float(inv(4)) == 1.0 and float(inv(16)) == pytest.approx(0.5)
    stp = lr(schedule="step", step_boundaries=(10, 20), step_factor=0.5)
    assert [float(stp(s)) for s in (9, 10, 19, 20, 99)] == [1.0, 0.5, 0.5, 0.25, 0.25]
    assert float(jax.jit(cos)(jnp.int32(25))) == pytest.approx(0.5)  # traced step


def test_optimizer_config_is_strict():
    from ml_collections import ConfigDict

    cfg = OptimizerConfig.from_config(ConfigDict(dict(name="lion", learning_rate=3e-4,
                                                      no_decay=[".*bias"])))
    assert cfg.betas == (0.9, 0.99) and cfg.no_decay == (".*bias",)
    with pytest.raises(KeyError, match="did you mean 'weight_decay'"):
        OptimizerConfig.from_config({"weight_decy": 0.1})
    with pytest.raises(ValueError, match="unknown optimizer"):
        OptimizerConfig(name="adam")


@pytest.mark.parametrize("name", ["sgd", "adafactor", "lion"])
def test_every_optimizer_steps_and_respects_unfreezing(name):
    params, coeffs = _toy(2)
    resolved = resolve([("backbone/layers_0/.*", Rule(unfreeze_at=2)), (".*", TRAIN)], params)
    tx = make_optimizer(dict(name=name, learning_rate=1e-2, momentum=0.9, schedule="constant"),
                        resolved, params, 10)
    step = _make_step(tx, _linear_loss)
    t, state = params, tx.init(params)
    for i in range(3):
        new, state = step(t, None, state, coeffs)
        assert ("backbone/layers_0/mlp/up_proj/kernel" in _changed(t, new)) == (i >= 2)
        assert "head/kernel" in _changed(t, new)
        t = new


# ---------------------------------------------------------------------------------------------
# Penalty terms (ftjax.objectives.penalties)


def make_regularizer(coefficients: dict, anchor, mask=None):
    """The `regularizer` block's penalty terms on a trainable tree starting at `anchor`, as one
    function trainable -> weighted penalty (None when no coefficient is on)."""
    terms = RegularizerConfig(**coefficients).terms()
    if not terms:
        return None
    copy = lambda tree: jax.tree.map(lambda x: x, tree)  # noqa: E731
    setup = TermSetup(params=anchor, mask=mask, trainable=anchor, place_like_trainable=copy,
                      place_replicated=copy)
    constants = {term.name: term.constants(setup) for term in terms}

    def penalty(trainable):
        def value(term):
            ctx = TermContext(model=None, params=None, trainable=trainable, batch=None,
                              output=None, state=None, constants=constants[term.name],
                              rng=jax.random.key(0), step=jnp.zeros((), jnp.int32),
                              deterministic=False)
            return term.config.weight * term(ctx).total

        return sum(value(term) for term in terms)

    penalty.constants = constants
    return penalty


def test_l2sp_pulls_toward_the_anchor_and_l2_toward_zero():
    params, _ = _toy(2)
    anchor = jax.tree.map(lambda w: w + 1.0, params)
    reg = make_regularizer(dict(l2sp=1.0, l2sp_include=".*"), anchor)

    grad = lambda reg, t: jax.jit(jax.grad(reg))(t)  # noqa: E731

    def sgd(t, reg):
        return jax.tree.map(lambda w, g: w - 0.1 * g, t, grad(reg, t))

    dist = lambda t, a: float(sum(jnp.sum((x - y) ** 2) for x, y in  # noqa: E731
                                  zip(jax.tree.leaves(t), jax.tree.leaves(a))))
    t, d = params, dist(params, anchor)
    for _ in range(3):
        t = sgd(t, reg)
        assert dist(t, anchor) < d
        d = dist(t, anchor)
    # Gradient is exactly w - w0; with a zero anchor L2-SP is plain L2.
    grads = grad(reg, params)
    for g, w, a in zip(jax.tree.leaves(grads), jax.tree.leaves(params), jax.tree.leaves(anchor)):
        np.testing.assert_allclose(g, w - a, rtol=1e-6)
    zeros = jax.tree.map(jnp.zeros_like, params)
    assert float(l2sp(params, zeros)) == pytest.approx(float(l2(params)))
    # Default include: only the backbone is pulled; the new head gets plain l2.
    mixed = make_regularizer(dict(l2sp=2.0, l2=0.5), anchor)
    grads = grad(mixed, params)
    np.testing.assert_allclose(grads["head"]["kernel"], 0.5 * params["head"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(grads["backbone"]["norm"]["scale"], 2.0 * -1.0, rtol=1e-6)


def test_l2sp_through_an_experiment_names_the_layers_of_split_stacks(tiny_config_file):
    """Scanned top_layers with L2-SP on the top block only: the anchor holds the trained slices
    (not the whole stack), and the pull applies to them, i.e. the slices are named by their own
    layer index, not by their position in the slice."""
    probe = build_experiment(load_config(tiny_config_file, ["model.scan_layers=True"]))
    top = probe.model.config.num_layers - 1
    exp = build_experiment(load_config(tiny_config_file, [
        "model.scan_layers=True", "method=top_layers", "method_args.top_k=1",
        "regularizer.l2sp=0.5", f"regularizer.l2sp_include=backbone/layers_{top}/.*"]))
    constants, trainable = exp.state.constants["l2_sp"], exp.state.trainable
    stack = lambda tree: tree["backbone"]["layers"]["block"]  # noqa: E731
    assert jax.tree.map(jnp.shape, stack(constants["anchor"])) == jax.tree.map(
        jnp.shape, stack(trainable))
    assert jax.tree.leaves(stack(trainable))[0].shape[0] == 1
    assert all(float(w) == 1.0 for w in jax.tree.leaves(stack(constants["weights"])))
    term = next(t for t in exp.terms if t.name == "l2_sp")
    ctx = TermContext(model=None, params=None, trainable=trainable, batch=None, output=None,
                      state=None, constants=constants, rng=jax.random.key(0),
                      step=jnp.zeros((), jnp.int32), deterministic=False)
    assert float(term(ctx).total) == 0.0  # at the anchor


def test_config_rules_come_before_the_method_and_a_custom_run_trains_only_them(
        tiny_config_file, tmp_path):
    """Config `rules` go before the method's preset (first match wins); method="custom" makes
    them the whole spec: a scanned run training layer 0 and the head (the frozen stack above
    the trained layer) changes exactly those, also as restored from its directory alone; a rule
    that matches nothing is a typo, named with paths it could have meant."""
    from ftjax.train.restore import restore_run
    from ftjax.train.loop import train

    exp = build_experiment(load_config(tiny_config_file, [
        "rules=(('backbone/embeddings/.*', 'frozen'),)"]))  # method="full" otherwise
    frozen = {group_of(p) for p, m in leaf_paths(trainable_mask(exp.resolved)) if not m}
    assert frozen == {"embeddings"}
    with pytest.raises(ValueError, match=r"rules\[0\]: pattern 'backbone/embedings/\.\*' "
                                         r"matches no parameter.*'backbone/embeddings/"):
        build_experiment(load_config(tiny_config_file, [
            "rules=(('backbone/embedings/.*', 'frozen'),)"]))

    overrides = ["method=custom", "model.scan_layers=True", "steps=4", "eval_every=4",
                 "checkpoint_every=4",
                 "rules=(('backbone/layers_0/.*', 'train'), ('head/.*', 'train'), ('.*', 'frozen'))"]
    start = build_experiment(load_config(tiny_config_file, overrides)).params
    train(load_config(tiny_config_file, overrides), tmp_path, quiet=True)
    exp, restored = restore_run(tmp_path)
    end = combine(restored.state.trainable, restored.state.frozen)
    assert {group_of(p) for p in _changed(_unstacked(start), _unstacked(end))} == {
        "layers_0", "head"}
    report = json.loads((tmp_path / "params_report.json").read_text())
    assert report["scanned_frozen_layers"] == [1]


def test_l1_gives_a_sign_step_and_skips_frozen():
    params, _ = _toy(2)
    trainable, _ = partition(params, jax.tree.map(lambda _: True, params))
    trainable["backbone"]["layers_0"] = None  # a frozen subtree
    reg = make_regularizer({"l1": 0.3}, trainable)
    grads = jax.jit(jax.grad(reg))(trainable)
    stepped = jax.tree.map(lambda w, g: w - 0.1 * g, trainable, grads)
    for w, s in zip(jax.tree.leaves(trainable), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(s, w - 0.1 * 0.3 * jnp.sign(w), rtol=1e-6, atol=1e-8)
    assert float(l1(trainable)) == pytest.approx(
        sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(trainable)))
    assert make_regularizer({}, trainable) is None


# ---------------------------------------------------------------------------------------------
# Presets, selectors and the report


def _llama_counts(c, head: int) -> dict[str, int]:
    D, F, H = c.hidden_size, c.intermediate_size, c.head_size
    attn = D * c.num_heads * H * 2 + D * c.num_kv_heads * H * 2
    block = attn + 3 * D * F + 2 * D
    total = c.vocab_size * D + c.num_layers * block + D + head
    return dict(total=total, norms=(2 * c.num_layers + 1) * D)


def _bert_counts(c, labels: int) -> dict[str, int]:
    D, F = c.hidden_size, c.intermediate_size
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * D + 2 * D
    block = 4 * (D * D + D) + (D * F + F) + (F * D + D) + 2 * 2 * D
    head = D * labels + labels
    biases = D + c.num_layers * (4 * D + F + D + 2 * D) + D  # embedding norm, blocks, pooler
    return dict(total=embeddings + c.num_layers * block + D * D + D + head, head=head,
                biases=biases)


def test_report_counts_equal_a_hand_count():
    llama = preset("tiny-llama")
    shapes = param_shapes(Model(llama, HeadConfig()))
    hand = _llama_counts(llama, head=llama.hidden_size * llama.vocab_size)
    head = llama.hidden_size * llama.vocab_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect = {"full": hand["total"], "linear_probe": head, "bitfit": head + hand["norms"]}
        for method, trainable in expect.items():
            rep = report(shapes, resolve(method_spec(method, llama), shapes))
            assert (rep["total"], rep["trainable"]) == (hand["total"], trainable), method

    bert = preset("tiny-bert")
    shapes = param_shapes(Model(bert, HeadConfig("sequence", 3)))
    hand = _bert_counts(bert, labels=3)
    expect = {"full": hand["total"], "linear_probe": hand["head"],
              "bitfit": hand["head"] + hand["biases"]}
    for method, trainable in expect.items():
        rep = report(shapes, resolve(method_spec(method, bert), shapes))
        assert (rep["total"], rep["trainable"]) == (hand["total"], trainable), method
        assert rep["trainable_share"] == trainable / hand["total"]
        assert sum(g["total"] for g in rep["groups"].values()) == rep["total"]
    assert "total" in format_report(rep) and "layers_1" in format_report(rep)


@pytest.mark.parametrize("scan", [False, True])
def test_smollm2_trainable_share_without_allocating(scan):
    cfg = preset("smollm2-135m", scan_layers=scan)
    if not scan:
        lm = param_shapes(Model(cfg, HeadConfig()))  # tied LM head: no head/ parameters
        assert report(lm, resolve([(".*", TRAIN)], lm))["total"] == 134_515_008  # HF's count
    shapes = param_shapes(Model(cfg, HeadConfig("sequence", 2, "last")))
    probe = resolve(method_spec("linear_probe", cfg), shapes)
    trainable, _ = partition(shapes, trainable_mask(probe))
    state = jax.eval_shape(make_optimizer({}, probe, trainable, 100).init, trainable)
    rep = report(shapes, probe, state)
    assert rep["trainable"] == 576 * 2 + 2
    assert rep["trainable_share"] == pytest.approx(1154 / (134_515_008 + 1154))
    assert rep["optimizer_state_bytes"] < 2 * 4 * 1154 + 64  # adam moments of the head only
    top_rules = resolve(method_spec("top_layers", cfg, method_cfg={"top_k": 3}), shapes)
    top_trainable, _ = partition(shapes, trainable_mask(top_rules))
    top_state = jax.eval_shape(make_optimizer({}, top_rules, top_trainable, 100).init,
                               top_trainable)
    top = report(shapes, top_rules, top_state)
    per_block = _llama_counts(cfg, 0)["total"] - cfg.vocab_size * 576 - 576
    assert top["trainable"] == 3 * per_block // 30 + 576 + 1154
    # Scanned or not, the trainable tree and the Adam moments hold the top 3 blocks only (the
    # scanned stack is split along its layer axis), plus a few scalar counters.
    assert sum(x.size for x in jax.tree.leaves(top_trainable)) == top["trainable"]
    assert 0 <= top["optimizer_state_bytes"] - 2 * top["trainable_bytes"] < 64
    # ... and the report names the 27 frozen blocks inside the scanned stacks.
    assert top["scanned_frozen_layers"] == (list(range(27)) if scan else [])
    assert ("layers 0-26 (no optimizer state" in format_report(top)) == scan
    assert rep["scanned_frozen_layers"] == []  # the linear probe's head is not stacked


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_every_method_resolves_in_both_layouts(name):
    head = HeadConfig("sequence", 2)
    for method in METHODS:
        for scan in (False, True):
            cfg = preset(name, scan_layers=scan)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                spec = method_spec(method, cfg)
            assert bool(caught) == (method == "bitfit" and name == "tiny-llama")
            if method == "custom":  # the config's own rules are the whole spec
                assert spec == []
                continue
            model = Model(cfg, head)
            if method in PEFT_METHODS:  # PEFT methods train leaves the model adds first
                field = PEFT_METHODS[method][0]
                model = with_peft(model, **{field: method_config(method)})
            shapes = param_shapes(model)
            rep = report(shapes, resolve(spec, shapes))
            assert 0 < rep["trainable"] <= rep["total"]
            if method in PEFT_METHODS:  # the head-less spec trains the method's leaves only
                bare = report(shapes, resolve(method_spec(method, cfg, head_kind="lm",
                                                          method_cfg={"train_norms": False}),
                                              shapes))
                assert 0 < bare["trainable"] < rep["trainable"]
    with pytest.raises(ValueError, match="unknown method"):
        method_spec("lora_typo", preset(name))


def test_selectors():
    assert layers(top(2, 30)) == "backbone/layers_(?:28|29)/.*"
    llama_attn = component("attention", "llama", layers=[1])
    assert llama_attn == "backbone/layers_(?:1)/self_attn/.*"
    bert_mlp = component("mlp", "bert")
    assert re.fullmatch(bert_mlp, "backbone/layers_3/output/kernel")
    assert not re.fullmatch(bert_mlp, "backbone/layers_3/attention/output/kernel")
    norms = component("norms", "bert")
    assert re.fullmatch(norms, "backbone/embeddings/norm/scale")
    assert re.fullmatch(norms, "backbone/layers_0/attention_norm/bias")
    assert re.fullmatch(component("norms", "llama"), "backbone/norm/scale")
    with pytest.raises(ValueError, match="inside the blocks"):
        component("embeddings", "llama", layers=[0])
    with pytest.raises(ValueError):
        top(3, 2)
    assert math.isclose(float(lr_multiplier(Rule(lr=0.25))), 0.25)
