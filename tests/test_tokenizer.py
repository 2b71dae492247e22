"""Invariants of ftjax.io.tokenizer: parity with transformers, lossless round trips, export/import.

The references are transformers' own tokenizers on the same files (AutoTokenizer with gguf_file=
for SmolLM2, the HF directory for all-MiniLM-L6-v2); they load once per module because the GGUF
conversion takes ~10 s.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import tokenizers

from ftjax import assets
from ftjax.io.tokenizer import Tokenizer, TokenizerError, load_tokenizer

# Covers unicode (accents, CJK, emoji, combining marks), tabs/newlines/runs of spaces,
# leading/trailing spaces, the empty string, digits, and chat control tokens inside plain text.
PARITY_TEXTS = [
    "",
    "The capital of France is",
    " leading space",
    "trailing space ",
    "   three leading, two trailing  ",
    "tabs\tand\ttabs\t\tdouble",
    "line one\nline two\n\nparagraph\r\nwindows",
    "Crème brûlée, naïve façade, Ångström, e\u0301 (combining)",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🤗🚀👍🏽 and family 👨‍👩‍👧",
    "digits 0 12 345 6789 3.14159 1,000,000 2024-01-01",
    "x=1; y=22; z=333",
    "<|im_start|>user\nhello<|im_end|>\n",
    "inline <|im_end|> marker and <|im_start|>assistant",
    "<|endoftext|>",
    "code:\n    def f(x):\n        return x  # indented\n",
    "punctuation!!! ??? ... --- ''' \"\"\" ```",
    "MIXED Case WORDS and ALLCAPS",
]
# Two or more whitespace characters before a digit: the only place where transformers' GGUF
# tokenizer (no Digits pre-tokenizer) and SmolLM2's real one (Digits first) split differently.
DIGIT_SPLIT_TEXTS = ["a  1", "total:   42", "x\n\n2024", "\t\t3 apples", "end  \n7"]
MULTIPLE_WHITESPACE_BEFORE_DIGIT = re.compile(r"\s{2,}\d")

CHATS = {
    "no_system": [{"role": "user", "content": "What is the capital of France?"}],
    "with_system": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Name a colour."}],
    "multi_turn": [{"role": "user", "content": "Hi! 👋"},
                   {"role": "assistant", "content": "Hello.\nHow can I help?"},
                   {"role": "user", "content": "  Say  1  2 "}],
}


def _transformers():
    return pytest.importorskip("transformers", reason="parity tests compare against transformers")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    return load_tokenizer("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def hf_smollm2():
    gguf_path = assets.resolve("smollm2-135m-instruct")
    return _transformers().AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def hf_minilm():
    return _transformers().AutoTokenizer.from_pretrained(assets.resolve("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def smollm2_saved(smollm2, tmp_path_factory) -> Path:
    return smollm2.save(tmp_path_factory.mktemp("smollm2_saved"))


@pytest.fixture(scope="module")
def minilm_saved(minilm, tmp_path_factory) -> Path:
    return minilm.save(tmp_path_factory.mktemp("minilm_saved"))


# -- known values (shared/ASSETS.md) ------------------------------------------------------------


def test_smollm2_known_values(smollm2):
    assert smollm2.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert (smollm2.vocab_size, smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (49152, 1, 2, 2)
    assert smollm2.add_bos is False  # the GGUF says add_bos_token = false
    assert smollm2.special_ids == frozenset(range(17))  # token_type 3 (control) ids 0..16
    assert smollm2.id_to_token(1) == "<|im_start|>" and smollm2.token_to_id("<|im_end|>") == 2
    assert smollm2.token_to_id("not-a-token-at-all") is None and smollm2.id_to_token(10**6) is None


def test_minilm_known_values(minilm):
    assert minilm.encode("a gripping, funny and moving film.") == [
        101, 1037, 13940, 1010, 6057, 1998, 3048, 2143, 1012, 102]
    assert minilm.encode("a gripping", add_special_tokens=False) == [1037, 13940]
    assert (minilm.vocab_size, minilm.pad_id, minilm.bos_id, minilm.eos_id) == (30522, 0, None, None)
    assert (minilm.cls_id, minilm.sep_id, minilm.mask_id, minilm.unk_id) == (101, 102, 103, 100)
    assert minilm.special_ids == frozenset({0, 100, 101, 102, 103}) and minilm.add_bos is False


def test_minilm_backend_never_pads_or_truncates(minilm):
    # all-MiniLM-L6-v2's tokenizer.json pads AND truncates to 128; callers must see true lengths.
    long_text = " ".join(["word"] * 300)
    assert len(minilm.encode(long_text)) == 302
    assert [len(ids) for ids in minilm.encode_batch(["short", long_text])] == [3, 302]


# -- parity with transformers -------------------------------------------------------------------


def test_parity_texts_avoid_the_digit_split_difference():
    assert not [t for t in PARITY_TEXTS if MULTIPLE_WHITESPACE_BEFORE_DIGIT.search(t)]
    assert all(MULTIPLE_WHITESPACE_BEFORE_DIGIT.search(t) for t in DIGIT_SPLIT_TEXTS)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_smollm2_ids_match_transformers(smollm2, hf_smollm2, add_special_tokens):
    for text in PARITY_TEXTS:
        expected = hf_smollm2(text, add_special_tokens=add_special_tokens).input_ids
        assert smollm2.encode(text, add_special_tokens=add_special_tokens) == expected, text


def test_digit_split_is_the_only_difference_from_transformers_gguf(smollm2, hf_smollm2):
    # transformers' GGUF conversion drops SmolLM2's Digits pre-tokenizer. Putting it back must make
    # the two agree everywhere, and without it they must disagree only on DIGIT_SPLIT_TEXTS.
    with_digits = tokenizers.Tokenizer.from_str(hf_smollm2.backend_tokenizer.to_str())
    with_digits.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True), with_digits.pre_tokenizer])
    for text in PARITY_TEXTS + DIGIT_SPLIT_TEXTS:
        ours = smollm2.encode(text)
        assert ours == with_digits.encode(text).ids, text
        assert (ours != hf_smollm2(text).input_ids) == (text in DIGIT_SPLIT_TEXTS), text
        theirs_ids = hf_smollm2(text).input_ids
        assert hf_smollm2.decode(ours) == smollm2.decode(theirs_ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_minilm_ids_match_transformers(minilm, hf_minilm, add_special_tokens):
    for text in PARITY_TEXTS + DIGIT_SPLIT_TEXTS:
        expected = hf_minilm(text, add_special_tokens=add_special_tokens).input_ids
        assert minilm.encode(text, add_special_tokens=add_special_tokens) == expected, text
        assert minilm.decode(expected) == hf_minilm.decode(expected, skip_special_tokens=True), text


def test_encode_batch_equals_encode(smollm2, minilm):
    for tok in (smollm2, minilm):
        for add in (True, False):
            assert tok.encode_batch(PARITY_TEXTS, add_special_tokens=add) == [
                tok.encode(t, add_special_tokens=add) for t in PARITY_TEXTS]


# -- byte-level BPE is lossless -----------------------------------------------------------------


def test_smollm2_decode_inverts_encode(smollm2):
    for text in PARITY_TEXTS + DIGIT_SPLIT_TEXTS:
        ids = smollm2.encode(text)
        assert smollm2.decode(ids, skip_special_tokens=False) == text
        without_control = re.sub(r"<\|(im_start|im_end|endoftext)\|>", "", text)
        assert smollm2.decode(ids) == without_control


def test_control_tokens_in_text_are_single_special_ids(smollm2):
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and not set(ids[1:-1]) & smollm2.special_ids


def test_decode_accepts_numpy_ids(smollm2):
    np = pytest.importorskip("numpy")
    ids = smollm2.encode("The capital of France is")
    assert smollm2.decode(np.array(ids, np.int32)) == "The capital of France is"


# -- chat templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(smollm2, hf_smollm2, chat, add_generation_prompt):
    expected = hf_smollm2.apply_chat_template(CHATS[chat], tokenize=False,
                                              add_generation_prompt=add_generation_prompt)
    assert smollm2.apply_chat_template(CHATS[chat], add_generation_prompt=add_generation_prompt) == expected


def test_chat_template_environment_matches_transformers(smollm2, hf_smollm2):
    # Exercises what real templates use: tojson (not HTML-escaped), bos/eos variables, loop
    # controls, trim_blocks/lstrip_blocks whitespace handling, and None-valued keys dropped.
    template = (
        "{{ bos_token }}\n"
        "{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "  {{ m | tojson }}{% if m.name is defined %}[{{ m.name }}]{% endif %}{{ eos_token }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}<gen>{% endif %}")
    custom = Tokenizer(tokenizers.Tokenizer.from_str(smollm2.backend.to_str()), name="custom",
                       special_tokens=smollm2.special_tokens, chat_template=template)
    messages = [{"role": "user", "content": "<b>é & \"q\"</b>", "name": None},
                {"role": "skip", "content": "hidden"},
                {"role": "assistant", "content": "ok", "name": "bot"}]
    expected = hf_smollm2.apply_chat_template(messages, chat_template=template, tokenize=False,
                                              add_generation_prompt=True)
    assert custom.apply_chat_template(messages) == expected


def test_chat_template_raise_exception_reaches_caller(smollm2):
    jinja2 = pytest.importorskip("jinja2")
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    custom = Tokenizer(tokenizers.Tokenizer.from_str(smollm2.backend.to_str()), name="custom",
                       special_tokens=smollm2.special_tokens, chat_template=template)
    with pytest.raises(jinja2.exceptions.TemplateError, match="first must be user"):
        custom.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_missing_chat_template_is_a_clear_error(minilm):
    with pytest.raises(TokenizerError, match=r"all-minilm-l6-v2.*has no chat template"):
        minilm.apply_chat_template(CHATS["no_system"])


# -- save() -> transformers and back ------------------------------------------------------------


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_saved_tokenizer_loads_in_transformers_identically(request, which):
    ours = request.getfixturevalue(which)
    saved = request.getfixturevalue(f"{which}_saved")
    theirs = _transformers().AutoTokenizer.from_pretrained(saved)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
        ours.bos_id, ours.eos_id, ours.pad_id)
    for text in PARITY_TEXTS + DIGIT_SPLIT_TEXTS:
        for add in (True, False):
            ids = ours.encode(text, add_special_tokens=add)
            assert theirs(text, add_special_tokens=add).input_ids == ids, text
        for skip in (True, False):
            assert theirs.decode(ids, skip_special_tokens=skip) == ours.decode(
                ids, skip_special_tokens=skip), text
    if ours.chat_template is not None:
        for chat in CHATS.values():
            assert theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
                ours.apply_chat_template(chat))


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_saved_tokenizer_reloads_identically(request, which):
    ours = request.getfixturevalue(which)
    saved = request.getfixturevalue(f"{which}_saved")
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((saved / "special_tokens_map.json").read_text()) == ours.special_tokens
    reloaded = load_tokenizer(saved)
    for attr in ("vocab_size", "bos_id", "eos_id", "pad_id", "add_bos", "chat_template",
                 "special_ids", "special_tokens", "model_max_length"):
        assert getattr(reloaded, attr) == getattr(ours, attr), attr
    assert reloaded.encode_batch(PARITY_TEXTS) == ours.encode_batch(PARITY_TEXTS)


def _llama_style_dir(saved: Path, out: Path, *, bos_in_tokenizer_json: bool) -> Path:
    """A copy of a saved SmolLM2 dir that says add_bos_token=true in its config, with the chat
    template in chat_template.jinja (where newer transformers writes it)."""
    out = shutil.copytree(saved, out)
    if bos_in_tokenizer_json:
        backend = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
        backend.post_processor = tokenizers.processors.TemplateProcessing(
            single="<|im_start|> $A", pair="<|im_start|> $A <|im_start|> $B:1",
            special_tokens=[("<|im_start|>", 1)])
        backend.save(str(out / "tokenizer.json"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "chat_template.jinja").write_text(config.pop("chat_template"))
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    return out


@pytest.mark.parametrize("bos_in_tokenizer_json", [True, False])
def test_bos_follows_tokenizer_json_like_transformers(smollm2_saved, tmp_path, bos_in_tokenizer_json):
    # transformers 5 ignores the config's add_bos_token beside a tokenizer.json: its
    # post-processor alone decides. Ours must agree both when it adds BOS and when it does not.
    llama_style = _llama_style_dir(smollm2_saved, tmp_path / "llama_style",
                                   bos_in_tokenizer_json=bos_in_tokenizer_json)
    ours = load_tokenizer(llama_style)
    theirs = _transformers().AutoTokenizer.from_pretrained(llama_style)
    assert ours.add_bos is bos_in_tokenizer_json
    assert (ours.encode("hi")[0] == ours.bos_id) is bos_in_tokenizer_json
    for text in PARITY_TEXTS:
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == theirs(
                text, add_special_tokens=add).input_ids, text
    chat = CHATS["with_system"]
    assert ours.apply_chat_template(chat) == theirs.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)
    resaved = ours.save(tmp_path / "resaved")
    config = json.loads((resaved / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"]) == (bos_in_tokenizer_json, False)
    assert load_tokenizer(resaved).encode_batch(PARITY_TEXTS) == ours.encode_batch(PARITY_TEXTS)


def test_tokenizer_pickles(smollm2):
    # Data-loader workers receive the tokenizer by pickling.
    clone = pickle.loads(pickle.dumps(smollm2))
    assert clone.encode_batch(PARITY_TEXTS) == smollm2.encode_batch(PARITY_TEXTS)
    assert clone.apply_chat_template(CHATS["no_system"]) == smollm2.apply_chat_template(CHATS["no_system"])


# -- GGUF edge cases (tiny files written here) ---------------------------------------------------


def _write_tiny_gguf(path: Path, *, add_bos: bool, with_merges: bool = True) -> Path:
    gguf = pytest.importorskip("gguf")
    byte_chars = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<s>", "</s>", *byte_chars, "ab", "Ġab"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    if with_merges:
        writer.add_token_merges(["a b", "Ġ ab"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_add_bos_token_prepends_bos(tmp_path):
    tok = Tokenizer.from_gguf(_write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=True))
    assert tok.add_bos and tok.pad_id == tok.eos_id == 1  # no pad id in the file: pad with EOS
    ids = tok.encode("ab ab")
    assert ids[0] == 0 and [tok.id_to_token(i) for i in ids[1:]] == ["ab", "Ġab"]
    assert tok.encode("ab", add_special_tokens=False) == [tok.token_to_id("ab")]
    assert tok.decode(ids) == "ab ab" and tok.decode(ids, skip_special_tokens=False) == "<s>ab ab"


def test_gguf_missing_key_names_file_and_key(tmp_path):
    path = _write_tiny_gguf(tmp_path / "no_merges.gguf", add_bos=False, with_merges=False)
    with pytest.raises(TokenizerError, match=r"no_merges\.gguf.*tokenizer\.ggml\.merges"):
        Tokenizer.from_gguf(path)


# -- bad input ----------------------------------------------------------------------------------


def test_load_tokenizer_bad_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(TokenizerError, match=re.escape(str(missing))):
        load_tokenizer(missing)
    with pytest.raises(TokenizerError, match=rf"{re.escape(str(tmp_path))}.*tokenizer\.json"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"\0" * 64)
    with pytest.raises(TokenizerError, match=re.escape(str(not_gguf))):
        load_tokenizer(not_gguf)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF not really")
    with pytest.raises(TokenizerError, match=re.escape(str(corrupt))):
        load_tokenizer(corrupt)


def test_broken_config_json_names_the_file(minilm_saved, tmp_path):
    broken = shutil.copytree(minilm_saved, tmp_path / "broken")
    (broken / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=re.escape(str(broken / "tokenizer_config.json"))):
        load_tokenizer(broken)
