"""In-step augmentation terms: mixup of pooled representations and span cutoff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_config

from ftjax.objectives import TermContext
from ftjax.objectives.cutoff import Cutoff, CutoffConfig, cutoff_mask, jensen_shannon
from ftjax.objectives.inputs import model_inputs
from ftjax.objectives.mixup import Mixup, MixupConfig
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    config = write_tiny_config(tmp_path_factory.mktemp("cfg") / "tiny.py", tiny_bert_dir,
                               tiny_text_data)
    exp = build_experiment(load_config(config))
    return config, exp, next(exp.train_iterator())


def _context(exp, batch, seed=3):
    model = exp.model
    output = model.apply({"params": exp.params}, batch["input_ids"],
                         **model_inputs(batch, model))
    return TermContext(model=model, params=exp.params, trainable=None, batch=batch,
                       output=output, state=None, constants=None, rng=jax.random.key(seed),
                       step=jnp.zeros((), jnp.int32), deterministic=True,
                       apply_inputs=lambda b: model_inputs(b, model))


def _ce_sum(logits, labels, weights):
    ce = -jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), labels]
    return float(jnp.sum(ce * weights))


def test_mixup_of_identical_rows_is_their_cross_entropy_and_differs_otherwise(experiment):
    _, exp, batch = experiment
    same = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), batch)
    ctx = _context(exp, same)
    value = Mixup("mix", MixupConfig(alpha=0.4))(ctx)
    np.testing.assert_allclose(float(value.total), _ce_sum(ctx.output.logits, same["labels"],
                                                           same["example_mask"]), rtol=1e-5)
    mixed = _context(exp, batch)
    plain = _ce_sum(mixed.output.logits, batch["labels"], batch["example_mask"])
    assert float(Mixup("mix", MixupConfig(alpha=0.4))(mixed).total) != pytest.approx(plain)


def test_cutoff_erases_one_inner_span_per_row():
    mask = jnp.array([[1] * 10 + [0] * 6, [1] * 16, [1, 1, 0, 0] + [0] * 12,
                      [1] * 3 + [0] * 13])
    cut = np.asarray(cutoff_mask(mask, 0.25, jax.random.key(0)))
    for row, real in zip(cut, (10, 16, 2, 3)):
        erased = np.flatnonzero(row[:real] == 0)
        inner = real - 2
        if inner < 1:
            assert len(erased) == 0
            continue
        assert len(erased) == max(1, round(0.25 * inner))
        assert erased.min() >= 1 and erased.max() <= real - 2  # the ends stay
        assert np.all(np.diff(erased) == 1)  # one span
        assert np.all(row[real:] == 0)


def test_cutoff_is_the_task_loss_on_the_cut_view_plus_its_consistency(experiment):
    _, exp, batch = experiment
    ctx = _context(exp, batch)
    term = Cutoff("cut", CutoffConfig(rate=0.3, consistency=2.0))
    value = term(ctx)
    k_span, _ = jax.random.split(ctx.rng)
    view = {**batch, "attention_mask": cutoff_mask(batch["attention_mask"], 0.3, k_span)}
    logits = exp.model.apply({"params": exp.params}, batch["input_ids"],
                             **model_inputs(view, exp.model)).logits
    ce = _ce_sum(logits, batch["labels"], batch["example_mask"])
    js = float(jnp.sum(jensen_shannon(ctx.output.logits, logits) * batch["example_mask"]))
    np.testing.assert_allclose(float(value.stats["view_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(value.total), ce + 2.0 * js, rtol=1e-5)
    assert float(jnp.max(jnp.abs(jensen_shannon(logits, logits)))) < 1e-6
    far = jensen_shannon(jnp.array([[3.0, -3.0]]), jnp.array([[-3.0, 3.0]]))
    assert 0 < float(far[0]) <= np.log(2)  # bounded by log 2


@pytest.mark.parametrize("kind", ["mixup", "cutoff"])
def test_at_weight_zero_nothing_changes_and_at_weight_one_the_term_trains(experiment, kind):
    config, _, batch = experiment
    plain = build_experiment(load_config(config))
    plain_state, plain_metrics = jax.jit(plain.train_step)(plain.state, batch)
    zero = build_experiment(load_config(config, [f"losses.aug.kind={kind}",
                                                 "losses.aug.weight=0.0"]))
    state, metrics = jax.jit(zero.train_step)(zero.state, batch)
    for a, b in zip(jax.tree.leaves(plain_state.trainable), jax.tree.leaves(state.trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(metrics["loss"]) == float(plain_metrics["loss"]) and metrics["loss/aug"] > 0


def test_terms_refuse_what_they_cannot_augment(experiment):
    config, _, _ = experiment
    with pytest.raises(ConfigError, match="pooling"):
        build_experiment(load_config(config, ["losses.aug.kind=mixup", "head.pooling=pooler"]))
    with pytest.raises(ConfigError, match="rate"):
        load_config(config, ["losses.aug.kind=cutoff", "losses.aug.rate=1.5"])
    with pytest.raises(ConfigError, match="alpha"):
        load_config(config, ["losses.aug.kind=mixup", "losses.aug.alpha=0"])
