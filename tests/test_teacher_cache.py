"""Cached teachers: `ftjax teacher-cache` writes a teacher run's outputs for a source's records,
a student's rows carry them, and the kd term without a teacher distils from them."""

import json

import jax
import numpy as np
import pytest

from conftest import finished_run
from ftjax.cli import main
from ftjax.data.errors import DataError
from ftjax.data.teacher_cache import CacheWriter, TeacherCache
from ftjax.generate.teacher_cache import teacher_outputs, write_teacher_cache
from ftjax.objectives.distill import kd_divergence, sparse_kd_divergence
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.train.restore import build_run_experiment, restore_run
from test_sequence_kd import _lm_config, prompts_file  # noqa: F401  (a fixture)

SHORT = ["steps=4", "eval_every=4", "checkpoint_every=4"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data,
                        ["steps=6", "eval_every=6", "checkpoint_every=6"])


@pytest.fixture(scope="module")
def class_cache(teacher_run, tmp_path_factory):
    config, workdir = teacher_run
    out = tmp_path_factory.mktemp("caches") / "polarity"
    assert main(["teacher-cache", str(config), "--workdir", str(workdir), "--out", str(out),
                 "--batch-size", "7"]) == 0
    return out


def test_sparse_kd_over_every_output_is_exactly_kd():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 5, 11)), rng.normal(size=(2, 5, 11))
    ids = np.broadcast_to(np.arange(11), teacher.shape)
    np.testing.assert_array_equal(sparse_kd_divergence(student, teacher, ids, 2.0),
                                  kd_divergence(student, teacher, 2.0))
    # Over a teacher's top 3: its distribution renormalized there, the student's full one.
    values, top = jax.lax.top_k(teacher, 3)
    p = np.exp(np.asarray(values) / 2.0)
    p /= p.sum(-1, keepdims=True)
    log_q = np.asarray(jax.nn.log_softmax(student / 2.0))
    expected = 4.0 * (p * (np.log(p) - np.take_along_axis(log_q, np.asarray(top), -1))).sum(-1)
    np.testing.assert_allclose(sparse_kd_divergence(student, values, top, 2.0), expected,
                               rtol=1e-5)


def test_a_cached_teacher_distils_like_the_teacher_in_the_step(teacher_run, class_cache):
    config, workdir = teacher_run
    cache = TeacherCache.open(class_cache)
    exp, restored = restore_run(workdir, roles=("train", "validation", "test"))
    records = exp.sources[0].splits["train"]
    assert cache.values.shape == (len(records), 2) and not cache.per_token
    # The cache holds the teacher's logits on each record's row.
    featurize = exp.sources[0].task.featurizer(exp.tokenizer)
    from ftjax.data.features import IndexedRecord, stack_rows
    rows = stack_rows([featurize(IndexedRecord(i, i, records[i])) for i in range(5)])
    values, _ = teacher_outputs(exp.model)(restored.state.params, rows)
    np.testing.assert_allclose(cache.values[:5], values, rtol=1e-5, atol=1e-6)

    on_the_fly = build_run_experiment(load_config(config, [
        *SHORT, "losses.kd.kind=kd", f"losses.kd.teacher={workdir}"]))
    cached = build_run_experiment(load_config(config, [
        *SHORT, "losses.kd.kind=kd", f"data.teacher_cache={class_cache}"]))
    assert "kd" not in cached.state.constants  # no teacher in the step
    batch = next(cached.train_iterator())
    assert batch["teacher_values"].shape == (8, 2)
    _, want = jax.jit(on_the_fly.train_step)(on_the_fly.state,
                                             {k: v for k, v in batch.items()
                                              if not k.startswith("teacher_")})
    _, got = jax.jit(cached.train_step)(cached.state, batch)
    assert float(got["loss/kd"]) > 0
    np.testing.assert_allclose(float(got["loss/kd"]), float(want["loss/kd"]), rtol=1e-4)


