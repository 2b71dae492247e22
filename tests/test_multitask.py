"""Multi-task fine-tuning: one backbone, a head per task, rows of several tasks in one batch.

Invariants: each task's loss on a mixed batch is what its rows give alone; a task's head does
not move on a batch without its rows; every task is evaluated on its own sources with its own
metric, and the split's score averages the tasks."""

import json

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import WORDS, make_sentences
from ftjax.cli import main
from ftjax.data import SequenceClassification, TrainSource, make_mixed_train_iterator
from ftjax.data.extractive_qa import ExtractiveQA
from ftjax.data.multitask import TaskOfMany, task_view
from ftjax.io import load_pretrained
from ftjax.io.adapter import load_adapter
from ftjax.io.tokenizer import load_tokenizer
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train

TAGS = {"good": "B-POS", "great": "B-POS", "bad": "B-NEG", "awful": "B-NEG"}


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """Three sources of the tiny sentences: sentiment (2 labels), length (3 labels) and tags
    (NER, CoNLL files: the strongest sentiment words tagged by polarity)."""
    root = tmp_path_factory.mktemp("multitask")
    for split, n, seed in (("train", 64, 0), ("validation", 24, 1), ("test", 24, 2)):
        rows = make_sentences(n, seed)
        with open(root / f"sentiment_{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(root / f"length_{split}.jsonl", "w") as f:
            for row in make_sentences(n, seed + 10):
                f.write(json.dumps({"text": row["text"],
                                    "label": min(len(row["text"].split()) // 4, 2)}) + "\n")
        with open(root / f"tags_{split}.txt", "w") as f:
            for row in make_sentences(n, seed + 20):
                for word in row["text"].split():
                    f.write(f"{word}\t{TAGS.get(word, 'O')}\n")
                f.write("\n")
    return root


def _config(tiny_config_file, root, *extra):
    return load_config(tiny_config_file, [
        # The tiny experiment's data, task and head blocks back at their defaults: the sources
        # and tasks blocks say it all.
        "data.source=polarity", "data.path=None", "task.max_length=64", "head.pooling=mean",
        "tasks.sentiment.task.kind=classification", "tasks.sentiment.task.max_length=16",
        "tasks.sentiment.head.kind=sequence", "tasks.sentiment.head.num_labels=2",
        "tasks.length.task.kind=classification", "tasks.length.task.max_length=16",
        "tasks.length.head.kind=sequence", "tasks.length.head.num_labels=3",
        "tasks.ner.task.kind=token_classification", "tasks.ner.task.max_length=16",
        "tasks.ner.head.kind=token", "tasks.ner.head.num_labels=3",
        "sources.sentiment.kind=local", f"sources.sentiment.path={root}/sentiment_{{split}}.jsonl",
        "sources.sentiment.task=sentiment",
        "sources.length.kind=local", f"sources.length.path={root}/length_{{split}}.jsonl",
        "sources.length.task=length",
        "sources.tags.kind=local", f"sources.tags.path={root}/tags_{{split}}.txt",
        "sources.tags.format=conll", "sources.tags.task=ner",
        "sources.tags.labels=('O','B-NEG','B-POS')",
        *extra])


@pytest.fixture
def config(tiny_config_file, task_data):
    return lambda *extra: _config(tiny_config_file, task_data, *extra)


def _rows(batch, keep):
    return {name: value[keep] for name, value in batch.items()}


def test_a_mixed_batch_gives_each_task_the_loss_of_its_rows_alone(config):
    exp = build_experiment(config())
    assert [name for name, _ in exp.model.task_heads] == ["length", "ner", "sentiment"]
    batch = next(exp.train_iterator())
    sources = [s.name for s in exp.sources if s.trained]
    assert len(set(batch["source"].tolist())) > 1  # a mixed batch
    step = jax.jit(exp.eval_step)
    mixed = step(exp.state.trainable, exp.state.frozen, batch, exp.state.constants)
    for index, source in enumerate(sources):
        task = exp.sources[index].task.name
        keep = batch["source"] == index
        alone = step(exp.state.trainable, exp.state.frozen, _rows(batch, keep),
                     exp.state.constants)
        np.testing.assert_allclose(mixed[f"loss_sum/{task}"], alone[f"loss_sum/{task}"],
                                   rtol=1e-5, err_msg=source)
        assert float(alone[f"weight/{task}"]) == float(mixed[f"weight/{task}"]) > 0
        # Rows of other tasks carry no weight of this task.
        view = task_view(_rows(batch, ~keep), task)
        mask = view["loss_mask"] if "loss_mask" in view else view["example_mask"]
        assert float(np.sum(mask)) == 0.0


def test_a_task_head_does_not_move_on_a_batch_without_its_rows(config):
    exp = build_experiment(config("optimizer.weight_decay=0.0"))
    batch = next(exp.train_iterator())
    sentiment = [i for i, s in enumerate(exp.sources) if s.task.name == "sentiment"][0]
    only = _rows(batch, batch["source"] == sentiment)
    before = {k: np.asarray(v)
              for k, v in flatten_dict(exp.state.params["head"], sep="/").items()}
    state, metrics = jax.jit(exp.train_step)(exp.state, only)
    after = {k: np.asarray(v) for k, v in flatten_dict(state.params["head"], sep="/").items()}
    for path in before:
        if path.startswith("sentiment/"):
            assert not np.array_equal(before[path], after[path]), path
        else:
            np.testing.assert_array_equal(before[path], after[path], err_msg=path)


def test_a_multi_task_run_reports_each_task_with_its_metric_and_a_mean_score(config, tmp_path):
    result = train(config("steps=8", "eval_every=8", "checkpoint_every=8",
                          "best_metric=score"), tmp_path / "run", quiet=True)
    validation = result.eval["validation"]
    assert 0.0 <= result.eval["validation/sentiment"]["accuracy"] <= 1.0
    assert result.eval["validation/length"]["examples"] == 24
    assert "f1" in result.eval["validation/tags"] and "accuracy" in result.eval["validation/tags"]
    scores = [result.eval["validation/sentiment"]["accuracy"],
              result.eval["validation/length"]["accuracy"], result.eval["validation/tags"]["f1"]]
    assert validation["score"] == pytest.approx(np.mean(scores))
    for source, task in (("sentiment", "sentiment"), ("length", "length"), ("tags", "ner")):
        others = {t for t in ("sentiment", "length", "ner") if t != task}
        assert not [k for k in result.eval[f"validation/{source}"]
                    if k.split("/")[-1] in others or k.split("/")[0] in others], source
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "split" not in r]
    assert {"loss/sentiment", "loss/length", "loss/ner", "sentiment/accuracy",
            "length/accuracy", "ner/accuracy"} <= set(train_rows[-1])
    assert "accuracy" not in train_rows[-1]  # no one task's accuracy passes for the run's


def test_task_blocks_are_checked(config):
    with pytest.raises(ConfigError, match="sources.tags.task must name one of the tasks"):
        config("sources.tags.task=nope")
    with pytest.raises(ConfigError, match="trains a 'token' head"):
        config("tasks.ner.head.kind=sequence")
    with pytest.raises(ConfigError, match="one task.max_length"):
        config("tasks.ner.task.max_length=24")



def test_a_multi_task_lora_adapter_round_trips_and_hf_export_refuses(config, tiny_bert_dir,
                                                                      tmp_path, capsys):
    result = train(config("method=lora", "steps=4", "eval_every=4", "checkpoint_every=4"),
                   tmp_path / "run", quiet=True)
    model, params = load_adapter(tmp_path / "run" / "adapter",
                                 load_pretrained(str(tiny_bert_dir), dtype="float32"))
    assert model.task_heads == result.experiment.model.task_heads
    batch = next(result.experiment.train_iterator())
    inputs = {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    expected = result.experiment.model.apply({"params": result.state.params},
                                             batch["input_ids"], **inputs).logits
    got = model.apply({"params": params}, batch["input_ids"], **inputs).logits
    for task in expected:
        np.testing.assert_allclose(got[task], expected[task], rtol=1e-5, atol=1e-5,
                                   err_msg=task)
    code = main(["export", "--workdir", str(tmp_path / "run"), "--format", "hf", "--out",
                 str(tmp_path / "hf")])
    assert code == 2
    assert "task heads ['length', 'ner', 'sentiment']" in capsys.readouterr().err


def test_classification_and_qa_windows_share_batches_and_resume_exactly(tiny_bert_dir):
    """A multi-row task (QA windows) makes every task's rows lists, so one pipeline flattens
    them all; batches hold both tasks with every feature of each, and resume exactly."""
    words = WORDS
    tokenizer = load_tokenizer(tiny_bert_dir)  # a real HF tokenizer: QA needs char offsets
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(20)]
    qa_records = [{"id": str(i), "question": "w1 w2", "context": t,
                   "answers": [{"text": t.split()[3], "answer_start": t.index(t.split()[3])}]}
                  for i, t in enumerate(texts)]
    tasks = (("label", SequenceClassification("text", "label", num_labels=2, max_length=16)),
             ("qa", ExtractiveQA(max_length=16, doc_stride=4, max_query_length=4)))
    sources = [TrainSource("label", [{"text": t, "label": i % 2} for i, t in enumerate(texts)],
                           TaskOfMany("label", tasks[0][1], tasks)),
               TrainSource("qa", qa_records, TaskOfMany("qa", tasks[1][1], tasks))]

    def stream():
        return make_mixed_train_iterator(sources, tokenizer, batch_size=6, seed=0)

    it = stream()
    batches = [next(it) for _ in range(8)]
    assert {"labels@label", "example_mask@label", "start_positions@qa", "offsets@qa"} <= \
        set(batches[0])
    assert {0, 1} <= set(np.concatenate([b["source"] for b in batches]).tolist())
    for b in batches:  # a task's mask is zero on the other task's rows
        assert np.all(b["example_mask@label"][b["source"] == 1] == 0)
        assert np.all(b["example_mask@qa"][b["source"] == 0] == 0)
    it = stream()
    for _ in range(3):
        next(it)
    resumed = stream()
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    for expected in batches[3:]:
        got = next(resumed)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
