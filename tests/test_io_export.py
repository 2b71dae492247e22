"""save_hf -> load_pretrained is exact, and what save_hf writes is what transformers loads.

Round trips use the tiny prime-dimension presets (a transposed kernel or a swapped head split
cannot hide behind equal sizes); one test exports the real SmolLM2 for transformers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ftjax.io import load_pretrained, save_hf
from ftjax.io.gguf import permute_rotary_rows, unpermute_rotary_rows
from ftjax.io.testing import random_params, tiny_tokenizer, write_llama_gguf
from ftjax.models import HeadConfig, Model, init_params, preset

CASES = {  # preset -> the pretraining head load_pretrained gives it back with
    "tiny-llama": HeadConfig("lm"),
    "tiny-llama-tied": HeadConfig("lm"),
    "tiny-bert": HeadConfig("none"),
}
IDS = np.array([[5, 17, 3, 42, 8, 91, 23], [60, 4, 4, 77, 12, 9, 30]], np.int32)
MASK = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]], np.int32)


def _transformers():
    return pytest.importorskip("transformers", reason="export checks load files in transformers")


def _torch():
    return pytest.importorskip("torch", reason="export checks run transformers' torch models")


def _bit_equal(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    def same(x, y) -> bool:
        return x.dtype == y.dtype and bool(np.array_equal(np.asarray(x), np.asarray(y)))
    return jax.tree.all(jax.tree.map(same, a, b))


@functools.lru_cache(maxsize=None)
def _jitted_apply(model: Model):
    """One compiled apply per (equal) model: a loaded model equal to the original reuses it."""
    return jax.jit(model.apply)


def _outputs(model, params, ids=IDS, mask=MASK):
    out = _jitted_apply(model)({"params": params}, jnp.asarray(ids),
                               attention_mask=jnp.asarray(mask))
    return np.asarray(out.hidden if out.logits is None else out.logits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """preset -> (model, params, exported dir): each tiny model initialized and exported once."""
    root = tmp_path_factory.mktemp("export")
    made = {}
    for seed, (name, head) in enumerate(CASES.items()):
        config = preset(name)
        model = Model(config, head)
        params = random_params(model, seed)
        out = save_hf(config, params, root / name, tokenizer=tiny_tokenizer(config))
        made[name] = (model, params, out)
    return made


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_exact(tiny, name):
    model, params, out = tiny[name]
    loaded = load_pretrained(out, dtype="float32")
    assert loaded.model.config == model.config and loaded.model.head_config == model.head_config
    assert _bit_equal(loaded.params, params)
    np.testing.assert_array_equal(_outputs(loaded.model, loaded.params), _outputs(model, params))
    assert loaded.tokenizer.encode("w7 w8 w9") == tiny_tokenizer(model.config).encode("w7 w8 w9")


def test_bert_without_pooler_round_trips(tmp_path):
    config = dataclasses.replace(preset("tiny-bert"), add_pooler=False)
    model = Model(config, HeadConfig("none"))
    params = random_params(model, seed=5)
    loaded = load_pretrained(save_hf(config, params, tmp_path, tokenizer=tiny_tokenizer(config)))
    assert loaded.model.config == config and _bit_equal(loaded.params, params)


def test_tied_export_has_no_lm_head_and_untied_has_one(tiny):
    keys = {name: set(load_file(out / "model.safetensors")) for name, (_, _, out) in tiny.items()}
    assert "lm_head.weight" in keys["tiny-llama"]
    assert "lm_head.weight" not in keys["tiny-llama-tied"]
    assert not any(k.startswith("bert.") for k in keys["tiny-bert"])
    with safe_open(tiny["tiny-llama"][2] / "model.safetensors", "np") as f:
        assert f.get_slice("lm_head.weight").get_shape() == [97, 31]  # torch (out, in)
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_sharded_checkpoint_loads_identically(tiny, tmp_path, name):
    _, params, out = tiny[name]
    tensors = load_file(out / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for file in out.glob("*.json"):
        (tmp_path / file.name).write_bytes(file.read_bytes())
    for shard, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, tmp_path / shard, metadata={"format": "pt"})
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _bit_equal(load_pretrained(tmp_path).params, params)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_scanned_layout_gives_the_same_outputs(tiny, name):
    model, params, out = tiny[name]
    scanned = load_pretrained(out, dtype="float32", scan_layers=True)
    assert scanned.model.config.scan_layers and "layers" in scanned.params["backbone"]
    np.testing.assert_allclose(_outputs(scanned.model, scanned.params), _outputs(model, params),
                               rtol=1e-6, atol=1e-6)


def test_new_head_replaces_the_pretraining_head(tiny):
    model, params, out = tiny["tiny-llama"]
    head = HeadConfig("sequence", 3, "last")
    loaded = load_pretrained(out, head=head, rng_seed=7)
    assert loaded.model.head_config == head and set(loaded.params["head"]) == {"classifier"}
    assert _bit_equal(loaded.params["backbone"], params["backbone"])
    # Same values as initializing the whole new model with the same seed.
    expected = init_params(dataclasses.replace(model, head_config=head), jax.random.key(7))
    assert _bit_equal(loaded.params["head"], expected["head"])
    # The same kind with other settings keeps the pretrained LM head.
    with_dropout = load_pretrained(out, head=HeadConfig("lm", dropout=0.1))
    assert _bit_equal(with_dropout.params, params)
    bert = load_pretrained(tiny["tiny-bert"][2], head=HeadConfig("sequence", 2, "pooler"))
    assert set(bert.params["head"]) == {"classifier"} and "pooler" in bert.params["backbone"]


def test_dtypes_are_explicit(tiny, tmp_path):
    model, params, _ = tiny["tiny-llama"]
    out = save_hf(model.config, params, tmp_path / "bf16", tokenizer=tiny_tokenizer(model.config),
                  dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    stored = load_file(out / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
    loaded = load_pretrained(out, dtype="float32", param_dtype="float32")
    rounded = jax.tree.map(
        lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert _bit_equal(loaded.params, rounded)
    as_bf16 = load_pretrained(out, dtype="bfloat16", param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(as_bf16.params)} == {jnp.dtype("bfloat16")}
    assert as_bf16.model.config.compute_dtype == jnp.bfloat16


# -- GGUF written in llama.cpp's layout -------------------------------------------------------


def test_rotary_row_permutation_is_inverted_exactly():
    w = np.arange(60 * 7, dtype=np.float32).reshape(60, 7)
    permuted = permute_rotary_rows(w, 6)
    assert not np.array_equal(permuted, w)
    # Head 0's rows, llama.cpp order: pairs (0, 5), (1, 6), ... of its 10 rotary dims interleaved.
    assert permuted[:4, 0].tolist() == [w[0, 0], w[5, 0], w[1, 0], w[6, 0]]
    np.testing.assert_array_equal(unpermute_rotary_rows(permuted, 6), w)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-tied"])
def test_gguf_round_trip_is_bit_exact(tiny, tmp_path, name):
    model, params, _ = tiny[name]
    loaded = load_pretrained(write_llama_gguf(tmp_path / f"{name}.gguf", model.config, params),
                             dtype="float32")
    assert loaded.model.config == model.config and _bit_equal(loaded.params, params)
    assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id, loaded.tokenizer.pad_id) == (1, 2, 0)


# -- transformers reads what we write ------------------------------------------------------------


def test_transformers_loads_our_exports(tiny, tmp_path, subtests):
    """One test with subtests: under xdist, transformers and SmolLM2 load in one worker only."""
    transformers, torch = _transformers(), _torch()

    def hf_model(auto_class, out):
        return auto_class.from_pretrained(out, dtype=torch.float32,
                                          attn_implementation="eager").eval()

    for name in ("tiny-llama", "tiny-llama-tied"):
        with subtests.test("tiny llama logits", preset=name):
            # transformers requires hidden_size % num_heads == 0 even with an explicit
            # head_dim, so width 31 becomes 30; head_dim (10 / 14) still differs from 30 // 6.
            config = dataclasses.replace(preset(name), hidden_size=30)
            model = Model(config, HeadConfig("lm"))
            params = random_params(model, seed=3)
            out = save_hf(config, params, tmp_path / name, tokenizer=tiny_tokenizer(config))
            with torch.no_grad():
                logits = hf_model(transformers.AutoModelForCausalLM, out)(
                    torch.from_numpy(IDS.astype(np.int64))).logits.numpy()
            np.testing.assert_allclose(logits, _outputs(model, params, mask=np.ones_like(MASK)),
                                       rtol=1e-5, atol=1e-5)

    with subtests.test("tiny bert hidden states"):
        model, params, out = tiny["tiny-bert"]
        with torch.no_grad():
            hidden = hf_model(transformers.AutoModel, out)(
                input_ids=torch.from_numpy(IDS.astype(np.int64)),
                attention_mask=torch.from_numpy(MASK.astype(np.int64))).last_hidden_state.numpy()
        mask = MASK[..., None]
        np.testing.assert_allclose(hidden * mask, _outputs(model, params) * mask,
                                   rtol=1e-5, atol=1e-5)

    pretrained = load_pretrained("smollm2-135m-instruct", dtype="float32")
    out = save_hf(pretrained.model.config, pretrained.params, tmp_path / "smollm2",
                  tokenizer=pretrained.tokenizer)
    reference = np.load(Path(__file__).parent / "fixtures" / "smollm2_reference.npz")
    ids = reference["ids_1"]
    with subtests.test("SmolLM2 config.json and tokenizer"):
        config = transformers.AutoConfig.from_pretrained(out)
        assert config.model_type == "llama" and config.num_hidden_layers == 30
        assert config.num_key_value_heads == 3 and config.tie_word_embeddings
        assert config.rope_parameters["rope_theta"] == 100000.0
        their_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        assert their_tokenizer(str(reference["prompt_1"])).input_ids == ids.tolist()

    with subtests.test("SmolLM2 last-position logits"):
        with torch.no_grad():
            their_last = hf_model(transformers.AutoModelForCausalLM, out)(
                torch.from_numpy(ids[None].astype(np.int64))).logits[0, -1].numpy()
        our_last = np.asarray(jax.jit(pretrained.model.apply)(
            {"params": pretrained.params}, jnp.asarray(ids)[None]).logits[0, -1])
        # Row scale ~27: see test_io_parity's tolerance note (fp32 rounding at this scale).
        allowed = max(1e-4, 1e-5 * np.abs(their_last).max())
        assert np.abs(their_last - our_last).max() <= allowed


# -- output directories: whole or not at all (ftjax.io.atomic_dir) -------------------------------


def test_atomic_dir_replaces_the_target_only_when_complete(tmp_path):
    from ftjax.io.atomic_dir import OutputExistsError, atomic_dir

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:  # a missing target
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OutputExistsError, match=r"out is not empty.*--overwrite"):
        with atomic_dir(out):
            pass
    for failure in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with atomic_dir(out, overwrite=True) as tmp:
                (tmp / "b").write_text("half")
                raise failure
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty directory is no one's files
        (tmp / "c").write_text("3")
    assert (tmp_path / "empty" / "c").read_text() == "3"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="not a directory"):
        with atomic_dir(tmp_path / "file", overwrite=True):
            pass
