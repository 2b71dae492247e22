"""Gemma 3 270M from its GGUF against transformers loading the same file (the same dequantized
weights): its SentencePiece tokenizer rebuilt from the metadata (ftjax.io.spm_bpe) encodes and
decodes alike on real text of every kind, the logits agree also past the sliding window, and
greedy generation gives the same tokens."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import ftjax
from ftjax import assets
from ftjax.io.pretrained import load_pretrained
from ftjax.io.spm_bpe import spm_merges

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


@pytest.fixture(scope="module")
def gemma():
    """(ours: Pretrained, transformers' model, transformers' tokenizer), loaded once."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    path = assets.fetch("gemma3-270m", quiet=True)
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return load_pretrained("gemma3-270m", dtype="float32"), ref_model, ref_tokenizer


def test_gemma_tokenizer_matches_transformers_on_real_text(gemma):
    ours, ref = gemma[0].tokenizer, gemma[2]
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


def test_gemma3_logits_and_greedy_generation_match_transformers(gemma):
    import torch

    ours, ref, tokenizer = gemma
    config = ours.model.config
    assert (config.family, config.num_layers, config.sliding_window) == ("gemma3", 18, 512)
    assert [config.is_local(i) for i in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]
    # A text longer than the sliding window: the local layers see only its last 512 slots.
    text = " ".join(f"Verse {i}: in the beginning was the word." for i in range(70))
    ids = ours.tokenizer.encode(text)
    assert len(ids) > 600
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0].numpy()
    got = np.asarray(ours.model.apply({"params": ours.params}, jnp.asarray([ids])).logits[0])
    for position in (5, 300, len(ids) - 1):
        np.testing.assert_allclose(got[position], expected[position], rtol=2e-3, atol=2e-3)
    assert (got[-40:].argmax(-1) == expected[-40:].argmax(-1)).all()

    for prompt in ("The capital of France is", text[:2400]):
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            reference = ref.generate(prompt_ids, max_new_tokens=10, do_sample=False)
        want = tokenizer.decode(reference[0, prompt_ids.shape[1]:], skip_special_tokens=True)
        assert ftjax.generate(ours, prompt, greedy=True, max_new_tokens=10) == want


def test_a_tiny_gemma3_config_runs_unscanned_and_is_not_exported_under_llama_names(tmp_path):
    import dataclasses

    import jax

    from ftjax.io import save_hf
    from ftjax.io.loading import CheckpointError
    from ftjax.models import HeadConfig, Model, init_params, preset

    config = dataclasses.replace(
        preset("tiny-llama"), family="gemma3", hidden_act="gelu_pytorch_tanh", qk_norm=True,
        sandwich_norms=True, scale_embeddings=True, sliding_window=3, global_every=2,
        rope_local_theta=100.0)
    model = Model(config, HeadConfig("lm"))
    params = init_params(model, jax.random.key(0))
    layer = params["backbone"]["layers_0"]
    assert {"post_attention_layernorm", "pre_feedforward_layernorm",
            "post_feedforward_layernorm"} <= set(layer)
    assert {"q_norm", "k_norm"} <= set(layer["self_attn"])
    ids = jax.random.randint(jax.random.key(1), (1, 9), 3, config.vocab_size)
    changed = ids.at[0, 0].set(ids[0, 0] + 1)
    # Every layer local (window 3): through the two layers a position sees 4 slots back, so
    # token 0 reaches positions 0..4 only; with a global layer it reaches all of them.
    assert config.num_layers == 2
    for global_every, reached in ((0, 5), (2, 9)):
        local = Model(dataclasses.replace(config, global_every=global_every), HeadConfig("lm"))
        a = np.asarray(local.apply({"params": params}, ids).logits[0])
        b = np.asarray(local.apply({"params": params}, changed).logits[0])
        moved = np.abs(a - b).max(-1) > 1e-6
        assert moved.tolist() == [True] * reached + [False] * (9 - reached)
    with pytest.raises(ValueError, match="unscanned"):
        dataclasses.replace(config, scan_layers=True)
    with pytest.raises(CheckpointError, match="gemma3"):
        save_hf(config, params, tmp_path / "out")
