"""Bad checkpoints fail loudly: one error that names every problem, its checkpoint key and our path.

All files are tiny ones written here from the prime-dimension presets (milliseconds each).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ftjax.io import CheckpointError, load_pretrained, save_hf
from ftjax.io.atomic_dir import OutputExistsError
from ftjax.io.testing import random_params, tiny_tokenizer, write_llama_gguf
from ftjax.models import HeadConfig, Model, preset

LLAMA = preset("tiny-llama")
BERT = preset("tiny-bert")


@pytest.fixture(scope="module")
def llama_params():
    return random_params(Model(LLAMA), seed=0)


@pytest.fixture(scope="module")
def bert_params():
    return random_params(Model(BERT, HeadConfig("none")), seed=1)


@pytest.fixture
def llama_dir(tmp_path, llama_params) -> Path:
    return save_hf(LLAMA, llama_params, tmp_path / "llama", tokenizer=tiny_tokenizer(LLAMA))


@pytest.fixture
def bert_dir(tmp_path, bert_params) -> Path:
    return save_hf(BERT, bert_params, tmp_path / "bert", tokenizer=tiny_tokenizer(BERT))


def _edit_tensors(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    return str(info.value)


# -- safetensors contents ---------------------------------------------------------------------


def test_missing_tensor_names_key_and_path(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    message = _load_error(llama_dir)
    assert "missing" in message and "'model.layers.1.mlp.up_proj.weight'" in message
    assert "backbone/layers_1/mlp/up_proj/kernel" in message and "1 problem" in message


def test_extra_tensor_names_key_and_path(llama_dir):
    def add(tensors):
        tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((37, 31), np.float32)
        tensors["vision_tower.proj.weight"] = np.zeros((3, 4), np.float32)
    _edit_tensors(llama_dir, add)
    message = _load_error(llama_dir)
    # A known name past the last layer: both names. An unknown name: the key and its shape.
    assert re.search(r"unused: checkpoint key 'model\.layers\.2\.mlp\.up_proj\.weight' .*"
                     r"backbone/layers_2/mlp/up_proj/kernel", message)
    assert "'vision_tower.proj.weight' (3, 4)" in message and "2 problems" in message


def test_wrong_shape_names_key_path_and_both_shapes(llama_dir):
    def reshape(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((21, 31), np.float32)
    _edit_tensors(llama_dir, reshape)
    message = _load_error(llama_dir)
    assert re.search(r"shape: checkpoint key 'model\.layers\.0\.self_attn\.k_proj\.weight' stored "
                     r"as \(21, 31\) converts to \(31, 21\), but our "
                     r"backbone/layers_0/self_attn/k_proj/kernel is \(31, 20\)", message)


def test_every_problem_is_reported_in_one_error(bert_dir):
    def break_all(tensors):
        tensors.pop("encoder.layer.0.intermediate.dense.bias")
        tensors["encoder.layer.1.output.dense.weight"] = np.zeros((30, 36), np.float32)
        tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((30, 30), np.int32)
        tensors["mystery"] = np.zeros((2,), np.float32)
    _edit_tensors(bert_dir, break_all)
    message = _load_error(bert_dir)
    assert "4 problems" in message
    for expected in ("'encoder.layer.0.intermediate.dense.bias'", "layers_0/intermediate/bias",
                     "'encoder.layer.1.output.dense.weight'", "layers_1/output/kernel",
                     "dtype: checkpoint key 'encoder.layer.0.attention.self.query.weight' is int32",
                     "'mystery'"):
        assert expected in message


def test_bert_prefix_pretraining_heads_and_buffers_are_accepted(bert_dir, bert_params):
    """A BertForPreTraining-style file: `bert.` prefix, MLM/NSP heads, position_ids buffer."""
    def as_pretraining_checkpoint(tensors):
        for key in list(tensors):
            tensors["bert." + key] = tensors.pop(key)
        tensors["bert.embeddings.position_ids"] = np.arange(67, dtype=np.int64)[None]
        tensors["cls.predictions.bias"] = np.zeros((101,), np.float32)
        tensors["cls.seq_relationship.weight"] = np.zeros((2, 30), np.float32)
    _edit_tensors(bert_dir, as_pretraining_checkpoint)
    loaded = load_pretrained(bert_dir)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), loaded.params, bert_params))


def test_tied_llama_ignores_a_saved_lm_head_copy(tmp_path):
    """transformers ties the output to the embedding when the config says so, whatever the file."""
    config = preset("tiny-llama-tied")
    params = random_params(Model(config), seed=3)
    out = save_hf(config, params, tmp_path / "tied", tokenizer=tiny_tokenizer(config))
    _edit_tensors(out, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    assert "head" not in load_pretrained(out).params


def test_unknown_integer_buffer_is_not_ignored(bert_dir):
    _edit_tensors(bert_dir, lambda t: t.update(
        {"embeddings.token_ids": np.zeros((1, 4), np.int64)}))
    assert "'embeddings.token_ids'" in _load_error(bert_dir)


def test_sharded_index_naming_a_missing_shard(llama_dir):
    keys = list(load_file(llama_dir / "model.safetensors"))
    (llama_dir / "model.safetensors").rename(llama_dir / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys[:-1]}
    weight_map[keys[-1]] = "model-00002-of-00002.safetensors"
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    message = _load_error(llama_dir)
    assert "'model-00002-of-00002.safetensors'" in message and "does not exist" in message


def test_single_file_beside_a_sharded_index_is_ambiguous(llama_dir, llama_params):
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    assert "holds both model.safetensors and model.safetensors.index.json" in _load_error(llama_dir)
    # An export never writes beside what is there: refused, or with overwrite the directory
    # is replaced whole (no stale index left for a reader to prefer).
    config_before = (llama_dir / "config.json").read_bytes()
    with pytest.raises(OutputExistsError, match="not empty"):
        save_hf(preset("tiny-llama", rope_theta=5.0), llama_params, llama_dir)
    assert (llama_dir / "config.json").read_bytes() == config_before
    save_hf(LLAMA, llama_params, llama_dir, tokenizer=tiny_tokenizer(LLAMA), overwrite=True)
    assert not (llama_dir / "model.safetensors.index.json").exists()
    assert load_pretrained(llama_dir).params["head"]["kernel"].shape == (31, 97)


def test_no_weights_file(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    assert "no model.safetensors or model.safetensors.index.json" in _load_error(llama_dir)


# -- config.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,expected", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope type 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"num_hidden_layers": None}, "no 'num_hidden_layers'"),
], ids=["model_type", "rope_parameters", "rope_scaling", "bias", "missing_field"])
def test_unsupported_llama_config(llama_dir, changes, expected):
    _edit_config(llama_dir, **changes)
    message = _load_error(llama_dir)
    assert expected in message and "config.json" in message


def test_unsupported_bert_config(bert_dir):
    _edit_config(bert_dir, position_embedding_type="relative_key")
    assert "position_embedding_type 'relative_key'" in _load_error(bert_dir)


def test_path_that_is_no_checkpoint(tmp_path):
    assert "directory without config.json" in _load_error(tmp_path)
    with pytest.raises(Exception, match="neither an existing path nor a known asset"):
        load_pretrained(tmp_path / "nowhere")


# -- GGUF ---------------------------------------------------------------------------------------


def test_gguf_missing_tensor_names_gguf_key(tmp_path, llama_params):
    params = jax.tree.map(lambda x: x, llama_params)
    del params["backbone"]["layers_1"]["mlp"]["up_proj"]
    message = _load_error(write_llama_gguf(tmp_path / "m.gguf", LLAMA, params))
    assert "'blk.1.ffn_up.weight'" in message and "backbone/layers_1/mlp/up_proj/kernel" in message


def test_gguf_other_architecture(tmp_path, llama_params):
    path = write_llama_gguf(tmp_path / "gpt2.gguf", LLAMA, llama_params, architecture="gpt2")
    assert "general.architecture is 'gpt2'; only 'llama'" in _load_error(path)


def test_gguf_unsupported_quantization(tmp_path, llama_params):
    import gguf

    raw = {"blk.0.extra.weight": (np.zeros((4, 40), np.uint8), gguf.GGMLQuantizationType.Q8_1)}
    path = write_llama_gguf(tmp_path / "q81.gguf", LLAMA, llama_params, raw_tensors=raw)
    message = _load_error(path)
    assert "'blk.0.extra.weight'" in message and "Q8_1" in message


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    assert "not a readable GGUF file" in _load_error(path)


# -- export ------------------------------------------------------------------------------------


def test_save_hf_refuses_heads_it_cannot_write(tmp_path, llama_params, bert_params):
    seq = HeadConfig("sequence", 3, "last")
    llama_seq = random_params(Model(LLAMA, seq), seed=2)
    with pytest.raises(CheckpointError, match=r"head/classifier/kernel.*no export format"):
        save_hf(LLAMA, llama_seq, tmp_path / "a")
    bert_seq = {**bert_params, "head": {"classifier": {"kernel": np.zeros((30, 2), np.float32)}}}
    with pytest.raises(CheckpointError, match=r"encoder only.*head/classifier/kernel"):
        save_hf(BERT, bert_seq, tmp_path / "b")
    with pytest.raises(CheckpointError, match="ties the LM head"):
        save_hf(preset("tiny-llama-tied"), llama_params, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_save_hf_refuses_leaves_without_a_name(tmp_path, llama_params):
    params = jax.tree.map(lambda x: x, llama_params)
    params["backbone"]["layers_0"]["self_attn"]["q_proj"]["lora_a"] = np.zeros((31, 4), np.float32)
    with pytest.raises(CheckpointError, match=r"layers_0/self_attn/q_proj/lora_a.*merged"):
        save_hf(LLAMA, params, tmp_path / "lora")
