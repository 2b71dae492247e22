"""Logit knowledge distillation (the `kd` term) and layer-dropped students."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import finished_run
from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.models.layout import keep_layers, to_layout
from ftjax.objectives.distill import kd_divergence
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.train.restore import build_run_experiment


def test_kd_equals_the_hand_computed_value_and_vanishes_at_the_teachers_logits():
    student = np.array([[1.0, -0.5, 2.0], [0.3, 0.1, -1.2]], np.float32)
    teacher = np.array([[0.2, 0.4, 1.5], [-0.7, 1.1, 0.0]], np.float32)
    T = 2.5
    p = np.exp(teacher / T) / np.exp(teacher / T).sum(-1, keepdims=True)
    q = np.exp(student / T) / np.exp(student / T).sum(-1, keepdims=True)
    expected = T * T * (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(kd_divergence(student, teacher, T), expected, rtol=1e-5)
    value, grad = jax.value_and_grad(lambda s: kd_divergence(s, teacher, T).sum())(teacher)
    assert abs(float(value)) < 1e-6
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data,
                        ["steps=6", "eval_every=6", "checkpoint_every=6"])


def _student(config_file, teacher, *extra):
    return load_config(config_file, [
        "steps=3", "eval_every=3", "checkpoint_every=3", "model.keep_layers=(1,)",
        "losses.kd.kind=kd", f"losses.kd.teacher={teacher}", "losses.kd.temperature=2.0",
        *extra])


def test_the_teacher_is_a_frozen_constant_and_a_zero_weight_changes_nothing(teacher_run,
                                                                             tmp_path):
    config_file, teacher = teacher_run
    exp = build_run_experiment(_student(config_file, teacher))
    assert exp.model.config.num_layers == 1
    teacher_params = jax.tree.map(np.asarray, exp.state.constants["kd"])
    opt_leaves = len(jax.tree.leaves(exp.state.opt_state))
    batch = next(exp.train_iterator())
    state, metrics = jax.jit(exp.train_step)(exp.state, batch)
    assert float(metrics["loss/kd"]) > 0
    # Never trained, never in the optimizer: bit-identical after a step.
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                            teacher_params, state.constants["kd"])))
    assert len(jax.tree.leaves(state.opt_state)) == opt_leaves
    assert len(jax.tree.leaves(teacher_params)) > len(jax.tree.leaves(exp.state.trainable)) / 2

    # A kd term of weight 0 trains exactly like no kd term at all.
    plain = train(load_config(config_file, ["steps=3", "eval_every=3", "checkpoint_every=3",
                                            "model.keep_layers=(1,)"]),
                  tmp_path / "plain", quiet=True)
    zero = train(_student(config_file, teacher, "losses.kd.weight=0.0"), tmp_path / "zero",
                 quiet=True)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), plain.state.params,
                        zero.state.params)
    assert all(jax.tree.leaves(same))


def test_kd_refuses_a_teacher_of_another_output_space(teacher_run, tiny_llama_dir):
    config_file, _ = teacher_run
    with pytest.raises(ConfigError, match="one output space"):
        build_run_experiment(_student(config_file, str(tiny_llama_dir)))


@pytest.mark.parametrize("scanned", [False, True])
def test_a_layer_dropped_student_is_the_teachers_kept_path(scanned):
    """Dropping a pre-LN block is making it the identity: zero its two output projections."""
    config = preset("tiny-llama").with_policy(scan_layers=scanned)
    config = dataclasses.replace(config, num_layers=3) if config.num_layers != 3 else config
    teacher = Model(config, HeadConfig("lm"))
    params = init_params(teacher, jax.random.key(0))
    student, student_params = keep_layers(teacher, params, (0, 2))
    assert student.config.num_layers == 2
    per_layer = to_layout(params, False)
    skipped = per_layer["backbone"]["layers_1"]
    for name in (("self_attn", "o_proj"), ("mlp", "down_proj")):
        kernel = skipped[name[0]][name[1]]["kernel"]
        skipped[name[0]][name[1]]["kernel"] = jnp.zeros_like(kernel)
    ids = jax.random.randint(jax.random.key(5), (2, 7), 3, config.vocab_size)
    expected = teacher.apply({"params": to_layout(per_layer, scanned)}, ids).logits
    np.testing.assert_allclose(student.apply({"params": student_params}, ids).logits, expected,
                               rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="increasing distinct"):
        keep_layers(teacher, params, (2, 0))


def test_hidden_state_kd_is_zero_against_itself_and_matches_a_hand_computation(
        tiny_config_file, tiny_bert_dir):
    from ftjax.models.model import layer_hidden_states
    from ftjax.train.experiment import build_experiment

    # Teacher = the student's own pretrained weights: every pair of equal blocks matches.
    same = build_experiment(load_config(tiny_config_file, [
        "losses.hid.kind=kd_hidden", f"losses.hid.teacher={tiny_bert_dir}",
        "losses.hid.layers=('0:0', '1:1')"]))
    batch = next(same.train_iterator())
    _, metrics = jax.jit(same.train_step)(same.state, batch)
    assert abs(float(metrics["loss/hid"])) < 1e-6

    # Block 0 of the student against block 1 of the teacher, by hand.
    exp = build_experiment(load_config(tiny_config_file, [
        "losses.hid.kind=kd_hidden", f"losses.hid.teacher={tiny_bert_dir}",
        "losses.hid.layers=('0:1',)", "losses.hid.loss=mse"]))
    _, metrics = jax.jit(exp.train_step)(exp.state, batch)
    inputs = {k: batch[k] for k in ("attention_mask", "positions", "token_type_ids")}
    _, sown = exp.model.apply({"params": exp.params}, batch["input_ids"], **inputs,
                              mutable=["intermediates"])
    _, teacher_sown = exp.terms[1].teacher.apply({"params": exp.state.constants["hid"]},
                                                 batch["input_ids"], **inputs,
                                                 mutable=["intermediates"])
    a = np.asarray(layer_hidden_states(sown)[0])
    b = np.asarray(layer_hidden_states(teacher_sown)[1])
    mask = batch["attention_mask"].astype(np.float64)
    rows = (((a - b) ** 2).mean(-1) * mask).sum(-1) / mask.sum(-1)
    expected = (rows * batch["example_mask"]).sum() / batch["example_mask"].sum()
    np.testing.assert_allclose(float(metrics["loss/hid"]), expected, rtol=1e-4)
    assert expected > 1e-5  # the blocks really differ


def test_attention_kd_is_zero_against_itself_and_positive_between_blocks(tiny_config_file,
                                                                        tiny_bert_dir):
    from ftjax.train.experiment import build_experiment

    values = {}
    for pairs in ("('0:0', '1:1')", "('0:1',)"):
        exp = build_experiment(load_config(tiny_config_file, [
            "losses.att.kind=kd_attention", f"losses.att.teacher={tiny_bert_dir}",
            f"losses.att.layers={pairs}"]))
        batch = next(exp.train_iterator())
        _, metrics = jax.jit(exp.train_step)(exp.state, batch)
        values[pairs] = float(metrics["loss/att"])
    assert abs(values["('0:0', '1:1')"]) < 1e-6
    assert values["('0:1',)"] > 1e-6  # other blocks attend otherwise


def test_value_relation_kd_matches_a_hand_computation(tiny_config_file, tiny_bert_dir):
    """MiniLM's value relation: softmax(V V^T / sqrt(d)) per head over real keys, compared by
    KL(teacher || student) per real query; here student block 0 against teacher block 1 of
    the same weights, by hand from each block's value projection."""
    from ftjax.train.experiment import build_experiment

    terms = ["losses.att.kind=kd_attention", f"losses.att.teacher={tiny_bert_dir}"]
    same = build_experiment(load_config(tiny_config_file, [
        *terms, "losses.att.layers=('0:0', '1:1')", "losses.att.relations=('attention', "
        "'value')"]))
    batch = next(same.train_iterator())
    _, metrics = jax.jit(same.train_step)(same.state, batch)
    assert abs(float(metrics["loss/att"])) < 1e-6

    exp = build_experiment(load_config(tiny_config_file, [
        *terms, "losses.att.layers=('0:1',)", "losses.att.relations=('value',)"]))
    _, metrics = jax.jit(exp.train_step)(exp.state, batch)
    inputs = {k: batch[k] for k in ("attention_mask", "positions", "token_type_ids")}
    _, captured = exp.model.apply(
        {"params": exp.params}, batch["input_ids"], **inputs, deterministic=True,
        capture_intermediates=lambda module, method: module.name == "value")
    values = sorted((jax.tree_util.keystr(path), leaf) for path, leaf in
                    jax.tree_util.tree_leaves_with_path(captured["intermediates"])
                    if "value" in jax.tree_util.keystr(path)
                    and "value_relation" not in jax.tree_util.keystr(path))
    assert len(values) == 2  # one value projection per block, block 0 first
    n, mask = exp.model.config.num_heads, np.asarray(batch["attention_mask"], np.float64)

    def relation(v):
        b, t, d = v.shape
        v = np.asarray(v, np.float64).reshape(b, t, n, d // n).transpose(0, 2, 1, 3)
        logits = v @ v.transpose(0, 1, 3, 2) / np.sqrt(d // n)
        logits = np.where(mask[:, None, None, :] > 0, logits, -np.inf)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    q, p = relation(values[0][1]), relation(values[1][1])
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1).mean(1)  # (B, T)
    per_row = (kl * mask).sum(-1) / mask.sum(-1)
    expected = per_row.sum() / np.asarray(batch["example_mask"]).sum()
    np.testing.assert_allclose(float(metrics["loss/att"]), expected, rtol=1e-4)
    assert expected > 1e-5
    with pytest.raises(ValueError, match="relations must be"):
        load_config(tiny_config_file, [*terms, "losses.att.relations=('keys',)"])


def test_terms_naming_one_teacher_share_its_copy_and_its_forward_pass(teacher_run,
                                                                      monkeypatch):
    import ftjax.objectives.distill as distill
    from ftjax.train.experiment import build_experiment
    from ftjax.train.restore import load_run_model

    config_file, teacher = teacher_run
    loads, forwards = [], []
    inputs = distill.model_inputs
    # model_inputs is called once per teacher forward pass (the student's come from the step).
    monkeypatch.setattr(distill, "model_inputs", lambda *a: forwards.append(1) or inputs(*a))
    terms = [f"losses.{name}.{key}={value}" for name, kind in
             (("kd", "kd"), ("hid", "kd_hidden"), ("att", "kd_attention"))
             for key, value in (("kind", kind), ("teacher", teacher))]
    exp = build_experiment(load_config(config_file, ["steps=3", *terms]),
                           load_model=lambda *a: loads.append(a) or load_run_model(*a))
    assert len(loads) == 1  # one teacher loaded for the three terms naming it
    constants = exp.state.constants
    assert all(a is b is c for a, b, c in zip(*(jax.tree.leaves(constants[t])
                                                for t in ("kd", "hid", "att"))))
    batch = next(exp.train_iterator())
    _, metrics = jax.jit(exp.train_step)(exp.state, batch)
    assert all(float(metrics[f"loss/{t}"]) > 0 for t in ("kd", "hid", "att"))
    # As many teacher forward passes traced as with the kd term alone.
    three = len(forwards)
    forwards.clear()
    alone = build_experiment(load_config(config_file, ["steps=3", *terms[:2]]),
                             load_model=load_run_model)
    jax.jit(alone.train_step)(alone.state, batch)
    assert three == len(forwards) > 0


@pytest.fixture(scope="module")
def narrow_bert_dir(tmp_path_factory):
    """A tiny BERT 20 wide (the teacher fixture is 30 wide), same vocabulary and tokenizer."""
    from conftest import make_tiny_tokenizer
    from ftjax.io import save_hf

    cfg = dataclasses.replace(preset("tiny-bert"), hidden_size=20, intermediate_size=23)
    params = init_params(Model(cfg, HeadConfig("none")), jax.random.key(1))
    out = tmp_path_factory.mktemp("narrow_bert")
    save_hf(cfg, params, out, tokenizer=make_tiny_tokenizer())
    return out


def test_a_learned_projection_matches_other_widths_trains_and_is_never_exported(
        tiny_config_file, tiny_bert_dir, narrow_bert_dir, tmp_path):
    base = [f"model.name={narrow_bert_dir}", "steps=4", "eval_every=4", "checkpoint_every=2",
            "best_metric="]
    hidden = ["losses.hid.kind=kd_hidden", f"losses.hid.teacher={tiny_bert_dir}",
              "losses.hid.layers=('0:0', '1:1')"]
    exp = build_run_experiment(load_config(tiny_config_file, [*base, *hidden]))
    own = exp.state.trainable["terms"]["hid"]
    assert {k: v["kernel"].shape for k, v in own.items()} == {
        "student0_teacher0": (20, 30), "student1_teacher1": (20, 30)}
    assert "terms" not in exp.params  # the model's own tree: what exports see
    before = np.asarray(own["student1_teacher1"]["kernel"])
    state, metrics = jax.jit(exp.train_step)(exp.state, next(exp.train_iterator()))
    assert float(metrics["loss/hid"]) > 0
    assert not np.array_equal(before, state.trainable["terms"]["hid"]["student1_teacher1"]
                              ["kernel"])  # it trains with the student

    # Resumed runs equal the uninterrupted one, projection included.
    whole = train(load_config(tiny_config_file, [*base, *hidden]), tmp_path / "whole",
                  quiet=True)
    train(load_config(tiny_config_file, [*base, *hidden, "steps=2"]), tmp_path / "parts",
          quiet=True)
    parts = train(load_config(tiny_config_file, [*base, *hidden]), tmp_path / "parts",
                  quiet=True)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), whole.state.trainable,
                        parts.state.trainable)
    assert all(jax.tree.leaves(same))
    # At weight 0 the student trains exactly as without the term.
    zero = train(load_config(tiny_config_file, [*base, *hidden, "losses.hid.weight=0.0"]),
                 tmp_path / "zero", quiet=True)
    plain = train(load_config(tiny_config_file, base), tmp_path / "plain", quiet=True)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), zero.state.params,
                        plain.state.params)
    assert all(jax.tree.leaves(same))
    # Exports hold the student alone.
    from ftjax.cli import main
    from safetensors.numpy import load_file

    for fmt, extra in (("hf", ["--backbone-only"]), ("adapter", [])):
        assert main(["export", "--workdir", str(tmp_path / "whole"), "--format", fmt,
                     "--out", str(tmp_path / fmt), *extra]) == 0
    exported = [p for d in ("hf", "adapter") for p in (tmp_path / d).glob("*.safetensors")]
    assert exported and not any("terms" in key or "teacher" in key
                                for p in exported for key in load_file(p))
