"""A LoRA adapter trained on the real SmolLM2-135M-Instruct, exported to the HF PEFT format, gives
the same greedy continuation in transformers + peft as `ftjax generate --adapter` (issue 6's
interop check, end to end: ftjax train -> ftjax export --format peft -> PeftModel)."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.cli import main
from ftjax.data import polarity_splits
from ftjax.io import load_adapter, load_pretrained, save_hf
from ftjax.train.config import load_config
from ftjax.train.loop import train

torch = pytest.importorskip("torch", reason="the reference side runs transformers on torch")
transformers = pytest.importorskip("transformers", reason="the reference model")
peft = pytest.importorskip("peft", reason="loads our exported adapter")

EXPERIMENT = Path(__file__).parents[1] / "experiments" / "smollm2_lora_reviews.py"
PROMPT = "This movie is"
NEW_TOKENS = 12


def _write_reviews(directory: Path) -> str:
    """A few real review sentences per split, so the run is short but the text is the domain's."""
    splits = polarity_splits()
    for split, n in (("train", 48), ("validation", 8), ("test", 8)):
        rows = [json.dumps({"text": r["text"]}) for r in splits[split][:n]]
        (directory / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return str(directory / "{split}.jsonl")


def test_trained_adapter_generates_the_same_in_transformers_peft(tmp_path, capsys):
    cfg = load_config(EXPERIMENT, [
        "data.source=local", f"data.path={_write_reviews(tmp_path)}", "steps=6",
        "batch_size=4", "task.max_length=32", "eval_every=6", "checkpoint_every=6",
        "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=0"])
    result = train(cfg, tmp_path / "run", quiet=True)

    base = load_pretrained(cfg.model.name, dtype="float32")
    model, params = load_adapter(tmp_path / "run" / "adapter", base)
    ids = jnp.asarray([base.tokenizer.encode(PROMPT)])
    moved = np.abs(model.apply({"params": params}, ids).logits
                   - base.model.apply({"params": base.params}, ids).logits).max()
    assert moved > 1e-2, f"the trained adapter barely changes the logits ({moved:.2g})"
    assert result.final_step == 6

    capsys.readouterr()
    assert main(["generate", "--model", cfg.model.name, "--adapter", str(tmp_path / "run"),
                 "--prompt", PROMPT, "--greedy", "--max-new-tokens", str(NEW_TOKENS),
                 "--dtype", "float32"]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    assert main(["export", "--workdir", str(tmp_path / "run"), "--format", "peft",
                 "--out", str(tmp_path / "peft")]) == 0

    base_dir = save_hf(base.model, base.params, tmp_path / "base", tokenizer=base.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=torch.tensor(np.asarray(ids), dtype=torch.long), do_sample=False,
            max_new_tokens=NEW_TOKENS, eos_token_id=base.model.config.eos_token_id,
            pad_token_id=base.model.config.eos_token_id)
    theirs = base.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
    assert ours == theirs, f"ftjax: {ours!r}\npeft:  {theirs!r}"
