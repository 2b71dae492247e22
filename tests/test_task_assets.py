"""The multi-task suite's dataset assets (bbc-news, sms-spam, bible-paraphrase): each builder on a
hand-made tree holding its package's traps, and the measured counts of the real files where
they are cached (nothing is fetched here)."""

import collections
import json

import numpy as np
import pytest

from ftjax.assets import ASSETS, cache_root
from ftjax.assets.bbc_news import DATA as BBC_DATA
from ftjax.assets.bbc_news import build_bbc_news
from ftjax.assets.bible_paraphrase import Verse, pair_rows, paraphrase_text, similar_length
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


# --- bible-paraphrase ----------------------------------------------------------------------------

def test_paraphrase_text_keeps_words_apart_at_footnotes_and_cuts_one_sided_text():
    web = ('<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">'
           '1:1 </reference>The Hebrew word rendered \u201cGod\u201d is Elohim.</note><w lemma="s">'
           'created</w> <w>the</w> <w>earth</w>. ')
    assert paraphrase_text(web) == "God created the earth."
    # The KJV's subscription and acrostic letter are non-canonical titles; a Psalm's is kept.
    kjv = ('<w>Amen</w>.  <chapter eID="Rom.16"/> <title>Written to the Romans from Corinthus, '
           '<transChange type="added">and sent</transChange> by Phebe.</title> <div eID="x"/>')
    assert paraphrase_text(kjv) == "Amen."
    psalm = ('<title canonical="true" type="psalm">A Psalm of David.</title> <l level="1"/>'
             '<divineName>LORD</divineName>, how are they increased!<l eID="g" level="1"/>')
    assert paraphrase_text(psalm) == "A Psalm of David. LORD, how are they increased!"
    acrostic = ('<title canonical="true" type="psalm">SIN <w>AND</w> SHIN</title> <l/>Princes '
                'have persecuted me.')
    assert paraphrase_text(acrostic) == "Princes have persecuted me."
    kjv_acrostic = '<title><foreign>\u05e9 SCHIN.</foreign></title> <l/>Princes'
    assert paraphrase_text(kjv_acrostic) == "Princes"
    song = '<speaker>Beloved</speaker> <lg sID="g"/> <l level="1"/>Let him kiss me.'
    assert paraphrase_text(song) == "Let him kiss me."
    glossary = ('<w>Amen</w>. <chapter eID="Rev.22"/> <div sID="g" type="glossary"/> <title '
                'level="1" type="main">World English Bible Glossary</title> Abaddon is Hebrew.')
    assert paraphrase_text(glossary) == "Amen."


def test_similar_length_drops_pairs_more_than_the_ratio_apart():
    assert similar_length(Verse("Gen", 1, 1, "a" * 10, "b" * 25))
    assert similar_length(Verse("Gen", 1, 1, "a" * 25, "b" * 10))
    assert not similar_length(Verse("Gen", 1, 1, "a" * 10, "b" * 26))
    assert not similar_length(Verse("Gen", 1, 1, "a" * 26, "b" * 10))
    assert similar_length(Verse("Gen", 1, 1, "a" * 10, "b" * 21), max_ratio=2.1)


def _verses():
    gen = [Verse("Gen", 1, v, f"kjv gen {v}", f"web gen {v}") for v in range(1, 6)]
    # Ps 136:1 and 136:2 share the KJV text, 136:1 and 136:3 the WEB text.
    ps = [Verse("Ps", 136, 1, "for his mercy endureth", "his kindness endures"),
          Verse("Ps", 136, 2, "for his mercy endureth", "his love endures"),
          Verse("Ps", 136, 3, "o give thanks", "his kindness endures"),
          Verse("Ps", 136, 4, "the only other", "the only other web")]
    obad = [Verse("Obad", 1, 1, "the vision", "the vision web")]  # no partner at all
    return gen + ps + obad


def test_pair_rows_give_a_positive_and_a_same_book_negative_per_verse():
    verses = _verses()
    rows = list(pair_rows(verses, np.random.default_rng(0)))
    positives = [r for r in rows if r["label"] == 1]
    negatives = [r for r in rows if r["label"] == 0]
    assert [(r["book"], r["chapter"], r["verse"], r["text"], r["text_pair"]) for r in positives] \
        == [tuple(v) for v in verses]
    assert len(negatives) == len(verses) - 1  # Obadiah's only verse has no partner
    for row in negatives:
        own = next(v for v in verses if (v.book, v.chapter, v.verse) ==
                   (row["book"], row["chapter"], row["verse"]))
        # The negative's text is no translation of this KJV text anywhere in the book.
        partners = [v for v in verses if v.web == row["text_pair"]]
        assert row["text"] == own.kjv and partners
        assert all(p.book == own.book and p.kjv != own.kjv for p in partners)
    # Ps 136:1 and 136:2 share the KJV text, 136:1 and 136:3 the WEB text: both 136:1 and 136:2
    # have 136:4 as their only partner.
    ps = {r["verse"]: r["text_pair"] for r in negatives if r["book"] == "Ps"}
    assert ps[1] == ps[2] == "the only other web"
    # Each positive is followed by its negative, KJV first in both.
    assert [r["label"] for r in rows[:4]] == [1, 0, 1, 0]
    assert rows[0]["text"] == rows[1]["text"] == "kjv gen 1"


def test_pair_rows_are_deterministic_for_a_seed():
    verses = _verses()
    first = list(pair_rows(verses, np.random.default_rng(0)))
    assert first == list(pair_rows(verses, np.random.default_rng(0)))
    assert first != list(pair_rows(verses, np.random.default_rng(1)))


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


def test_real_bible_paraphrase_counts():
    rows = _cached("bible-paraphrase")
    labels = collections.Counter(r["label"] for r in rows)
    assert len(rows) == 62186 and labels == {1: 31093, 0: 31093}
    assert len({r["book"] for r in rows}) == 66
    assert rows[0] == {"text": "In the beginning God created the heaven and the earth.",
                       "text_pair": "In the beginning, God created the heavens and the earth.",
                       "label": 1, "book": "Gen", "chapter": 1, "verse": 1}
    last = [r for r in rows if (r["book"], r["chapter"], r["verse"]) == ("Rev", 22, 21)]
    assert last[0]["text_pair"].endswith("be with all the saints. Amen.")
