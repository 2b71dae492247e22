"""GAN-style fine-tuning of a decoder (the `gan` term): the Gumbel samples enter the model as
the tokens they pick, the discriminator never moves the language model and the generator never
moves the discriminator, both objectives train, and weight 0 changes nothing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.objectives import TermContext
from ftjax.optim.trainability import combine
from ftjax.objectives.gan import GAN, GANConfig, shift_to_inputs
from ftjax.objectives.inputs import model_inputs
from ftjax.objectives.term import TERM_PARAMS
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train

WORDS = "the good bad film was very a fun dull story".split()


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("gan")
    rng = np.random.default_rng(0)
    with open(root / "style.jsonl", "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 6))}) + "\n")
    with open(root / "pairs.jsonl", "w") as f:
        for _ in range(60):
            f.write(json.dumps({"prompt": " ".join(rng.choice(WORDS, 3)),
                                "text": " ".join(rng.choice(WORDS, 4))}) + "\n")
    path = root / "experiment.py"
    path.write_text(f'''
import ml_collections
from ftjax.train.config import base_config


def get_config(variant="gan"):
    c = base_config()
    c.model.name = {str(tiny_llama_dir)!r}
    c.head.kind = "lm"
    c.task.kind = "causal_lm"
    c.task.max_length = 16
    c.task.packing = False
    c.sources.style = ml_collections.ConfigDict({{
        "path": {str(root / "style.jsonl")!r}, "split_fractions": (0.8, 0.1, 0.1),
        "label_column": None}})
    c.sources.pairs = ml_collections.ConfigDict({{
        "path": {str(root / "pairs.jsonl")!r}, "split_fractions": (0.8, 0.1, 0.1),
        "label_column": None, "prompt_column": "prompt"}})
    c.data.mixing = "uniform"
    c.steps = 3
    c.batch_size = 8
    c.eval_batch_size = 8
    c.eval_every = 3
    c.checkpoint_every = 3
    c.log_every = 1
    c.best_metric = ""
    c.optimizer.learning_rate = 1e-2
    if variant == "gan":
        c.losses = ml_collections.ConfigDict({{"gan": {{"kind": "gan", "real_source": "style"}}}})
    return c
''')
    return path


@pytest.fixture(scope="module")
def built(config):
    exp = build_experiment(load_config(config))
    batch = next(exp.train_iterator())
    return exp, batch


def _all_params(exp):
    """The model's parameters with the terms' own (the tree the step's forward pass sees)."""
    return combine(exp.state.trainable, exp.state.frozen)


def _context(exp, batch, params=None):
    params = _all_params(exp) if params is None else params
    model = exp.model
    output = model.apply({"params": params}, batch["input_ids"], **model_inputs(batch, model))
    return TermContext(model=model, params=params, trainable=None, batch=batch, output=output,
                       state=None, constants=None, rng=jax.random.key(1),
                       step=jnp.zeros((), jnp.int32), deterministic=True,
                       apply_inputs=lambda b: model_inputs(b, model))


def test_hard_gumbel_samples_enter_the_model_as_the_tokens_they_pick(built):
    exp, batch = built
    term = next(t for t in exp.terms if isinstance(t, GAN))
    ctx = _context(exp, batch)
    logits = ctx.output.logits
    key = jax.random.key(5)
    delta = term.gumbel_inputs(ctx, logits, key)
    picked = jnp.argmax(logits + jax.random.gumbel(key, logits.shape), -1)
    at = shift_to_inputs(batch["loss_mask"]) > 0
    assert bool(at.any())
    ids = jnp.where(at, shift_to_inputs(picked), batch["input_ids"])
    inputs = model_inputs(batch, exp.model)
    with_delta = exp.model.apply({"params": ctx.params}, batch["input_ids"], **inputs,
                                 embedding_delta=delta).hidden
    with_ids = exp.model.apply({"params": ctx.params}, ids, **inputs).hidden
    np.testing.assert_allclose(np.asarray(with_delta), np.asarray(with_ids), atol=1e-5)


@pytest.mark.parametrize("objective", ["gumbel", "reinforce"])
def test_the_discriminator_and_the_generator_move_only_their_own_parameters(built, objective):
    exp, batch = built
    base = next(t for t in exp.terms if isinstance(t, GAN))

    def grads(batch, **settings):
        term = GAN("gan", GANConfig(real_source="style", objective=objective, **settings))
        term.real_index = base.real_index
        params = _all_params(exp)
        head = params[TERM_PARAMS]["gan"]  # a discriminator that has learned something
        params = {**params, TERM_PARAMS: {"gan": {
            "w": jax.random.normal(jax.random.key(0), head["w"].shape), "b": head["b"]}}}
        return jax.grad(lambda p: term(_context(exp, batch, p)).total)(params)

    no_d = grads(batch, discriminator_weight=0.0)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(no_d[TERM_PARAMS]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(no_d["backbone"]))
    only_real = {**batch, "source": jnp.full_like(batch["source"], base.real_index)}
    d_only = grads(only_real)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(d_only["backbone"]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(d_only[TERM_PARAMS]))


@pytest.mark.parametrize("objective", ["gumbel", "reinforce"])
def test_both_objectives_train_and_weight_zero_changes_nothing(config, built, tmp_path,
                                                               objective):
    exp, batch = built
    result = train(load_config(config, [f"losses.gan.objective={objective}"]),
                   tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()
            if "split" not in line]
    assert all("gan/discriminator" in r and "loss/lm" in r for r in rows)
    head = result.state.trainable[TERM_PARAMS]["gan"]
    assert float(jnp.abs(head["w"]).max()) > 0  # the discriminator learned something
    # Weight 0: one step moves the language model exactly as a run without the term.
    if objective == "gumbel":
        plain = build_experiment(load_config(f"{config}:plain"))
        zero = build_experiment(load_config(config, ["losses.gan.weight=0.0"]))
        assert zero.sources[0].name == plain.sources[0].name
        plain_state, _ = jax.jit(plain.train_step)(plain.state, batch)
        zero_state, _ = jax.jit(zero.train_step)(zero.state, batch)
        without = {k: v for k, v in zero_state.trainable.items() if k != TERM_PARAMS}
        for a, b in zip(jax.tree.leaves(plain_state.trainable), jax.tree.leaves(without)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gan_settings_are_checked(config):
    with pytest.raises(ConfigError, match="real_source"):
        build_experiment(load_config(config, ["losses.gan.real_source=poems"]))
    with pytest.raises(ConfigError, match="objective"):
        load_config(config, ["losses.gan.objective=wasserstein"])
