"""Gemma 3's SentencePiece tokenizer rebuilt from its GGUF metadata (ftjax.io.spm_bpe) encodes
and decodes as transformers' own GGUF conversion does, on real text of every kind."""

import json

import pytest

from ftjax import assets
from ftjax.io.spm_bpe import spm_merges
from ftjax.io.tokenizer import load_tokenizer

SPECIAL = ["Hello world", "  two  spaces", "   ", "", "a\n\n\nb", "tab\there\nnewline",
           "<start_of_turn>user\nWhat is 12 + 30?<end_of_turn>\n<start_of_turn>model\n",
           "The cat sat on the mat. 12345 émigré 🤖", "ßüñ 中文 日本語 한국어 العربية",
           "x" * 60, "<0x41> is a byte piece's name, not a byte", "unk \ufffe \u0000 end"]


def test_spm_merges_rank_splits_by_the_merged_pieces_score():
    pieces = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, -1.0, -1.0, -1.0, -2.0, -3.0, -2.5]
    types = [2, 1, 1, 1, 1, 1, 1]
    # "ab" (score -2) first; "abc" (-2.5) from "ab"+"c" and "a"+"bc"; then "bc" (-3).
    assert spm_merges(pieces, scores, types) == [("a", "b"), ("a", "bc"), ("ab", "c"),
                                                 ("b", "c")]


def test_gemma_tokenizer_matches_transformers_on_real_text():
    transformers = pytest.importorskip("transformers")
    path = assets.fetch("gemma3-270m", quiet=True)
    ours = load_tokenizer(path)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = list(SPECIAL)
    for name in ("polarity", "bible-es-en", "chitchat"):  # English, Spanish, dialogue
        lines = assets.fetch(name, quiet=True).read_text(encoding="utf-8", errors="replace")
        for line in lines.splitlines()[:150]:
            texts += _strings(json.loads(line)) if line.startswith("{") else [line]
    assert len(texts) > 400
    assert ours.vocab_size == 262144 and (ours.bos_id, ours.eos_id, ours.pad_id) == (2, 1, 0)
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in _strings(item)]
