"""Continual learning: a task sequence as a pipeline (each stage trains one task from the
previous stage's weights, every task evaluated), its accuracy matrix and transfer metrics, EWC
between stages, and the idle tasks' heads untouched."""

import json

import jax
import numpy as np
import pytest
from conftest import make_sentences

from ftjax.io.fisher import flat_leaves, load_fisher
from ftjax.objectives.inputs import model_inputs
from ftjax.settings import ConfigError
from ftjax.train.continual import accuracy_matrix, initial_scores, transfer_metrics
from ftjax.train.evaluation import evaluate_splits
from ftjax.train.restore import restore_run
from ftjax.train.stages import run_stages

TASKS = ("sentiment", "length")

PIPELINE = '''
import ml_collections

from ftjax.train.config import base_config
from ftjax.train.fisher import estimate_fisher
from ftjax.train.stages import Stage

TASKS = ("sentiment", "length")


def get_config(task="sentiment"):
    c = base_config()
    c.model.name = {model!r}
    c.tasks = ml_collections.ConfigDict({{
        "sentiment": {{"task": {{"kind": "classification", "max_length": 16}},
                      "head": {{"kind": "sequence", "num_labels": 2, "pooling": "cls"}}}},
        "length": {{"task": {{"kind": "classification", "max_length": 16}},
                   "head": {{"kind": "sequence", "num_labels": 3, "pooling": "cls"}}}},
    }})
    c.sources = ml_collections.ConfigDict({{
        name: {{"kind": "local", "path": {data!r} + "/" + name + "_{{split}}.jsonl",
               "task": name, "train": name == task}} for name in TASKS}})
    c.best_metric = ""  # each stage hands on its last weights
    c.init_head = "keep"  # with init_from: every task's head from the stage before
    c.eval_at_start = task == "sentiment"
    c.eval_splits = ("validation", "test")  # test at step 0 too: the untrained scores
    c.steps = 10
    c.batch_size = 8
    c.eval_batch_size = 12
    c.eval_every = 10
    c.checkpoint_every = 10
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.01  # an idle head must not decay
    return c


def fisher_of_sentiment(root):
    estimate_fisher(root / "s0_sentiment", max_examples=16, overwrite=True)


def get_stages():
    return [Stage("s0_sentiment", "sentiment"),
            Stage("s1_length", "length", init_from="s0_sentiment", before="fisher_of_sentiment",
                  overrides=("losses.ewc.fisher='{{root}}/s0_sentiment/fisher.safetensors'",
                             "losses.ewc.weight=1.0")),
            # A large step, so that the backbone moves and naive training disturbs the
            # sentiment head's outputs.
            Stage("s1_naive", "length", init_from="s0_sentiment",
                  overrides=("optimizer.learning_rate=0.03",)),
            Stage("s1_lwf", "length", init_from="s0_sentiment",
                  overrides=("optimizer.learning_rate=0.03",
                             "losses.lwf.teacher='{{root}}/s0_sentiment'",
                             "losses.lwf.tasks=('sentiment',)", "losses.lwf.weight=10.0"))]
'''


