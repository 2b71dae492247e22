"""`ftjax export`: base models, fine-tuned runs (LoRA merged) and PEFT adapters."""

import json

import jax
import numpy as np

from ftjax.cli import main
from ftjax.io import load_pretrained
from ftjax.peft import merge
from ftjax.train.config import load_config
from ftjax.train.loop import train


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) and (
        jax.tree.structure(a) == jax.tree.structure(b))


def test_export_base_model_round_trips(tiny_bert_dir, tmp_path):
    assert main(["export", "--model", str(tiny_bert_dir), "--out", str(tmp_path / "out")]) == 0
    assert _equal(load_pretrained(tmp_path / "out").params, load_pretrained(tiny_bert_dir).params)


def test_export_lora_run_merged_and_as_peft_adapter(tiny_config_file, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(load_config(tiny_config_file, ["method=lora", "steps=3"]), run, quiet=True)
    # A classifier head has no HF counterpart here: refused unless explicitly dropped.
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "--backbone-only" in capsys.readouterr().out
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf"),
                 "--backbone-only"]) == 0
    exported = load_pretrained(tmp_path / "hf").params["backbone"]
    merged = merge(result.state.params, result.experiment.model.config.lora)["backbone"]
    assert _equal(exported, merged)

    assert main(["export", "--workdir", str(run), "--format", "peft",
                 "--out", str(tmp_path / "peft")]) == 0
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["r"] == result.experiment.model.config.lora.rank
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_export_errors_are_clear(tmp_path, capsys):
    assert main(["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().out
