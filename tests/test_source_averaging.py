"""One rule averages every per-source metric of a split (evaluation and eval hooks alike)."""

from types import SimpleNamespace

import pytest

from ftjax.train.evaluation import add_source_metrics, macro_average


def _exp(*sources):
    return SimpleNamespace(sources=[SimpleNamespace(name=n, trained=t) for n, t in sources])


def test_one_source_reports_under_the_split_name():
    results = {"validation": {"loss": 1.0, "examples": 10.0}}
    add_source_metrics(_exp(("a", True)), results, "validation", {"a": {"bleu": 7.0}})
    assert results == {"validation": {"loss": 1.0, "examples": 10.0, "bleu": 7.0}}


def test_the_split_averages_trained_sources_only_and_keeps_its_example_count():
    exp = _exp(("a", True), ("b", True), ("held", False))
    results = {"validation": {"loss": 2.0, "examples": 30.0},
               "validation/a": {}, "validation/b": {}, "validation/held": {}}
    add_source_metrics(exp, results, "validation",
                       {"a": {"bleu": 10.0}, "b": {"bleu": 20.0, "exact_match": 5.0},
                        "held": {"bleu": 90.0}})
    assert results["validation/held"] == {"bleu": 90.0}
    assert results["validation"]["bleu"] == pytest.approx(15.0)  # not the eval-only source
    assert results["validation"]["exact_match"] == pytest.approx(5.0)  # b alone reports it
    assert results["validation"]["examples"] == 30.0 and results["validation"]["loss"] == 2.0


def test_eval_only_sources_are_averaged_when_no_trained_source_has_the_split():
    exp = _exp(("a", True), ("x", False), ("y", False))
    results = {}
    add_source_metrics(exp, results, "test", {"x": {"f1": 1.0}, "y": {"f1": 3.0}})
    assert results["test"] == {"f1": 2.0} and results["test/x"] == {"f1": 1.0}


def test_macro_average_sums_examples_and_means_each_metric_over_its_reporters():
    out = macro_average([{"loss": 1.0, "accuracy": 0.5, "examples": 4.0},
                         {"loss": 3.0, "examples": 6.0}])
    assert out == {"loss": 2.0, "accuracy": 0.5, "examples": 10.0}
