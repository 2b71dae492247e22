"""Curriculum learning: pacing functions, difficulty scores, the paced train stream
(ftjax.data.pacing, .difficulty, .curriculum) and self-paced learning (the `self_paced` term)."""

from __future__ import annotations

import json
import math
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.data import (
    CausalLM,
    DataError,
    SequenceClassification,
    TrainSource,
    make_mixed_train_iterator,
)
from ftjax.data.curriculum import Curriculum, CurriculumConfig, CurriculumOrder
from ftjax.data.difficulty import (
    column_scores,
    difficulty_ranks,
    length_scores,
    rarity_scores,
    reference_scores,
)
from ftjax.data.pacing import PACINGS, Pacing
from ftjax.data.pipeline import _shuffled_forever
from ftjax.data.teacher_cache import CacheWriter, TeacherCache, record_digest
from ftjax.data.run_data import scored
from ftjax.data.testing import tiny_decoder_tokenizer, tiny_encoder_tokenizer
from ftjax.models.model import ModelOutput
from ftjax.objectives.cross_entropy import CrossEntropy
from ftjax.objectives.self_paced import SelfPaced, SelfPacedConfig
from ftjax.objectives.term import TermContext
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.loop import train
from conftest import write_tiny_config

N = 53  # records of the synthetic split (prime, as the steps' examples below)
E = 7  # examples per step


def records(n: int = N) -> list[dict]:
    return [{"text": " ".join(["w"] * (1 + i % 5)), "label": i % 2} for i in range(n)]


def test_pacing_functions_are_monotone_and_reach_one_at_full_at_step():
    steps = np.arange(0, 40)
    for name in PACINGS:
        for start in (0.05, 0.3, 1.0):
            pacing = Pacing(name, start, full_at_step=23, root_power=3.0, stages=5)
            c = pacing(steps)
            assert np.all(np.diff(c) >= 0), name
            assert c[0] == (1.0 if name == "constant" else pytest.approx(start)), name
            assert np.all(c[23:] == 1.0) and np.all((0 < c) & (c <= 1.0)), name
            # The jitted step reads the same schedule (float32).
            assert np.allclose(np.asarray(pacing(jnp.asarray(steps), xp=jnp)), c, atol=1e-6)
    # Each shape as its formula says, between the ends.
    t, total, c0 = 7, 23, 0.3
    assert Pacing("linear", c0, total)([t])[0] == pytest.approx(c0 + (1 - c0) * t / total)
    assert Pacing("root", c0, total)([t])[0] == pytest.approx(
        math.sqrt(t * (1 - c0 ** 2) / total + c0 ** 2))
    assert Pacing("geometric", c0, total)([t])[0] == pytest.approx(c0 ** (1 - t / total))
    step = Pacing("step", c0, 20, stages=4)(np.arange(21))
    assert sorted(set(np.round(step, 9))) == pytest.approx([0.3, 0.475, 0.65, 0.825, 1.0])
    assert step[4] == pytest.approx(0.3) and step[5] == pytest.approx(0.475)


def order_of(ranks, pacing, seed=3) -> CurriculumOrder:
    return CurriculumOrder(Curriculum(np.asarray(ranks), pacing), seed=seed,
                           examples_per_step=E)


def test_each_step_draws_only_from_its_available_share_and_sees_all_of_it():
    ranks = np.random.default_rng(0).permutation(N)
    pacing = Pacing("root", 0.2, full_at_step=11)
    order = order_of(ranks, pacing)
    steps = np.arange(order.paced) // E
    limits = np.ceil(pacing(steps) * N)
    seen = order.records(0, order.paced)
    assert np.all(ranks[seen] < limits)
    assert len(seen) == 11 * E and np.any(np.diff(limits) > 0)
    # A share held at ceil(0.2 N) = 11 records: each comes once per pass of the walk.
    held = order_of(ranks, Pacing("step", 0.2, full_at_step=10**6, stages=2))
    seen = ranks[held.records(0, 11 * 40)].reshape(40, 11)
    assert all(sorted(one_pass) == list(range(11)) for one_pass in seen)
    assert not np.array_equal(seen[0], seen[1])  # reshuffled every pass


