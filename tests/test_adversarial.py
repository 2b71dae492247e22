"""Adversarial training on embeddings (fgm, pgd, freelb, smart): each term against a hand
computation on a tiny model, the perturbation inside its ball and off the padding, the
identities between the methods, weight 0 changing nothing, frozen leaves staying frozen, and
SMART's momentum state."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.objectives import TermContext, loss_for_task
from ftjax.objectives.adversarial import (
    FGM,
    PGD,
    SMART,
    AscentConfig,
    FreeLB,
    FreeLBConfig,
    PerturbationConfig,
    SmartConfig,
    symmetric_kl,
)
from ftjax.objectives.inputs import model_inputs
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train

STEPS = ["steps=3", "eval_every=3", "checkpoint_every=3"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    from conftest import write_tiny_config

    config = write_tiny_config(tmp_path_factory.mktemp("cfg") / "tiny.py", tiny_bert_dir,
                               tiny_text_data)
    exp = build_experiment(load_config(config))
    return config, exp, next(exp.train_iterator())


def _context(exp, batch, term_state=None):
    """A deterministic context (no dropout) on the batch, as the step builds it."""
    model, params = exp.model, exp.params
    inputs = model_inputs(batch, model)
    output = model.apply({"params": params}, batch["input_ids"], **inputs)
    return TermContext(model=model, params=params, trainable=None, batch=batch, output=output,
                       state=term_state, constants=None, rng=jax.random.key(7),
                       step=jnp.zeros((), jnp.int32), deterministic=True,
                       apply_inputs=lambda b: model_inputs(b, model),
                       params_of=lambda t: t)


def _task_loss(exp, batch, delta, params=None):
    """The summed cross-entropy with `delta` added to the word embeddings, by hand."""
    params = exp.params if params is None else params
    logits = exp.model.apply({"params": params}, batch["input_ids"],
                             **model_inputs(batch, exp.model), embedding_delta=delta).logits
    ce = -jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), batch["labels"]]
    return jnp.sum(ce * batch["example_mask"])


def _zeros(exp, batch):
    return jnp.zeros(batch["input_ids"].shape + (exp.model.config.hidden_size,))


def test_a_delta_on_padding_changes_no_real_position(experiment):
    _, exp, batch = experiment
    inputs = model_inputs(batch, exp.model)
    plain = exp.model.apply({"params": exp.params}, batch["input_ids"], **inputs)
    pad = (1 - batch["attention_mask"])[..., None].astype(jnp.float32)
    assert float(pad.sum()) > 0  # the batch has padding
    noise = jax.random.normal(jax.random.key(0), _zeros(exp, batch).shape) * pad
    moved = exp.model.apply({"params": exp.params}, batch["input_ids"], **inputs,
                            embedding_delta=noise)
    zero = exp.model.apply({"params": exp.params}, batch["input_ids"], **inputs,
                           embedding_delta=_zeros(exp, batch))
    np.testing.assert_array_equal(np.asarray(zero.logits), np.asarray(plain.logits))
    np.testing.assert_allclose(np.asarray(moved.logits), np.asarray(plain.logits), atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fgm_is_the_loss_one_normalized_gradient_step_away(experiment, norm):
    _, exp, batch = experiment
    eps = 0.5
    term = FGM("adv", PerturbationConfig(norm=norm, epsilon=eps))
    value = term(_context(exp, batch))

    real = batch["attention_mask"][..., None].astype(jnp.float32)
    g = jax.grad(lambda d: _task_loss(exp, batch, d))(_zeros(exp, batch)) * real
    if norm == "l2":
        delta = eps * g / jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2), keepdims=True))
        norms = np.sqrt(np.sum(np.asarray(delta) ** 2, axis=(1, 2)))
        np.testing.assert_allclose(norms, eps, rtol=1e-5)  # every example on the sphere
    else:
        delta = eps * jnp.sign(g)
    np.testing.assert_array_equal(np.asarray(delta * (1 - real)), 0.0)  # padding untouched
    expected = _task_loss(exp, batch, delta)
    np.testing.assert_allclose(float(value.total), float(expected), rtol=1e-5)
    # A first-order ascent step raises the loss.
    assert float(value.total) > float(_task_loss(exp, batch, _zeros(exp, batch)))


def test_pgd_of_one_step_is_fgm_and_stays_in_its_ball(experiment):
    _, exp, batch = experiment
    ctx = _context(exp, batch)
    for norm in ("l2", "linf"):
        fgm = FGM("adv", PerturbationConfig(norm=norm, epsilon=0.3))(ctx)
        one = PGD("adv", AscentConfig(norm=norm, epsilon=0.3, steps=1, step_size=0.3))(ctx)
        np.testing.assert_allclose(float(one.total), float(fgm.total), rtol=1e-6)

    term = PGD("adv", AscentConfig(norm="l2", epsilon=0.2, steps=4, step_size=0.15,
                                   init="uniform", init_scale=0.1))
    real = batch["attention_mask"][..., None].astype(jnp.float32)
    delta, values = term.ascend(ctx, lambda d: term.loss_and_ascent(ctx, d))
    norms = np.sqrt(np.sum(np.asarray(delta) ** 2, axis=(1, 2)))
    assert np.all(norms <= 0.2 + 1e-5) and np.all(norms > 0.19)  # projected onto the ball
    np.testing.assert_array_equal(np.asarray(delta * (1 - real)), 0.0)
    assert len(values) == 4 and float(values[-1]) > float(values[0])  # the ascent ascends
    linf = PGD("adv", AscentConfig(norm="linf", epsilon=0.05, steps=3, step_size=0.03))
    delta, _ = linf.ascend(ctx, lambda d: linf.loss_and_ascent(ctx, d))
    assert float(jnp.max(jnp.abs(delta))) == pytest.approx(0.05)


def test_freelb_averages_the_losses_along_its_ascent(experiment):
    _, exp, batch = experiment
    ctx = _context(exp, batch)
    clean = _task_loss(exp, batch, _zeros(exp, batch))
    one = FreeLB("adv", FreeLBConfig(steps=1, init="zero", init_scale=0.0))(ctx)
    np.testing.assert_allclose(float(one.total), float(clean), rtol=1e-6)  # delta_0 = 0
    two = FreeLB("adv", FreeLBConfig(steps=2, init="zero", init_scale=0.0, step_size=0.4))(ctx)
    fgm = FGM("adv", PerturbationConfig(epsilon=0.4))(ctx)
    np.testing.assert_allclose(float(two.total), (float(clean) + float(fgm.total)) / 2,
                               rtol=1e-5)

    # Its gradient is the mean of the gradients at each perturbation (the "free" steps).
    def total(params):
        return FreeLB("adv", FreeLBConfig(steps=2, init="zero", init_scale=0.0,
                                          step_size=0.4))(
            dataclasses.replace(ctx, params=params)).total

    delta = jax.lax.stop_gradient(
        0.4 * (lambda g: g / jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2), keepdims=True)))(
            jax.grad(lambda d: _task_loss(exp, batch, d))(_zeros(exp, batch))
            * batch["attention_mask"][..., None]))

    def by_hand(params):
        return (_task_loss(exp, batch, _zeros(exp, batch), params)
                + _task_loss(exp, batch, delta, params)) / 2

    got, want = jax.grad(total)(exp.params), jax.grad(by_hand)(exp.params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-7)


def test_smart_is_the_symmetric_kl_at_its_ascended_point_plus_the_bregman_term(experiment):
    _, exp, batch = experiment
    ctx = _context(exp, batch)
    cfg = SmartConfig(bregman_weight=0.0, init_scale=1e-3, step_size=1e-2)
    term = SMART("adv", cfg)
    value = term(ctx)
    clean = ctx.output.logits

    def divergence(d):
        logits = exp.model.apply({"params": exp.params}, batch["input_ids"],
                                 **model_inputs(batch, exp.model), embedding_delta=d).logits
        return jnp.sum(symmetric_kl(clean, logits) * batch["example_mask"])

    real = batch["attention_mask"][..., None].astype(jnp.float32)
    delta0 = 1e-3 * jax.random.normal(jax.random.fold_in(ctx.rng, 1), _zeros(exp, batch).shape,
                                      jnp.float32) * real
    delta = delta0 + 1e-2 * jnp.sign(jax.grad(divergence)(delta0) * real)
    np.testing.assert_allclose(float(value.total), float(divergence(delta)), rtol=1e-4)
    assert float(value.total) > float(divergence(delta0)) > 0

    # The Bregman term against a moving average: zero where the average is the weights.
    with_state = SMART("adv", dataclasses.replace(cfg, bregman_weight=2.0))
    same = with_state(_context(exp, batch, {"average": exp.params}))
    assert float(same.stats["bregman"]) == pytest.approx(0.0, abs=1e-9)
    shifted = jax.tree.map(lambda x: x * 1.1, exp.params)
    moved = with_state(_context(exp, batch, {"average": shifted}))
    other = exp.model.apply({"params": shifted}, batch["input_ids"],
                            **model_inputs(batch, exp.model)).logits
    bregman = jnp.sum(symmetric_kl(clean, other) * batch["example_mask"])
    np.testing.assert_allclose(float(moved.stats["bregman"]), float(bregman), rtol=1e-5)
    np.testing.assert_allclose(float(moved.total),
                               float(moved.stats["smoothness"]) + 2.0 * float(bregman),
                               rtol=1e-5)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if "split" not in json.loads(line)]


@pytest.fixture(scope="module")
def plain_step(experiment):
    """The state after one train step without an adversarial term, and the batch."""
    config, _, _ = experiment
    exp = build_experiment(load_config(config))
    batch = next(exp.train_iterator())
    return jax.jit(exp.train_step)(exp.state, batch), batch


@pytest.mark.parametrize("kind", ["fgm", "pgd", "freelb", "smart"])
def test_each_term_at_weight_zero_changes_nothing(experiment, plain_step, kind):
    config, _, _ = experiment
    (plain, plain_metrics), batch = plain_step
    ascent = ["losses.adv.steps=1"] if kind in ("pgd", "freelb") else []  # a cheaper compile
    exp = build_experiment(load_config(config, [f"losses.adv.kind={kind}",
                                                "losses.adv.weight=0.0", *ascent]))
    state, metrics = jax.jit(exp.train_step)(exp.state, batch)
    for a, b in zip(jax.tree.leaves(plain.trainable), jax.tree.leaves(state.trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(metrics["loss"]) == float(plain_metrics["loss"])
    assert float(metrics["loss/adv"]) > 0  # computed, weighed by nothing


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_adversarial_terms_compose_with_peft_methods_and_keep_frozen_leaves(
        experiment, tmp_path, method):
    """Trained with pgd, the method's trained leaves move and the frozen backbone does not."""
    config, exp, _ = experiment
    result = train(load_config(config, STEPS + [f"method={method}", "losses.adv.kind=pgd",
                                                "losses.adv.steps=2"]),
                   tmp_path / method, quiet=True)
    before = exp.params["backbone"]
    after = result.state.params["backbone"]
    frozen = jax.tree.leaves(jax.tree.map(lambda t, a: a if t is None else None,
                                          result.state.trainable["backbone"],
                                          after, is_leaf=lambda x: x is None))
    assert frozen  # the method froze the backbone's pretrained weights
    for path, leaf in jax.tree_util.tree_leaves_with_path(before["layers_0"]):
        got = after["layers_0"]
        for key in path:
            got = got[key.key]
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(got))
    assert all(r["loss/adv"] > 0 for r in _rows(tmp_path / method)[1:])


