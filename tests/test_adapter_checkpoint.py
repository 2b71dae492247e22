"""Adapter-only checkpoints (ftjax.io.adapter): only the delta is written, it reloads onto its
base exactly (whatever the layout), and it refuses a base of other shapes."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from ftjax.cli import main
from ftjax.io import CheckpointError, load_pretrained
from ftjax.io.adapter import META_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from ftjax.io.loading import flatten
from ftjax.models import HeadConfig
from ftjax.optim import trainability
from ftjax.peft import LoraConfig, add_lora, presets
from ftjax.train.config import load_config
from ftjax.train.loop import train

IDS = jnp.array([[5, 9, 2, 7, 11, 3, 8]])


def _perturbed(params, key, names=("lora_b", "head")):
    """Non-zero LoRA B and a moved head, so the adapter changes the function it is tested on."""
    def move(path, x):
        p = jax.tree_util.keystr(path)
        return x + 0.1 * jax.random.normal(key, x.shape) if any(n in p for n in names) else x
    return jax.tree_util.tree_map_with_path(move, params)


def _lora_setup(model_dir, *, head, scan_layers, train_head=None):
    base = load_pretrained(model_dir, head=head, dtype="float32", scan_layers=scan_layers)
    model, params = add_lora(base.model, base.params, LoraConfig(rank=3, alpha=6.0),
                             jax.random.key(1))
    # A pretrained LM head stays frozen (it is the base's); a new task head moves.
    moved = ("lora_b",) if head.kind == "lm" else ("lora_b", "head")
    params = _perturbed(params, jax.random.key(2), moved)
    spec = presets.method_spec("lora", model.config, head_kind=head.kind,
                               method_cfg={"train_head": train_head})
    mask = trainability.trainable_mask(trainability.resolve(spec, params))
    return base, model, params, mask


@pytest.mark.parametrize("saved_scanned, loaded_scanned", [(True, False), (False, True)])
def test_round_trip_reproduces_the_adapted_model_in_either_layout(
        tiny_llama_dir, tmp_path, saved_scanned, loaded_scanned):
    head = HeadConfig(kind="sequence", num_labels=3, pooling="last")
    _, model, params, mask = _lora_setup(tiny_llama_dir, head=head, scan_layers=saved_scanned)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")

    target = load_pretrained(tiny_llama_dir, dtype="float32", scan_layers=loaded_scanned)
    back_model, back_params = load_adapter(info.path, target)
    assert back_model.config.scan_layers == loaded_scanned
    assert back_model.config.lora == model.config.lora and back_model.head_config == head
    ours = model.apply({"params": params}, IDS).logits
    np.testing.assert_allclose(back_model.apply({"params": back_params}, IDS).logits, ours,
                               atol=1e-6)


def test_loaded_adapter_reuses_the_base_arrays(tiny_llama_dir, tmp_path):
    """The base's leaves come back as the very arrays the Pretrained holds (same layout and
    dtype): attaching an adapter copies no part of the model, on the device or through the
    host."""
    head = HeadConfig(kind="lm")
    base, model, params, mask = _lora_setup(tiny_llama_dir, head=head, scan_layers=False)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")
    _, back = load_adapter(info.path, base)
    ours, theirs = flatten(back), flatten(base.params)
    shared = [path for path in theirs if ours[path] is theirs[path]]
    assert shared == list(theirs)  # every base leaf, the LM head included
    assert set(ours) - set(theirs) == {p for p in ours if "lora_" in p}


def test_delta_holds_trainable_leaves_and_a_new_head_only(tiny_llama_dir, tmp_path):
    # train_head=False: the fresh head is frozen, but the outputs depend on it, so it is saved.
    head = HeadConfig(kind="sequence", num_labels=2, pooling="last")
    _, model, params, mask = _lora_setup(tiny_llama_dir, head=head, scan_layers=False,
                                         train_head=False)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")
    from safetensors.numpy import load_file

    saved = load_file(str(info.path / WEIGHTS_FILE))
    expected = {p for p in flatten(params) if "lora_" in p or p.startswith("head/")}
    assert set(saved) == expected
    assert info.num_params == sum(np.size(v) for p, v in flatten(params).items() if p in expected)
    assert info.num_bytes == (info.path / WEIGHTS_FILE).stat().st_size
    meta = json.loads((info.path / META_FILE).read_text())
    assert meta["method"] == "lora" and meta["peft"]["lora"]["rank"] == 3
    assert meta["num_params"] == info.num_params


def test_lm_head_of_the_base_is_not_saved(tiny_llama_dir, tmp_path):
    base, model, params, mask = _lora_setup(tiny_llama_dir, head=HeadConfig(kind="lm"),
                                            scan_layers=False)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")
    from safetensors.numpy import load_file

    assert all("lora_" in k for k in load_file(str(info.path / WEIGHTS_FILE)))
    back_model, back_params = load_adapter(info.path, base)
    np.testing.assert_allclose(back_model.apply({"params": back_params}, IDS).logits,
                               model.apply({"params": params}, IDS).logits, atol=1e-6)


def test_refuses_a_base_of_other_shapes(tiny_llama_dir, tiny_bert_dir, tmp_path):
    _, model, params, mask = _lora_setup(tiny_llama_dir, head=HeadConfig(kind="lm"),
                                         scan_layers=False)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")
    other = load_pretrained(tiny_bert_dir, dtype="float32")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_adapter(info.path, other)


def test_damaged_adapter_errors_name_the_problem(tiny_llama_dir, tmp_path):
    base, model, params, mask = _lora_setup(tiny_llama_dir, head=HeadConfig(kind="lm"),
                                            scan_layers=False)
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method="lora")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(info.path / WEIGHTS_FILE))
    missing = sorted(tensors)[0]
    del tensors[missing]
    tensors["backbone/layers_0/self_attn/q_proj/lora_c"] = np.zeros(3, np.float32)
    save_file(tensors, str(info.path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError) as err:
        load_adapter(info.path, base)
    assert missing in str(err.value) and "lora_c" in str(err.value)

    meta = json.loads((info.path / META_FILE).read_text())
    meta["peft"]["lora"]["rnak"] = 4
    (info.path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="rnak"):
        load_adapter(info.path, base)
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_adapter(tmp_path, base)


def _run_cfg(tiny_config_file, *overrides):
    return load_config(tiny_config_file, ["steps=3", *overrides])


def test_train_writes_the_adapter_and_export_matches(tiny_config_file, tmp_path, capsys):
    cfg = _run_cfg(tiny_config_file, "method=lora")
    result = train(cfg, tmp_path / "run", quiet=True)
    written = json.loads((tmp_path / "run" / "results.json").read_text())["adapter"]
    adapter_dir = tmp_path / "run" / "adapter"
    assert written["path"] == str(adapter_dir) and written["params"] > 0

    base = load_pretrained(cfg.model.name, dtype="float32")
    model, params = load_adapter(adapter_dir, base)
    batch = next(iter(result.experiment.eval_batches("validation")))
    kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
    run_logits = result.experiment.model.apply({"params": result.state.params},
                                               batch["input_ids"], **kwargs).logits
    np.testing.assert_allclose(model.apply({"params": params}, batch["input_ids"],
                                           **kwargs).logits, run_logits, atol=1e-5)

    assert main(["export", "--workdir", str(tmp_path / "run"), "--format", "adapter",
                 "--out", str(tmp_path / "exported")]) == 0
    assert "parameters" in capsys.readouterr().out
    assert (json.loads((tmp_path / "exported" / META_FILE).read_text())["num_params"]
            == written["params"])


@pytest.mark.parametrize("method", ["full", "llrd"])  # everything trains: the delta is the model
def test_no_adapter_when_everything_trains(tiny_config_file, tmp_path, method):
    train(_run_cfg(tiny_config_file, f"method={method}"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "adapter").exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["adapter"] is None


def test_fingerprint_ignores_storage_dtype_and_layout(tiny_llama_dir):
    from ftjax.io.adapter import base_fingerprint

    a = load_pretrained(tiny_llama_dir, param_dtype="float32")
    b = load_pretrained(tiny_llama_dir, param_dtype="bfloat16", scan_layers=True)
    assert base_fingerprint(a.model) == base_fingerprint(b.model)
    wider = dataclasses.replace(a.model, config=dataclasses.replace(a.model.config,
                                                                     intermediate_size=17))
    assert base_fingerprint(wider) != base_fingerprint(a.model)


@pytest.mark.parametrize("method, settings", [
    ("houlsby", {"size": 5}), ("prefix", {"num_tokens": 3, "projection": True,
                                          "projection_hidden": 7}),
    ("prompt", {"num_tokens": 3}), ("ia3", None)])
def test_every_peft_method_round_trips(tiny_bert_dir, tmp_path, method, settings):
    from ftjax.peft import add_peft

    head = HeadConfig(kind="sequence", num_labels=2, pooling="cls")
    base = load_pretrained(tiny_bert_dir, head=head, dtype="float32")
    model, params = add_peft(base.model, base.params, method, settings, jax.random.key(3))
    params = _perturbed(params, jax.random.key(4), ("adapter_", "prefix", "soft_prompt",
                                                     "ia3", "head"))
    spec = presets.method_spec(method, model.config, head_kind="sequence")
    mask = trainability.trainable_mask(trainability.resolve(spec, params))
    info = save_adapter(tmp_path / "a", model, params, mask, base_name="tiny", method=method)
    back_model, back_params = load_adapter(info.path, load_pretrained(tiny_bert_dir,
                                                                      dtype="float32"))
    ids = jnp.array([[2, 7, 9, 11, 3]])
    np.testing.assert_allclose(back_model.apply({"params": back_params}, ids).logits,
                               model.apply({"params": params}, ids).logits, atol=1e-6)


def test_scanned_top_layers_adapter_holds_only_the_trained_layers(tiny_llama_dir, tmp_path):
    """top_layers on a scanned base: the adapter holds the top block's leaves (and the head),
    the same tensors as from the per-layer model, and reloads onto either layout."""
    head = HeadConfig(kind="sequence", num_labels=3, pooling="last")
    saved = {}
    for scanned in (True, False):
        base = load_pretrained(tiny_llama_dir, head=head, dtype="float32", scan_layers=scanned)
        top = f"layers_{base.model.config.num_layers - 1}"
        params = _perturbed(base.params, jax.random.key(5), ("head",))
        spec = presets.method_spec("top_layers", base.model.config, head_kind="sequence",
                                   method_cfg={"top_k": 1})
        mask = trainability.trainable_mask(trainability.resolve(spec, params))
        info = save_adapter(tmp_path / str(scanned), base.model, params, mask,
                            base_name="tiny", method="top_layers")
        with safe_open(str(info.path / WEIGHTS_FILE), framework="np") as f:
            saved[scanned] = {k: f.get_tensor(k) for k in f.keys()}
        assert {k.split("/")[1] for k in saved[scanned] if k.startswith("backbone/")} == {
            top, "norm"}
        for loaded_scanned in (True, False):
            target = load_pretrained(tiny_llama_dir, dtype="float32", scan_layers=loaded_scanned)
            back_model, back_params = load_adapter(info.path, target)
            np.testing.assert_allclose(
                back_model.apply({"params": back_params}, IDS).logits,
                base.model.apply({"params": params}, IDS).logits, atol=1e-6)
    assert saved[True].keys() == saved[False].keys()
    assert all(np.array_equal(saved[True][k], saved[False][k]) for k in saved[True])