def test_hard_first_is_the_reverse_order_of_easy_first():
    scores = np.array([3.0, 1.0, 2.0, 1.0, 5.0, 4.0, 1.0])
    easy = difficulty_ranks(scores, "easy_first", 0)
    hard = difficulty_ranks(scores, "hard_first", 0)
    assert list(np.argsort(easy)[3:]) == [2, 0, 5, 4] and easy[4] == 6
    assert hard[4] == 0 and hard[5] == 1 and sorted(hard[[1, 3, 6]]) == [4, 5, 6]
    # Ties are broken by a seeded permutation, not by record order.
    ties = np.zeros(200)
    assert not np.array_equal(difficulty_ranks(ties, "easy_first", 0), np.arange(200))
    assert not np.array_equal(difficulty_ranks(ties, "easy_first", 0),
                              difficulty_ranks(ties, "easy_first", 1))


def test_random_access_resume_and_pickling_keep_the_stream():
    source = TrainSource("s", records(), None, 1.0,
                         Curriculum(np.random.default_rng(1).permutation(N),
                                    Pacing("linear", 0.1, full_at_step=13)))
    stream = _shuffled_forever(source, 0, 5, examples_per_step=E)
    sequential = [item for _, item in zip(range(260), iter(stream.to_iter_dataset()))]
    assert [stream[p] for p in range(260)] == sequential
    rebuilt = _shuffled_forever(source, 0, 5, examples_per_step=E)  # a resumed run
    assert [rebuilt[p] for p in range(200, 260)] == sequential[200:]
    unpickled = pickle.loads(pickle.dumps(stream))
    assert [unpickled[p] for p in reversed(range(260))] == sequential[::-1]
    # After the pacing the plain stream goes on from its start.
    plain = _shuffled_forever(source._replace(curriculum=None), 0, 5)
    paced = 13 * E
    assert sequential[paced:] == [plain[p] for p in range(260 - paced)]


def test_a_share_of_one_from_the_start_is_the_plain_stream():
    ranks = np.random.default_rng(2).permutation(N)
    plain = _shuffled_forever(TrainSource("t", records(), None), 0, 4)
    for pacing in (Pacing("constant", 1.0, full_at_step=5), Pacing("linear", 1.0, 5)):
        curriculum = Curriculum(ranks, pacing)
        assert CurriculumOrder(curriculum, seed=0, examples_per_step=E).paced == 0
        stream = _shuffled_forever(TrainSource("t", records(), None, 1.0, curriculum), 0, 4,
                                   examples_per_step=E)
        assert [stream[p] for p in range(140)] == [plain[p] for p in range(140)]


WORDS = [f"w{i}" for i in range(60)]


@pytest.mark.parametrize("kind,batching", [("classification", "mixed"),
                                           ("classification", "per_source"),
                                           ("causal_packed", "mixed")])
def test_a_source_with_a_curriculum_in_a_mixture_and_in_packed_rows(kind, batching):
    """Source a (one word per record, w0..w36, record i of rank i) holds its share at
    ceil(0.3 * 37) = 12 records; source b (w40..w50) has no curriculum."""
    if kind == "classification":
        tok = tiny_encoder_tokenizer(WORDS)
        task = SequenceClassification("text", "label", num_labels=2, max_length=5)
    else:
        tok = tiny_decoder_tokenizer(WORDS)
        task = CausalLM("text", max_length=11)
    held = Curriculum(np.arange(37), Pacing("step", 0.3, full_at_step=10**6, stages=2))
    sources = [TrainSource("a", [{"text": f"w{i}", "label": 0} for i in range(37)], task, 0.7,
                           held),
               TrainSource("b", [{"text": f"w{40 + i}", "label": 1} for i in range(11)], task)]

    def fresh():
        return make_mixed_train_iterator(sources, tok, batch_size=6, seed=2, batching=batching)

    iterator = fresh()
    batches = [next(iterator) for _ in range(30)]
    ids = np.concatenate([b["input_ids"].ravel() for b in batches])
    words = {int(w[1:]) for w in tok.decode([i for i in ids if i not in tok.special_ids]).split()}
    assert {w for w in words if w < 40} == set(range(12))
    assert {w for w in words if w >= 40} == set(range(40, 51))
    state = iterator.get_state()
    later = [next(iterator) for _ in range(5)]
    resumed = fresh()
    resumed.set_state(state)
    for a, b in zip(later, [next(resumed) for _ in range(5)]):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_rarity_length_and_column_scores_by_hand():
    three = [{"text": "the cat sat", "label": 0, "level": 2},
             {"text": "The dog", "label": 1, "level": "7.5"},
             {"text": "the the cat", "label": 0, "level": 1}]
    # Words: the x4, cat x2, sat, dog: 8 in all.
    log = {w: math.log(8 / c) for w, c in {"the": 4, "cat": 2, "sat": 1, "dog": 1}.items()}
    assert rarity_scores(three, "s") == pytest.approx(
        [log["the"] + log["cat"] + log["sat"], log["the"] + log["dog"],
         2 * log["the"] + log["cat"]])
    tok = tiny_encoder_tokenizer(["the", "cat", "sat", "dog"])
    assert list(length_scores(three, tok, "s")) == [3, 2, 3]
    pairs = [{"text": "the cat", "text_pair": "sat", "label": 0}]
    assert list(length_scores(pairs, tok, "s")) == [3]
    assert list(column_scores(three, "level", "s")) == [2.0, 7.5, 1.0]
    with pytest.raises(DataError, match=r"record 1: curriculum column 'grade'.*keep_columns"):
        column_scores([three[0] | {"grade": 1}, three[1]], "grade", "source 's'")
    with pytest.raises(DataError, match="record 0: curriculum column 'text'"):
        column_scores(three, "text", "s")


