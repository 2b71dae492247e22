"""Loss terms defined here, outside ftjax, plug into training through the config alone: they
change training as they should, are logged on their own, carry state through checkpoints, and a
term at weight 0 changes nothing."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_config

from ftjax.objectives import LossTerm, TermConfig, TermValue
from ftjax.settings import ConfigError, setting
from ftjax.train.config import load_config
from ftjax.train.loop import train


@dataclasses.dataclass(frozen=True)
class PushConfig(TermConfig):
    target: int = setting(1, "the class whose logit the term raises")


class PushClass(LossTerm):
    """-logit[target] per example: pushes every prediction toward one class."""

    Config = PushConfig

    def __call__(self, ctx):
        logits = ctx.output.logits.astype(jnp.float32)
        per_row = -logits[:, self.config.target] * ctx.batch["example_mask"]
        return TermValue(total=jnp.sum(per_row), per_row=per_row)


class StepCounter(LossTerm):
    """A per-step term with state: counts the optimizer steps it has seen; adds nothing."""

    per_example = False

    def init_state(self, setup):
        return {"count": setup.place_replicated(jnp.zeros((), jnp.int32))}

    def update_state(self, state, constants, trainable, step):
        return {"count": state["count"] + 1}

    def __call__(self, ctx):
        return TermValue(total=jnp.zeros(()))


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _predicted_share(result, target=1):
    """Share of validation examples the trained model assigns to `target`."""
    exp = result.experiment
    step = exp.jit_eval_step()
    preds = []
    for batch in exp.placed_eval_batches("validation"):
        logits = exp.model.apply({"params": result.state.params}, batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
        mask = np.asarray(batch["example_mask"]) > 0
        preds.extend(np.asarray(jnp.argmax(logits, -1))[mask].tolist())
    del step
    return float(np.mean(np.asarray(preds) == target))


BASE = ["steps=6", "eval_every=6", "checkpoint_every=6"]


@pytest.fixture(scope="module")
def module_config(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    return write_tiny_config(tmp_path_factory.mktemp("cfg") / "tiny.py", tiny_bert_dir,
                             tiny_text_data)


@pytest.fixture(scope="module")
def plain(module_config, tmp_path_factory):
    """The run without any term of ours, shared by the comparisons."""
    workdir = tmp_path_factory.mktemp("plain")
    return train(load_config(module_config, BASE), workdir, quiet=True), workdir


def test_a_term_of_our_own_changes_training_and_is_logged(module_config, plain, tmp_path):
    tiny_config_file, base = module_config, BASE
    plain = plain[0]
    pushed = train(load_config(tiny_config_file, base + [
        "losses.push.kind=test_loss_terms:PushClass", "losses.push.weight=5.0",
        "losses.push.target=1"]), tmp_path / "push", quiet=True)
    assert _predicted_share(pushed) == 1.0 > _predicted_share(plain)
    rows = [r for r in _rows(tmp_path / "push") if "split" not in r]
    assert all("loss/push" in r and "loss/ce" in r for r in rows)
    last = rows[-1]  # the loss is the weighted sum of the terms
    assert last["loss"] == pytest.approx(last["loss/ce"] + 5.0 * last["loss/push"], rel=1e-5)
    assert [t.name for t in pushed.experiment.terms] == ["ce", "push"]


def test_a_term_at_weight_zero_changes_nothing(module_config, plain, tmp_path):
    plain, plain_dir = plain
    zero = train(load_config(module_config, BASE + [
        "losses.push.kind=test_loss_terms:PushClass", "losses.push.weight=0.0"]),
        tmp_path / "zero", quiet=True)
    for a, b in zip(jax.tree.leaves(plain.state.trainable), jax.tree.leaves(zero.state.trainable)):
        np.testing.assert_array_equal(a, b)
    losses = lambda w: [r["loss"] for r in _rows(w) if "split" not in r]  # noqa: E731
    assert losses(plain_dir) == losses(tmp_path / "zero")


def test_a_scheduled_weight_ramps_without_recompiling(tiny_config_file, tmp_path):
    train(load_config(tiny_config_file, [
        "steps=6", "eval_every=6", "checkpoint_every=6",
        "losses.push.kind=test_loss_terms:PushClass", "losses.push.weight=1.0",
        "losses.push.weight_start=0.0", "losses.push.ramp_start=1", "losses.push.ramp_steps=4"]),
        tmp_path, quiet=True)
    weights = [r["weight/push"] for r in _rows(tmp_path) if "split" not in r]
    assert weights == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0])


def test_term_state_lives_in_the_checkpoint_and_resumes(tiny_config_file, tmp_path):
    overrides = ["losses.count.kind=test_loss_terms:StepCounter", "losses.count.weight=0.0",
                 "best_metric="]  # keep the last state, not the best
    cfg = load_config(tiny_config_file, ["steps=6", *overrides])
    first = train(cfg, tmp_path, quiet=True)
    assert int(first.state.terms["count"]["count"]) == 6
    resumed = train(load_config(tiny_config_file, ["steps=9", *overrides]), tmp_path, quiet=True)
    assert int(resumed.state.terms["count"]["count"]) == 9  # 6 restored, 3 more


def test_term_configs_are_checked_where_written(tiny_config_file):
    with pytest.raises(ConfigError, match=r"losses.push.*unknown key 'losses.push.targt'.*"
                                          r"did you mean 'losses.push.target'"):
        load_config(tiny_config_file, ["losses.push.kind=test_loss_terms:PushClass",
                                       "losses.push.targt=1"])
    with pytest.raises(ConfigError, match=r"losses.nope: unknown loss term 'nope'"):
        load_config(tiny_config_file, ["losses.nope.weight=1.0"])
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module'"):
        load_config(tiny_config_file, ["losses.x.kind=no_such_module:Term"])
    with pytest.raises(ConfigError, match=r"ramp_start and ramp_steps must be >= 0"):
        load_config(tiny_config_file, ["losses.ce.ramp_steps=-1"])
