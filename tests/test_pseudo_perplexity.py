"""Pseudo-perplexity of a masked LM: one row per real non-special token, that token alone
masked; the hook's figure equals the pseudo-log-likelihood computed by hand, token by token."""

import math

import jax
import numpy as np

from ftjax.data import MaskedLM, PseudoLikelihood
from ftjax.data.features import IndexedRecord
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.hooks import PseudoPerplexity
from ftjax.train.trainer import Trainer


def test_rows_mask_each_token_alone(tiny_config_file):
    exp = build_experiment(load_config(tiny_config_file, [
        "task.kind=masked_lm", "head.kind=mlm", "task.max_length=16"]))
    tokenizer = exp.tokenizer
    featurizer = PseudoLikelihood(MaskedLM("text", 16)).featurizer(tokenizer)
    text = exp.sources[0].splits["validation"][0]["text"]
    rows = featurizer(IndexedRecord(0, 0, {"text": text}))
    original = tokenizer.encode(text, add_special_tokens=True)[:16]
    content = [t for t in original if t not in tokenizer.special_ids]
    assert len(rows) == len(content) > 0
    mask_id = tokenizer.token_to_id("[MASK]")
    masked_at = []
    for row in rows:
        changed = np.flatnonzero(row["input_ids"] != row["labels"])
        assert len(changed) == 1 and row["input_ids"][changed[0]] == mask_id
        assert np.flatnonzero(row["loss_mask"]).tolist() == changed.tolist()
        assert row["labels"][: len(original)].tolist() == original
        masked_at.append(int(changed[0]))
    assert masked_at == sorted(set(masked_at))  # every position once, in order


def test_hook_equals_hand_computed_pseudo_log_likelihood(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, ["task.kind=masked_lm", "head.kind=mlm",
                                         "task.max_length=16", "steps=1", "eval_every=1"])
    exp = build_experiment(cfg)
    trainer = Trainer(exp, tmp_path, quiet=True, hooks=[PseudoPerplexity(max_examples=5)])
    result = trainer.fit()
    measured = result.eval["validation"]["pseudo_perplexity"]

    params, tokenizer = result.state.params, exp.tokenizer
    apply = jax.jit(exp.model.apply)
    mask_id, log_likelihood, count = tokenizer.token_to_id("[MASK]"), 0.0, 0
    for record in [exp.sources[0].splits["validation"][i] for i in range(5)]:
        ids = tokenizer.encode(record["text"], add_special_tokens=True)[:16]
        for t, token in enumerate(ids):
            if token in tokenizer.special_ids:
                continue
            masked = np.asarray([ids[:t] + [mask_id] + ids[t + 1:]], np.int32)
            logits = apply({"params": params}, masked,
                           attention_mask=np.ones_like(masked)).logits[0, t]
            log_likelihood += float(jax.nn.log_softmax(logits)[token])
            count += 1
    assert math.isclose(measured, math.exp(-log_likelihood / count), rel_tol=1e-4)
