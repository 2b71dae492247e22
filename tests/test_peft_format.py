"""LoRA adapters in HF PEFT format: golden key names and shapes, peft reproduces our logits, and
an adapter read back is the one written."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from ftjax.io import save_hf
from ftjax.io.peft_format import load_peft, save_peft
from ftjax.models import HeadConfig, Model, init_params, preset
from ftjax.peft import LoraConfig, add_lora, insert_lora, lora_only, split_lora

IDS = np.array([[5, 9, 17, 3, 40, 2, 11], [7, 1, 8, 30, 4, 6, 12]], np.int32)


def _adapted(model, rank=4, targets=None, seed=5):
    """The model with LoRA whose B is random (a trained-looking adapter)."""
    params = init_params(model, jax.random.key(0))
    cfg = LoraConfig(rank=rank, alpha=8.0, **({"targets": targets} if targets else {}))
    lmodel, lparams = add_lora(model, params, cfg, jax.random.key(1))
    base, lora = split_lora(lparams)
    lora = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(seed), x.shape), lora)
    return model, base, lmodel, insert_lora(base, lora)


def test_golden_names_and_shapes(tmp_path):
    llama = Model(dataclasses.replace(preset("tiny-llama"), hidden_size=30), HeadConfig("lm"))
    _, _, lmodel, lparams = _adapted(llama, rank=3)
    out = save_peft(lmodel, lparams, tmp_path / "llama")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.{}.self_attn.{}.lora_{}.weight".format
    assert tensors[key(1, "q_proj", "A")].shape == (3, 30)  # torch (r, in)
    assert tensors[key(1, "q_proj", "B")].shape == (60, 3)  # torch (out, r): 6 heads x 10
    assert tensors[key(0, "v_proj", "B")].shape == (20, 3)  # 2 kv heads x 10
    assert len(tensors) == 2 * 2 * 2
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["lora_alpha"] == 8.0 and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == [f"model.layers.{i}.self_attn.{p}_proj"
                                        for i in range(2) for p in "qv"]

    bert = Model(preset("tiny-bert", scan_layers=True), HeadConfig("none"))  # scanned: unstacked
    _, _, bmodel, bparams = _adapted(bert, rank=2)
    tensors = load_file(str(save_peft(bmodel, bparams, tmp_path / "bert") /
                            "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(
        f"base_model.model.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
        for i in range(2) for m in ("query", "value") for ab in "AB")
    assert tensors["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"].shape \
        == (2, 30)


@pytest.mark.parametrize("scan", [False, True])
def test_load_peft_round_trip(tmp_path, scan):
    # The classifier travels with the adapter (BertForSequenceClassification's, on the pooler).
    model = Model(preset("tiny-bert", scan_layers=scan),
                  HeadConfig("sequence", num_labels=2, pooling="pooler"))
    model, base, lmodel, lparams = _adapted(model, targets=r".*/(attention/key|intermediate)")
    out = save_peft(lmodel, lparams, tmp_path)
    back_model, back_params = load_peft(model, base, out)
    assert jax.tree.structure(back_params) == jax.tree.structure(lparams)
    for a, b in zip(jax.tree.leaves(lora_only(back_params)), jax.tree.leaves(lora_only(lparams))):
        np.testing.assert_array_equal(a, b)
    apply = lambda m, p: m.apply({"params": p}, jnp.asarray(IDS)).logits  # noqa: E731
    np.testing.assert_allclose(apply(back_model, back_params), apply(lmodel, lparams), atol=1e-6)


def test_peft_reproduces_our_logits(tmp_path):
    torch = pytest.importorskip("torch", reason="the peft round trip runs torch models")
    transformers = pytest.importorskip("transformers", reason="peft wraps a transformers model")
    peft = pytest.importorskip("peft", reason="checks that peft loads our adapter")
    # transformers needs hidden_size % num_heads == 0 even with an explicit head_dim: 31 -> 30.
    config = dataclasses.replace(preset("tiny-llama"), hidden_size=30)
    model, base, lmodel, lparams = _adapted(Model(config, HeadConfig("lm")),
                                            targets=r".*/(self_attn/[qv]_proj|mlp/down_proj)")
    base_dir = save_hf(config, base, tmp_path / "base")
    adapter_dir = save_peft(lmodel, lparams, tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(hf, adapter_dir).eval()
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(IDS.astype(np.int64))).logits.numpy()
    ours = np.asarray(lmodel.apply({"params": lparams}, jnp.asarray(IDS)).logits)
    base_logits = np.asarray(model.apply({"params": base}, jnp.asarray(IDS)).logits)
    assert np.abs(ours - base_logits).max() > 1e-3  # the adapter matters
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


def _with_head(config, head, seed=7):
    """An adapted model with a new task head whose kernel moved (a trained-looking head)."""
    model, base, lmodel, lparams = _adapted(Model(config, head))
    move = lambda x: x + 0.3 * jax.random.normal(jax.random.key(seed), x.shape)  # noqa: E731
    lparams["head"]["classifier"]["kernel"] = move(lparams["head"]["classifier"]["kernel"])
    return model, base, lmodel, lparams


def test_llama_sequence_head_is_peft_s_score_module(tmp_path):
    """LlamaForSequenceClassification.score: no bias, last non-pad token; peft reproduces our
    logits with right and left padding, and load_peft reads the head back."""
    torch = pytest.importorskip("torch", reason="the peft round trip runs torch models")
    transformers = pytest.importorskip("transformers", reason="peft wraps a transformers model")
    peft = pytest.importorskip("peft", reason="checks that peft loads our adapter")
    config = dataclasses.replace(preset("tiny-llama"), hidden_size=30, pad_token_id=0)
    head = HeadConfig("sequence", num_labels=3, pooling="last")
    model, base, lmodel, lparams = _with_head(config, head)
    lm_base = init_params(Model(config, HeadConfig("lm")), jax.random.key(0))
    base_dir = save_hf(config, lm_base, tmp_path / "base")
    out = save_peft(lmodel, lparams, tmp_path / "adapter", base_model_name_or_path="tiny")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert tensors["base_model.model.score.weight"].shape == (3, 30)
    assert "base_model.model.score.bias" not in tensors
    config_json = json.loads((out / "adapter_config.json").read_text())
    assert config_json["task_type"] == "SEQ_CLS" and config_json["modules_to_save"] == ["score"]
    assert config_json["base_model_name_or_path"] == "tiny"

    ids = np.array([[5, 9, 17, 3, 40, 2, 11], [7, 1, 8, 30, 0, 0, 0], [0, 0, 4, 6, 12, 9, 1]])
    mask = (ids != 0).astype(np.int32)
    # The exported base is the same backbone (same seed), with the LM head peft's class drops.
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, base["backbone"],
                                            lm_base["backbone"])))
    ours = np.asarray(lmodel.apply({"params": lparams}, jnp.asarray(ids),
                                   attention_mask=jnp.asarray(mask)).logits)
    hf = transformers.LlamaForSequenceClassification.from_pretrained(
        base_dir, num_labels=3, dtype=torch.float32, attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                            attention_mask=torch.from_numpy(mask.astype(np.int64))).logits
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-5, atol=1e-5)

    back_model, back_params = load_peft(Model(config, HeadConfig("lm")), lm_base, out)
    assert back_model.head_config == head
    np.testing.assert_allclose(back_model.apply({"params": back_params}, jnp.asarray(ids),
                                                attention_mask=jnp.asarray(mask)).logits,
                               ours, atol=1e-6)


def test_heads_peft_cannot_hold_are_refused(tmp_path):
    from ftjax.io import CheckpointError
    from ftjax.io.peft_format import peft_refusal

    llama = dataclasses.replace(preset("tiny-llama"), hidden_size=30)
    _, _, lmodel, lparams = _with_head(llama, HeadConfig("sequence", 2, "last"))
    assert peft_refusal(lmodel, lparams) is None  # a zero bias: score holds it
    lparams["head"]["classifier"]["bias"] = jnp.ones(2)
    assert "has no bias" in peft_refusal(lmodel, lparams)
    with pytest.raises(CheckpointError, match="has no bias"):
        save_peft(lmodel, lparams, tmp_path / "biased")
    assert not (tmp_path / "biased").exists()

    _, _, lmodel, lparams = _with_head(llama, HeadConfig("verbalizer", 2, "last"))
    assert "verbalizer" in peft_refusal(lmodel, lparams)
    _, _, bmodel, bparams = _with_head(preset("tiny-bert"), HeadConfig("sequence", 2, "cls"))
    assert "BERT's pooler output" in peft_refusal(bmodel, bparams)

    # A trained leaf that is neither LoRA nor the head (custom rules training a norm).
    _, _, bmodel, bparams = _with_head(preset("tiny-bert"), HeadConfig("token", 2))
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: any(k in jax.tree_util.keystr(path) for k in ("lora_", "head",
                                                                       "output_norm")), bparams)
    assert "besides LoRA the run trained backbone/layers_0/output_norm" in peft_refusal(
        bmodel, bparams, mask)
