"""The five-task suite of real data that the multi-task experiments train on (ASSETS.md).

    polarity    movie-review sentences, 2 classes (accuracy)
    topic       BBC news articles, 5 topics (accuracy)
    spam        SMS messages, ham / spam (accuracy; 13% spam)
    paraphrase  a KJV verse with its World English Bible version or another verse of the same
                book, 2 classes (accuracy; split by book, so no test book is trained on)
    ner         WNUT-16 tweets, 10 entity types in BIO (entity F1, seqeval)

Each task is a source of its own, split into train / validation / test by a seeded
permutation (stratified by label; the paraphrase pairs grouped by book). `suite_tasks` and
`suite_sources` give the config blocks (plain dicts) of a `tasks` / `sources` block or of one
task's run; experiment files choose sizes and lengths.
"""

from __future__ import annotations

SUITE = ("polarity", "topic", "spam", "paraphrase", "ner")
NER_TAGS = 21  # O + B-/I- of WNUT-16's 10 entity types
LABELS = {"polarity": 2, "topic": 5, "spam": 2, "paraphrase": 2, "ner": NER_TAGS}


def suite_tasks(max_length: int) -> dict[str, dict]:
    """{task: {"task": task block, "head": head block}}: a sequence head per classification
    task, a token head for NER, mean pooling."""
    def entry(name: str) -> dict:
        token = name == "ner"
        return {"task": {"kind": "token_classification" if token else "classification",
                         "max_length": max_length},
                "head": {"kind": "token" if token else "sequence", "num_labels": LABELS[name],
                         "pooling": "mean"}}

    return {name: entry(name) for name in SUITE}


def suite_sources(*, max_train: int, max_eval: int, max_test: int,
                  split_seed: int = 0) -> dict[str, dict]:
    """{task: source block}: each task's own data split 80 / 10 / 10 by `split_seed` (the
    polarity corpus has its own fixed splits), capped at the given sizes."""
    caps = {"max_train_examples": max_train, "max_eval_examples": max_eval,
            "max_test_examples": max_test}
    split = {"split_fractions": (0.8, 0.1, 0.1), "split_seed": split_seed, **caps}
    return {
        "polarity": {"kind": "polarity", **caps},
        "topic": {"kind": "local", "path": "bbc-news", **split},
        "spam": {"kind": "local", "path": "sms-spam", **split},
        "paraphrase": {"kind": "local", "path": "bible-paraphrase",
                       "text_pair_column": "text_pair", "split_group_column": "book", **split},
        "ner": {"kind": "local", "path": "wnut16", "format": "conll", "label_column": None,
                **split},
    }