def test_smart_moving_average_follows_its_momentum(experiment):
    config, _, _ = experiment
    terms = ["losses.adv.kind=smart", "losses.adv.momentum=0.5"]
    exp = build_experiment(load_config(config, STEPS + terms))
    step = jax.jit(exp.train_step)
    theta0 = jax.tree.map(np.asarray, exp.state.trainable)
    batch = next(exp.train_iterator())
    state, _ = step(exp.state, batch)
    expected = jax.tree.map(lambda a, b: 0.5 * np.asarray(a) + 0.5 * b, state.trainable, theta0)
    for a, b in zip(jax.tree.leaves(state.terms["adv"]["average"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-8)
    # Its state is saved and resumed like every term state (tests/test_loss_terms.py).


def test_bad_settings_and_tasks_are_refused_in_one_line(experiment, tmp_path):
    config, _, _ = experiment
    for override, message in [("losses.adv.epsilon=nan", "epsilon"),
                              ("losses.adv.norm=l3", "norm"),
                              ("losses.adv.steps=0", "steps")]:
        kind = "fgm" if "norm" in override or "epsilon" in override else "pgd"
        with pytest.raises(ConfigError, match=message):
            load_config(config, [f"losses.adv.kind={kind}", override])
    with pytest.raises(ConfigError, match="init 'normal' needs init_scale"):
        load_config(config, ["losses.adv.kind=pgd", "losses.adv.init=normal"])
    assert loss_for_task("extractive_qa").name == "span"
