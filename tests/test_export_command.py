"""`ftjax export`: base models, fine-tuned runs (LoRA merged) and PEFT adapters; an export never
writes over existing files and a failed one leaves its target as it was."""

import json

import jax
import numpy as np
import pytest
from conftest import write_tiny_config

import ftjax.io.adapter
import ftjax.io.hf
import ftjax.io.peft_format
from ftjax.cli import main
from ftjax.io import load_pretrained
from ftjax.peft import merge
from ftjax.train.config import load_config
from ftjax.train.loop import train

# What each format writes (a file to find it by) and the writer a failing disk is simulated in.
FORMATS = {
    "hf": (["--backbone-only"], "model.safetensors", (ftjax.io.hf, "write_tensors")),
    "peft": (["--format", "peft"], "adapter_model.safetensors",
             (ftjax.io.peft_format, "save_file")),
    "adapter": (["--format", "adapter"], "adapter.safetensors", (ftjax.io.adapter, "save_file")),
}


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) and (
        jax.tree.structure(a) == jax.tree.structure(b))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    """A 3-step LoRA run whose sequence head (trained beside LoRA) classifies BERT's pooler
    output, as BertForSequenceClassification does: (run directory, RunResult)."""
    root = tmp_path_factory.mktemp("lora_run")
    config = write_tiny_config(root / "experiment.py", tiny_bert_dir, tiny_text_data)
    cfg = load_config(config, ["method=lora", "steps=3", "head.pooling=pooler"])
    return root / "run", train(cfg, root / "run", quiet=True)