def test_a_cached_run_resumes_exactly(teacher_run, class_cache, tmp_path):
    config, _ = teacher_run
    overrides = ["losses.kd.kind=kd", f"data.teacher_cache={class_cache}",
                 "eval_every=4", "checkpoint_every=2", "best_metric="]
    whole = train(load_config(config, [*overrides, "steps=4"]), tmp_path / "whole", quiet=True)
    train(load_config(config, [*overrides, "steps=2"]), tmp_path / "parts", quiet=True)
    resumed = train(load_config(config, [*overrides, "steps=4"]), tmp_path / "parts",
                    quiet=True)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), whole.state.params,
                        resumed.state.params)
    assert all(jax.tree.leaves(same))


def test_an_interrupted_pre_pass_continues_to_the_same_cache(teacher_run, class_cache,
                                                             tmp_path, monkeypatch):
    _, workdir = teacher_run
    exp, restored = restore_run(workdir, roles=("train", "validation", "test"))
    source, params = exp.sources[0], restored.state.params
    kwargs = dict(teacher={"run": "t"}, part_records=16, batch_size=7)
    write_part = CacheWriter.write_part
    calls = []

    def interrupted(self, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[0])
        write_part(self, *args)

    monkeypatch.setattr(CacheWriter, "write_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_teacher_cache(exp.model, params, exp.tokenizer, source, tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists() and len(list((tmp_path / "c.partial").glob("*.npz"))) == 2
    monkeypatch.setattr(CacheWriter, "write_part", write_part)

    # Another teacher cannot continue it; the same one does, from record 32.
    other = jax.tree.map(lambda x: x * 1.01, params)
    with pytest.raises(DataError, match="another teacher"):
        write_teacher_cache(exp.model, other, exp.tokenizer, source, tmp_path / "c", **kwargs)
    write_teacher_cache(exp.model, params, exp.tokenizer, source, tmp_path / "c", **kwargs)
    whole = write_teacher_cache(exp.model, params, exp.tokenizer, source, tmp_path / "w",
                                **kwargs)
    a, b = TeacherCache.open(tmp_path / "c"), TeacherCache.open(whole)
    for name in ("values", "ids", "tokens_crc"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not (tmp_path / "c.partial").exists()


def test_a_cache_refuses_other_data_and_kd_without_a_teacher_refuses_rows_without_one(
        teacher_run, class_cache, tiny_text_data, tmp_path, capsys):
    config, workdir = teacher_run
    cached = [*SHORT, "losses.kd.kind=kd", f"data.teacher_cache={class_cache}"]
    with pytest.raises(DataError, match="holds 96 records, the train split has 90"):
        build_run_experiment(load_config(config, [*cached, "data.max_train_examples=90"]))
    for split in ("train", "validation", "test"):  # the same records in another order
        lines = open(tiny_text_data.format(split=split)).read().splitlines()
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    with pytest.raises(DataError, match="other records"):
        build_run_experiment(load_config(config, [*cached,
                                                  f"data.path={tmp_path / '{split}.jsonl'}"]))
    with pytest.raises(ConfigError, match="no teacher outputs"):
        build_run_experiment(load_config(config, [*SHORT, "losses.kd.kind=kd"]))
    manifest = json.loads((class_cache / "manifest.json").read_text())
    assert manifest["teacher"]["workdir"] == str(workdir.resolve())
    # A second pre-pass onto the finished cache is refused in one line; the cache is kept.
    assert main(["teacher-cache", str(config), "--workdir", str(workdir), "--out",
                 str(class_cache)]) == 2
    assert "exists" in capsys.readouterr().err
    assert TeacherCache.open(class_cache).values.shape[0] == manifest["records"]


def test_a_top_k_cache_of_a_language_model_teacher(tmp_path, tiny_bert_dir, tiny_text_data,
                                                    tiny_llama_dir, prompts_file):  # noqa: F811
    path, teacher_cfg = _lm_config(tmp_path, tiny_bert_dir, tiny_text_data, tiny_llama_dir,
                                   prompts_file, "optimizer.learning_rate=1e-1")
    train(teacher_cfg, tmp_path / "teacher", quiet=True)
    lm = [f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
          "task.max_length=24", f"data.path={prompts_file}", "task.prompt_key=prompt",
          "task.text_key=target", "model.dtype=float32", "best_metric=", "task.packing=False"]
    exp, restored = restore_run(tmp_path / "teacher", roles=("train", "validation", "test"))
    vocab = exp.model.config.vocab_size
    for name, k in (("top5", 5), ("all", 0)):
        assert main(["teacher-cache", str(path), "--workdir", str(tmp_path / "teacher"),
                     *[f"--set={o}" for o in lm], "--out", str(tmp_path / name),
                     "--top-k", str(k)]) == 0
    top5, every = TeacherCache.open(tmp_path / "top5"), TeacherCache.open(tmp_path / "all")
    assert top5.per_token and top5.values.shape == (24, 24, 5)
    assert every.values.shape == (24, 24, vocab)
    # The top 5 are the largest of all the teacher's logits, in order.
    order = np.argsort(-np.asarray(every.values), axis=-1, kind="stable")[..., :5]
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(every.values), order, -1),
                                  top5.values)

    student = [*lm, "steps=2", "eval_every=2", "checkpoint_every=2", "losses.kd.kind=kd"]
    with_all = build_run_experiment(load_config(path, [*student,
                                                       f"data.teacher_cache={tmp_path / 'all'}"]))
    batch = next(with_all.train_iterator())
    assert batch["teacher_token_values"].shape == (8, 24, vocab)
    on_the_fly = build_run_experiment(load_config(path, [
        *student, f"losses.kd.teacher={tmp_path / 'teacher'}"]))
    _, want = jax.jit(on_the_fly.train_step)(
        on_the_fly.state, {k: v for k, v in batch.items() if not k.startswith("teacher_")})
    _, got = jax.jit(with_all.train_step)(with_all.state, batch)
    np.testing.assert_allclose(float(got["loss/kd"]), float(want["loss/kd"]), rtol=1e-4)
    result = train(load_config(path, [*student, f"data.teacher_cache={tmp_path / 'top5'}"]),
                   tmp_path / "student", quiet=True)
    assert result.final_step == 2


