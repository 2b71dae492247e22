"""The multi-task suite's dataset assets (bbc-news, sms-spam, bible-paraphrase): each builder on a
hand-made tree holding its package's traps, and the measured counts of the real files where
they are cached (nothing is fetched here)."""

import collections
import json

import pytest

from ftjax.assets import ASSETS, cache_root
from ftjax.assets.bbc_news import DATA as BBC_DATA
from ftjax.assets.bbc_news import build_bbc_news
from ftjax.assets.sms_spam import DATA as SMS_DATA
from ftjax.assets.sms_spam import build_sms_spam


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _built(name, tree, build):
    """Run `build` on `tree` and read the file the asset's name resolves to."""
    assert ASSETS[name].build is build
    build(tree)
    return _rows(tree / ASSETS[name].path)


# --- bbc-news ------------------------------------------------------------------------------------

def _bbc_tree(tmp_path):
    data = tmp_path / BBC_DATA
    files = {
        "sports/002.txt": "Mutu sacked\n\nA \u00a315.8m signing.\n".encode("latin-1"),
        "sports/001.txt": "Cup win\n\nThey won.\n\nFans cheered.\n".encode(),
        "sports/003.txt": "Cup win\n\nThey won. Fans cheered.\n".encode(),  # a paragraph break less
        "business/010.txt": "Profits up\n\nUp 76% (\u00a3600m).\n".encode(),
        "business/004.txt": "Profits up\n\nUp 76% (\u00a3600m).\n".encode(),  # exact duplicate
    }
    for name, raw in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(raw)
    return tmp_path


def test_bbc_rows_are_unique_articles_sorted_by_path_latin1_decoded(tmp_path):
    rows = _built("bbc-news", _bbc_tree(tmp_path), build_bbc_news)
    assert rows == [
        {"text": "Profits up Up 76% (\u00a3600m).", "label": "business",
         "file": "business/004.txt"},
        {"text": "Cup win They won. Fans cheered.", "label": "sports", "file": "sports/001.txt"},
        {"text": "Mutu sacked A \u00a315.8m signing.", "label": "sports", "file": "sports/002.txt"},
    ]


def test_bbc_without_articles_is_an_error(tmp_path):
    (tmp_path / BBC_DATA).mkdir(parents=True)
    with pytest.raises(ValueError, match="no articles"):
        build_bbc_news(tmp_path)


# --- sms-spam ------------------------------------------------------------------------------------

SMS_LINES = [
    'ham\tOk lar... Joking wif u oni...',
    'spam\t"Text ""WIN"" to 87121\tnow"',  # CSV-quoted: doubled quotes and a TAB inside
    'ham\tCall me at &lt;#&gt; &amp; bring it',
    'ham\tOk lar... Joking wif u oni...',  # duplicate of the first row
    'spam\tOk lar... Joking wif u oni... ',  # same text, other label: kept
]


def _sms_tree(tmp_path, lines):
    (tmp_path / SMS_DATA).parent.mkdir(parents=True)
    (tmp_path / SMS_DATA).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_sms_rows_unquote_unescape_and_drop_duplicates(tmp_path):
    rows = _built("sms-spam", _sms_tree(tmp_path, SMS_LINES), build_sms_spam)
    assert rows == [
        {"text": "Ok lar... Joking wif u oni...", "label": "ham"},
        {"text": 'Text "WIN" to 87121\tnow', "label": "spam"},
        {"text": "Call me at <#> & bring it", "label": "ham"},
        {"text": "Ok lar... Joking wif u oni...", "label": "spam"},
    ]


def test_sms_row_without_a_known_label_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"row 2: expected 'ham\|spam<TAB>text'"):
        build_sms_spam(_sms_tree(tmp_path, ["ham\tfine", "maybe spam"]))


# --- the real files, where cached ----------------------------------------------------------------

def _cached(name):
    asset = ASSETS[name]
    path = cache_root() / "assets" / asset.cache_name / asset.path
    if not path.is_file():
        pytest.skip(f"{name} is not cached (python -m ftjax.assets fetch {name})")
    return _rows(path)


def test_real_bbc_news_counts():
    rows = _cached("bbc-news")
    assert len(rows) == len({r["text"] for r in rows}) == 2125
    assert collections.Counter(r["label"] for r in rows) == {
        "business": 503, "entertainment": 369, "politics": 403, "sports": 503, "tech": 347}
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    assert "\u00a315.8m" in next(r["text"] for r in rows if r["file"] == "sports/199.txt")


def test_real_sms_spam_counts():
    rows = _cached("sms-spam")
    assert len(rows) == len({(r["label"], r["text"]) for r in rows}) == 4534
    assert collections.Counter(r["label"] for r in rows) == {"ham": 3973, "spam": 561}
    assert not any("&lt;" in r["text"] or "&amp;" in r["text"] for r in rows)