def write_cache(path, recs, logits):
    n, k = logits.shape
    writer = CacheWriter(path, {"source": "s", "split": "train", "records": n,
                                "record_digest": record_digest(recs), "outputs": k})
    writer.write_part(0, logits, np.broadcast_to(np.arange(k), logits.shape),
                      np.zeros(n, np.uint32))
    return TeacherCache.open(writer.finish())


def test_reference_scores_from_a_teacher_cache_and_a_cache_of_other_records(tmp_path):
    recs = [{"text": "a", "label": 0}, {"text": "b", "label": 2}, {"text": "c", "label": 1}]
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.0, 3.0], [4.0, 1.0, 0.0]], np.float32)
    cache = write_cache(tmp_path / "cache", recs, logits)
    loss = [float(np.log(np.exp(row).sum()) - row[r["label"]]) for row, r in zip(logits, recs)]
    assert reference_scores(cache, recs, "reference_loss", "s") == pytest.approx(loss, rel=1e-6)
    # Minus the margin: hard = small margin. Record 2 is wrong by 3, record 0 right by 2.
    assert list(reference_scores(cache, recs, "reference_margin", "s")) == [-2.0, -2.0, 3.0]
    # As a source loads it: the cache checked against the train records first.
    task = SequenceClassification("text", "label", num_labels=3, max_length=7)
    config = CurriculumConfig(score="reference_loss", reference=str(tmp_path / "cache"))
    assert scored("s", config, recs, task) == pytest.approx(loss, rel=1e-6)
    other = [dict(r) for r in recs]
    other[1]["text"] = "changed"
    with pytest.raises(DataError, match="made from other records"):
        scored("s", config, other, task)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    """(experiment file, metrics by step) of the tiny run without a curriculum."""
    root = tmp_path_factory.mktemp("plain")
    config = write_tiny_config(root / "experiment.py", tiny_bert_dir, tiny_text_data)
    return config, train_rows(tiny_run(config, root / "run"))


def tiny_run(tiny_config_file, path, overrides=()):
    train(load_config(tiny_config_file, ["steps=8", "eval_every=100", "checkpoint_every=4",
                                         *overrides]), path, quiet=True)
    return path


def train_rows(workdir) -> dict[int, dict]:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r for r in rows if "split" not in r}


def test_random_scores_and_constant_pacing_train_exactly_as_without_a_curriculum(
        plain_run, tmp_path, capsys):
    tiny_config_file, plain = plain_run
    capsys.readouterr()
    constant = train_rows(tiny_run(tiny_config_file, tmp_path / "constant", [
        "data.curriculum.score=random", "data.curriculum.pacing=constant"]))
    assert sorted(plain) == list(range(1, 9))
    assert [plain[s]["loss"] for s in plain] == [constant[s]["loss"] for s in plain]
    said = "curriculum: random scores, easy_first, c = 1, 96 records"
    assert f"source 'data': {said}" in capsys.readouterr().err  # said once at the start
    facts = json.loads((tmp_path / "constant" / "data.json").read_text())
    assert facts["sources"]["data"]["curriculum"] == said