def _siblings(out):
    """What an export left beside its target: hidden temporary or old directories."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_export_base_model_round_trips(tiny_bert_dir, tmp_path):
    assert main(["export", "--model", str(tiny_bert_dir), "--out", str(tmp_path / "out")]) == 0
    assert _equal(load_pretrained(tmp_path / "out").params, load_pretrained(tiny_bert_dir).params)


def test_export_lora_run_merged_and_as_peft_adapter(lora_run, tmp_path, capsys):
    run, result = lora_run
    # A classifier head has no HF counterpart here: refused unless explicitly dropped.
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "--backbone-only" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
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


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_never_writes_over_existing_files(lora_run, tmp_path, capsys, fmt):
    run, _ = lora_run
    flags, written, _ = FORMATS[fmt]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = ["export", "--workdir", str(run), "--out", str(out), *flags]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftjax export: ") and err.count("\n") == 1
    assert str(out) in err and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"

    assert main([*command, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / written).is_file()
    assert _siblings(out) == []


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_failed_export_leaves_the_target_as_it_was(lora_run, tmp_path, monkeypatch, fmt):
    """The tensor writer fails midway (a full disk): with --overwrite too, the old directory
    stays whole and no temporary directory is left behind."""
    run, _ = lora_run
    flags, _, (module, writer) = FORMATS[fmt]
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")

    def half_written(tensors, path, *args, **kwargs):
        target = path if str(path).endswith(".safetensors") else f"{path}/model.safetensors"
        with open(target, "wb") as f:
            f.write(b"\0" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, writer, half_written)
    with pytest.raises(OSError, match="No space left"):
        main(["export", "--workdir", str(run), "--out", str(out), "--overwrite", *flags])
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert (out / "old.txt").read_text() == "previous export"
    assert _siblings(out) == []


def test_train_rewrites_its_own_adapter_directory(lora_run, tiny_bert_dir, tiny_text_data,
                                                  tmp_path):
    """WORKDIR/adapter belongs to the run: running the same command again replaces it."""
    config = write_tiny_config(tmp_path / "experiment.py", tiny_bert_dir, tiny_text_data)
    # best_metric="": the adapter holds the last state (not a best one from the first run).
    keep_last = ["method=lora", "checkpoint_every=1", "best_metric="]
    cfg = load_config(config, ["steps=2", *keep_last])
    train(cfg, tmp_path / "run", quiet=True)
    first = (tmp_path / "run" / "adapter" / "adapter.json").read_text()
    cfg = load_config(config, ["steps=3", *keep_last])
    train(cfg, tmp_path / "run", quiet=True)
    second = json.loads((tmp_path / "run" / "adapter" / "adapter.json").read_text())
    assert json.loads(first)["step"] == 2 and second["step"] == 3


def test_export_errors_are_clear(tmp_path, capsys):
    def refused(*args):
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftjax export: ") and err.count("\n") == 1, err
        return err

    assert "no config.json" in refused("--workdir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "not a directory" in refused("--workdir", str(tmp_path / "nowhere"),
                                        "--out", str(tmp_path / "o"))
    assert "neither an existing path" in refused("--model", str(tmp_path / "nowhere"),
                                                 "--out", str(tmp_path / "o"))
    (tmp_path / "file").write_text("")
    assert "not a directory" in refused("--model", str(tmp_path / "nowhere"),
                                        "--out", str(tmp_path / "file"))
    assert not (tmp_path / "o").exists()


def test_peft_export_keeps_the_trained_sequence_head(lora_run, tiny_bert_dir, tmp_path):
    """The head that trained beside LoRA goes into the adapter as peft's modules_to_save:
    peft on BertForSequenceClassification and ftjax's load_peft both reproduce the run."""
    torch = pytest.importorskip("torch", reason="the peft round trip runs torch models")
    transformers = pytest.importorskip("transformers", reason="peft wraps a transformers model")
    peft = pytest.importorskip("peft", reason="checks that peft loads our adapter")
    from ftjax.io.peft_format import load_peft
    from ftjax.train.step import model_inputs

    run, result = lora_run
    out = tmp_path / "peft"
    assert main(["export", "--workdir", str(run), "--format", "peft", "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_bert_dir)
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]

    exp = result.experiment
    batch = next(iter(exp.eval_batches("validation")))
    kwargs = model_inputs(batch, exp.model)
    ours = np.asarray(exp.model.apply({"params": result.state.params}, batch["input_ids"],
                                      **kwargs).logits)
    inputs = {k: torch.from_numpy(np.asarray(batch[k], np.int64))
              for k in ("input_ids", "attention_mask", "token_type_ids")}
    hf = transformers.BertForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=2, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        without = hf(**inputs).logits.numpy()  # the class's own fresh classifier
        theirs = peft.PeftModel.from_pretrained(hf, out).eval()(**inputs).logits.numpy()
    # The saved head matters: without it, logits differ by far more than the parity tolerance.
    assert np.abs(without - ours).max() > 100 * 1e-5
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)

    base = load_pretrained(tiny_bert_dir, dtype="float32")
    model, params = load_peft(base.model, base.params, out)
    assert model.head_config == exp.model.head_config
    np.testing.assert_allclose(model.apply({"params": params}, batch["input_ids"],
                                           **kwargs).logits, ours, atol=1e-5)


def test_peft_export_refuses_a_verbalizer_head(tiny_llama_dir, tiny_text_data, tmp_path, capsys):
    """A verbalizer's trained rows belong to a head no transformers class has: refused (not
    written without it)."""
    config = tmp_path / "verbalizer.py"
    config.write_text(f"""
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = {str(tiny_llama_dir)!r}
    c.data.source = "local"
    c.data.path = {tiny_text_data!r}
    c.method = "lora"
    c.head.kind = "verbalizer"
    c.head.num_labels = 2
    c.head.pooling = "last"
    c.task.template = "the film was {{text}} and it was"
    c.task.label_words = (" bad", " good")
    c.task.max_length = 24
    c.steps = 2
    c.batch_size = 8
    c.eval_batch_size = 16
    return c
""")
    train(load_config(config), tmp_path / "run", quiet=True)
    capsys.readouterr()
    assert main(["export", "--workdir", str(tmp_path / "run"), "--format", "peft",
                 "--out", str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftjax export: --format peft: ") and err.count("\n") == 1
    assert "verbalizer" in err and "--format adapter" in err and "--format hf" in err
    assert not (tmp_path / "peft").exists()
