"""ARCHITECTURE.md's worked examples run as written: each `file` block becomes a module, each
`run` block runs with CONFIG (a tiny experiment), TWO_SOURCES (the same with two data sources)
and WORKDIR (a fresh directory)."""

import re
import sys
from pathlib import Path

import pytest

from conftest import make_sentences
from test_run_sources import _write_csv

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- example: (file (?P<file>\S+)|run) -->\n```python\n(?P<code>.*?)```",
                    re.S)


def _examples():
    """[(title, [(file name or None, code), ...])] per '### N.' section."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    sections = re.split(r"^### ", text.split("## Worked examples", 1)[1], flags=re.M)[1:]
    out = []
    for section in sections:
        title = section.splitlines()[0]
        blocks = [(m["file"], m["code"]) for m in MARKER.finditer(section)]
        out.append((title, blocks))
    return out


EXAMPLES = _examples()


def test_the_document_has_the_four_examples():
    assert [title.split(". ", 1)[1] for title, _ in EXAMPLES] == [
        "A hook", "A loss term", "A third data source", "A new PEFT method"]
    assert all(any(name is None for name, _ in blocks) for _, blocks in EXAMPLES)


@pytest.fixture
def two_sources(tmp_path, tiny_config_file, tiny_text_data):
    for split, n, seed in (("train", 30, 10), ("validation", 12, 11), ("test", 12, 12)):
        _write_csv(tmp_path / f"reviews_{split}.csv", make_sentences(n, seed))
    path = tmp_path / "two_sources.py"
    path.write_text(f'''
import ml_collections
from ftjax.settings import import_config_file


def get_config():
    c = import_config_file({str(tiny_config_file)!r})
    c.data.source, c.data.path = "polarity", None  # the sources block names the data
    c.sources.tweets = ml_collections.ConfigDict({{"path": {tiny_text_data!r}}})
    c.sources.reviews = ml_collections.ConfigDict({{
        "path": {str(tmp_path / "reviews_{split}.csv")!r}, "text_column": "review",
        "label_column": "sentiment"}})
    return c
''')
    return path


@pytest.mark.parametrize("index", range(len(EXAMPLES)),
                         ids=[title for title, _ in EXAMPLES])
def test_worked_example_runs(index, tmp_path, tiny_config_file, two_sources, monkeypatch):
    _, blocks = EXAMPLES[index]
    modules = tmp_path / "modules"
    modules.mkdir()
    monkeypatch.syspath_prepend(str(modules))
    workdir = tmp_path / "run"
    workdir.mkdir()
    names = {"CONFIG": str(tiny_config_file), "TWO_SOURCES": str(two_sources),
             "WORKDIR": str(workdir)}
    for file_name, code in blocks:
        if file_name is not None:
            (modules / file_name).write_text(code)
            sys.modules.pop(Path(file_name).stem, None)
    for file_name, code in blocks:
        if file_name is None:
            exec(compile(code, f"ARCHITECTURE.md example {index + 1}", "exec"), dict(names))


def test_the_readme_s_own_data_example_is_a_valid_config(tmp_path):
    """The README's copy-paste experiment for a user's csv loads and checks as written."""
    from ftjax.train.config import load_config

    readme = (REPO / "README.md").read_text().split("## Your own data", 1)[1]
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "reviews_experiment.py").write_text(code)
    cfg = load_config(tmp_path / "reviews_experiment.py")
    assert cfg.sources.reviews.split_fractions == (0.8, 0.1, 0.1)
    assert cfg.sources.reviews.labels == ("negative", "positive")