def test_a_curriculum_run_resumed_from_a_checkpoint_equals_the_uninterrupted_one(
        plain_run, tmp_path):
    tiny_config_file, plain = plain_run
    paced = ["data.curriculum.score=length", "data.curriculum.start=0.3",
             "data.curriculum.full_at_step=5", "data.curriculum.pacing=geometric"]
    full = tiny_run(tiny_config_file, tmp_path / "full", paced)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for managed in ("checkpoints", "best"):
        for step_dir in (resumed / managed).iterdir():
            if step_dir.name != "4":
                shutil.rmtree(step_dir)
    tiny_run(tiny_config_file, resumed, paced)
    a, b = train_rows(full), train_rows(resumed)
    assert [a[s]["loss"] for s in range(5, 9)] == [b[s]["loss"] for s in range(5, 9)]
    assert a[1]["loss"] != plain[1]["loss"]  # the curriculum changed what the first steps saw


def test_bad_curriculum_settings_are_refused_by_key(tiny_config_file, tmp_path):
    for override, message in [
            ("data.curriculum.score=hardness", "score"),
            ("data.curriculum.start=0", "start"),
            ("data.curriculum.start=1.5", "start"),
            ("data.curriculum.full_at_step=0", "full_at_step"),
            ("data.curriculum.pacing=cosine", "pacing"),
            ("data.curriculum.order=random", "order")]:
        with pytest.raises(ConfigError, match=message):
            load_config(tiny_config_file, [override])
    with pytest.raises(ConfigError, match="score='column'.*set column"):
        load_config(tiny_config_file, ["data.curriculum.score=column"])
    with pytest.raises(ConfigError, match="set reference"):
        load_config(tiny_config_file, ["data.curriculum.score=reference_loss"])
    with pytest.raises(DataError, match="not a teacher cache"):
        tiny_run(tiny_config_file, tmp_path / "run", [
            "data.curriculum.score=reference_margin",
            f"data.curriculum.reference={tmp_path / 'missing'}"])
    with pytest.raises(DataError, match="curriculum column 'level'.*keep_columns"):
        tiny_run(tiny_config_file, tmp_path / "run2", ["data.curriculum.score=column",
                                                        "data.curriculum.column=level"])
    with pytest.raises(ConfigError, match="weight must lie in"):
        load_config(tiny_config_file, ["losses.sp.kind=self_paced", "losses.sp.weight=2.0"])
    assert CurriculumConfig(score="random").enabled and not CurriculumConfig().enabled


def self_paced_context(step: int):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(7, 3)) * 2, jnp.float32)
    batch = {"labels": jnp.asarray([0, 1, 2, 0, 1, 2, 0]),
             "example_mask": jnp.asarray([1, 1, 1, 1, 1, 0, 0], jnp.float32)}
    return TermContext(model=None, params=None, trainable=None, batch=batch,
                       output=ModelOutput(logits=logits, hidden=None), state=None, constants=None,
                       rng=jax.random.key(0), step=jnp.asarray(step), deterministic=False)


def test_self_paced_keeps_the_easiest_share_of_the_real_rows():
    term = SelfPaced("sp", SelfPacedConfig(pacing="linear", start=0.5, full_at_step=10))
    ctx = self_paced_context(step=0)
    task = CrossEntropy("ce")(ctx)
    losses = np.asarray(task.per_row)
    value = term(ctx)
    # 5 real rows, half of them -> the 3 of least loss are kept; filler rows never count.
    kept = np.argsort(losses[:5])[:3]
    assert float(task.total + value.total) == pytest.approx(float(losses[kept].sum()), rel=1e-6)
    assert float(value.stats["kept"]) == 3.0 and float(value.per_row[5]) == 0.0
    assert float(term(self_paced_context(step=10)).total) == 0.0  # all kept at full_at_step


def test_self_paced_at_weight_zero_trains_exactly_as_without_it(plain_run, tmp_path):
    tiny_config_file, plain = plain_run
    off = train_rows(tiny_run(tiny_config_file, tmp_path / "off", [
        "losses.sp.kind=self_paced", "losses.sp.weight=0.0"]))
    assert [plain[s]["loss/ce"] for s in plain] == [off[s]["loss/ce"] for s in plain]
    on = train_rows(tiny_run(tiny_config_file, tmp_path / "on", [
        "losses.sp.kind=self_paced", "losses.sp.start=0.5", "losses.sp.full_at_step=100"]))
    assert on[1]["sp/kept"] == 0.5  # ceil(half of the batch's 8 rows) at step 0
    assert on[2]["loss"] < on[2]["loss/ce"]
