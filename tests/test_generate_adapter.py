"""`ftjax generate --adapter`: a PEFT adapter directory, an ftjax adapter-only directory or an
`ftjax train` run directory of any method."""

import jax
import pytest

from ftjax.cli import main
from ftjax.generate import complete
from ftjax.generate.sampling import SamplingConfig
from ftjax.io import load_pretrained
from ftjax.io.peft_format import save_peft
from ftjax.peft import LoraConfig, add_lora, merge
from ftjax.train.config import load_config
from ftjax.train.loop import train

PROMPT = "the film was good and"


def _greedy_text(model, params, tokenizer):
    texts, _ = complete(model, params, tokenizer, [PROMPT], max_new_tokens=6,
                        sampling=SamplingConfig(greedy=True))
    return texts[0]


def _cli_text(model_dir, adapter, capsys):
    capsys.readouterr()
    assert main(["generate", "--model", str(model_dir), "--prompt", PROMPT, "--greedy",
                 "--max-new-tokens", "6", "--dtype", "float32", "--adapter", str(adapter)]) == 0
    return capsys.readouterr().out.rstrip("\n")


def test_peft_adapter_generates_like_the_merged_model(tiny_llama_dir, tmp_path, capsys):
    base = load_pretrained(tiny_llama_dir, dtype="float32")
    lora = LoraConfig(rank=4, alpha=8.0)
    model, params = add_lora(base.model, base.params, lora, jax.random.key(1))
    # Non-zero B, so the adapter changes the function it is tested on.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape)
        if "lora_b" in jax.tree_util.keystr(path) else x, params)
    save_peft(model, params, tmp_path / "adapter")
    expected = _greedy_text(base.model, merge(params, lora), base.tokenizer)
    assert _cli_text(tiny_llama_dir, tmp_path / "adapter", capsys) == expected


@pytest.mark.parametrize("method, save_adapter",
                         [("lora", True), ("lora", False), ("prompt", True)])
def test_run_directory_is_an_adapter(method, save_adapter, tiny_config_file, tiny_llama_dir,
                                     tmp_path, capsys):
    """A LoRA run through its adapter/ and through its checkpoint, and a prompt-tuning run (its
    soft prompt cached by generation's prefill)."""
    cfg = load_config(tiny_config_file, [
        f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm", f"method={method}",
        "steps=3", "task.max_length=24", "optimizer.learning_rate=1e-1", "model.dtype=float32",
        "prompt.num_tokens=4", f"save_adapter={save_adapter}"])
    result = train(cfg, tmp_path / "run", quiet=True)
    run_model = result.experiment.model
    expected = _greedy_text(run_model, result.state.params, result.experiment.tokenizer)
    assert _cli_text(tiny_llama_dir, tmp_path / "run", capsys) == expected


def test_adapter_errors_are_clear(tiny_llama_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT,
                 "--adapter", str(tmp_path / "nothing")]) == 2
    assert "with adapter" in capsys.readouterr().err