@pytest.fixture(scope="module")
def sequence(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("continual")
    data = root / "data"
    data.mkdir()
    for split, n, seed in (("train", 48, 0), ("validation", 12, 1), ("test", 12, 2)):
        rows = make_sentences(n, seed)
        (data / f"sentiment_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
        (data / f"length_{split}.jsonl").write_text("".join(
            json.dumps({"text": r["text"], "label": min(len(r["text"].split()) // 4, 2)}) + "\n"
            for r in make_sentences(n, seed + 10)))
    pipeline = root / "sequence.py"
    pipeline.write_text(PIPELINE.format(model=str(tiny_bert_dir), data=str(data)))
    summary = run_stages(pipeline, root / "runs", quiet=True)
    return root / "runs", summary


def test_the_matrix_has_every_stage_and_task_and_matches_each_stage_evaluated_again(sequence):
    runs, _ = sequence
    stages = ["s0_sentiment", "s1_length"]
    matrix = accuracy_matrix(runs, stages, TASKS, metric="accuracy")
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    for i, stage in enumerate(stages):
        exp, restored = restore_run(runs / stage)
        again = evaluate_splits(exp, exp.jit_eval_step(), restored.state, ["test"])
        for j, task in enumerate(TASKS):
            assert matrix[i][j] == pytest.approx(again[f"test/{task}"]["accuracy"], abs=1e-6)
    initial = initial_scores(runs, "s0_sentiment", TASKS, metric="accuracy")
    assert initial is not None and len(initial) == 2
    metrics = transfer_metrics(matrix, initial)
    assert metrics["backward_transfer"] == pytest.approx(matrix[1][0] - matrix[0][0])
    assert metrics["forward_transfer"] == pytest.approx(matrix[0][1] - initial[1])


def test_the_heads_of_tasks_a_stage_does_not_train_stay_bit_identical(sequence):
    """Stage 1 trains `length`: the sentiment head is frozen there (no gradient reaches it, and
    frozen it is not decayed either), the length head (idle in stage 0) is as initialized."""
    runs, _ = sequence
    before, after = (flat_leaves(jax.device_get(restore_run(runs / s)[1].state.params))
                     for s in ("s0_sentiment", "s1_length"))
    sentiment = [k for k in before if k.startswith("head/sentiment/")]
    assert sentiment
    for key in sentiment:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert any(not np.array_equal(after[k], before[k]) for k in after
               if k.startswith("head/length/"))
    fisher, meta = load_fisher(runs / "s0_sentiment" / "fisher.safetensors")
    assert meta["examples"] == 16 and not any(k.startswith("head/length/") for k in fisher)


def test_ewc_ran_in_the_second_stage(sequence):
    runs, _ = sequence
    rows = [json.loads(line) for line in open(runs / "s1_length" / "metrics.jsonl")]
    assert any(r.get("loss/ewc", 0) > 0 for r in rows if "split" not in r)


def test_transfer_metrics_by_hand():
    matrix = [[0.9, 0.5, 0.4], [0.7, 0.8, 0.5], [0.6, 0.75, 0.85]]
    m = transfer_metrics(matrix, initial=[0.5, 0.45, 0.3])
    assert m["average"] == pytest.approx((0.6 + 0.75 + 0.85) / 3)
    assert m["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.75)) / 2)
    assert m["forward_transfer"] == pytest.approx(((0.5 - 0.45) + (0.5 - 0.3)) / 2)
    assert transfer_metrics([[0.7]])["backward_transfer"] is None
    # Perplexities: lower is better; task 0 went 10 -> 9 (its best, after stage 1) -> 12.
    ppl = [[10.0, 30.0, 50.0], [9.0, 8.0, 40.0], [12.0, 11.0, 7.0]]
    m = transfer_metrics(ppl, initial=[20.0, 35.0, 45.0], lower_is_better=True)
    assert m["average"] == pytest.approx(10.0)
    assert m["backward_transfer"] == pytest.approx(((12 - 10) + (11 - 8)) / 2)
    assert m["forgetting"] == pytest.approx(((12 - 9) + (11 - 8)) / 2)
    assert m["forward_transfer"] == pytest.approx(((30 - 35) + (40 - 45)) / 2)
    with pytest.raises(ValueError, match="T x T"):
        transfer_metrics([[0.1, 0.2]])


def test_a_separate_model_per_task_keeps_each_task_s_own_score(tmp_path):
    for stage, row in (("a", [0.9, 0.1]), ("b", [0.2, 0.8])):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "results.json").write_text(json.dumps({"eval": {
            "test/x": {"score": row[0]}, "test/y": {"score": row[1]}}}))
    assert accuracy_matrix(tmp_path, ["a", "b"], ["x", "y"]) == [[0.9, 0.1], [0.2, 0.8]]
    assert accuracy_matrix(tmp_path, ["a", "b"], ["x", "y"], own_model_per_task=True) == [
        [0.9, 0.1], [0.9, 0.8]]
    with pytest.raises(ConfigError, match="no 'f1' for test/x"):
        accuracy_matrix(tmp_path, ["a", "b"], ["x", "y"], metric="f1")
    with pytest.raises(ConfigError, match="has not finished"):
        accuracy_matrix(tmp_path, ["a", "c"], ["x", "y"])


def test_lwf_keeps_the_earlier_task_s_outputs_on_the_new_data(sequence):
    """Learning without forgetting: after the length stage, the sentiment head's outputs on
    length data stay nearer the stage-0 model's with LwF than with naive training."""
    runs, _ = sequence
    models = {}
    for stage in ("s0_sentiment", "s1_naive", "s1_lwf"):
        exp, restored = restore_run(runs / stage)
        models[stage] = (exp, restored.state.params)
    exp = models["s0_sentiment"][0]
    (batch,) = list(exp.eval_batches("test", "length"))[:1]
    batch = {k: v for k, v in batch.items()}

    def sentiment_log_probs(stage):
        stage_exp, params = models[stage]
        logits = stage_exp.model.apply({"params": params}, batch["input_ids"],
                                       **model_inputs(batch, stage_exp.model),
                                       deterministic=True).logits["sentiment"]
        return jax.nn.log_softmax(np.asarray(logits, np.float32))

    start = sentiment_log_probs("s0_sentiment")

    def drift(stage):
        p = np.exp(start)
        return float(np.mean(np.sum(p * (start - sentiment_log_probs(stage)), axis=-1)))

    assert drift("s1_lwf") < 0.5 * drift("s1_naive")
    rows = [json.loads(line) for line in open(runs / "s1_lwf" / "metrics.jsonl")]
    assert any("loss/lwf" in r for r in rows if "split" not in r)


def test_a_stage_is_restarted_on_its_own_and_trains_as_it_did(sequence, tmp_path):
    """--restart moves the stage's workdir aside (nothing deleted) and trains it again from the
    stage before: the same losses. --only trains one stage; one whose start has not finished
    is refused."""
    import shutil

    runs, _ = sequence
    root = tmp_path / "runs"
    shutil.copytree(runs, root)
    pipeline = runs.parent / "sequence.py"
    summary = run_stages(pipeline, root, quiet=True, restart=["s1_naive"])
    first = root / "s1_naive.before-restart-1"
    assert (first / "results.json").is_file() and "not_finished" not in summary

    def losses(workdir):
        return [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")
                if "split" not in json.loads(line)]

    assert losses(root / "s1_naive") == losses(first)
    shutil.rmtree(root / "s0_sentiment")
    shutil.rmtree(root / "s1_lwf")
    with pytest.raises(ConfigError, match="starts from 's0_sentiment', which has not finished"):
        run_stages(pipeline, root, quiet=True, only=["s1_lwf"])
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        run_stages(pipeline, root, quiet=True, only=["nope"])