def test_a_pretrained_language_model_as_the_teacher(tmp_path, tiny_bert_dir, tiny_text_data,
                                                     tiny_llama_dir, prompts_file,  # noqa: F811
                                                     capsys):
    path, cfg = _lm_config(tmp_path, tiny_bert_dir, tiny_text_data, tiny_llama_dir,
                           prompts_file, "task.packing=False")
    lm = [f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
          "task.max_length=24", f"data.path={prompts_file}", "task.prompt_key=prompt",
          "task.text_key=target", "model.dtype=float32", "task.packing=False"]
    assert main(["teacher-cache", str(path), "--pretrained", *[f"--set={o}" for o in lm],
                 "--out", str(tmp_path / "c"), "--top-k", "3"]) == 0
    cache = TeacherCache.open(tmp_path / "c")
    assert cache.manifest["teacher"]["pretrained"] == str(tiny_llama_dir)
    exp = build_run_experiment(load_config(path, lm))
    from ftjax.data.features import IndexedRecord, stack_rows
    records = exp.sources[0].splits["train"]
    featurize = exp.sources[0].task.featurizer(exp.tokenizer)
    rows = stack_rows([featurize(IndexedRecord(i, i, records[i])) for i in range(4)])
    values, ids = teacher_outputs(exp.model, 3)(exp.params, rows)
    np.testing.assert_allclose(cache.values[:4], values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.ids[:4], ids)
    # A classification head would be new, not trained: refused in one line.
    assert main(["teacher-cache", str(path), "--pretrained", "--out", str(tmp_path / "d")]) == 2
    assert "--pretrained" in capsys.readouterr().err and not (tmp_path / "d").exists()
