"""Real checkpoints loaded by ftjax.io compute what transformers computes (fp32, CPU).

References: tests/fixtures/*_reference.npz, written by tests/fixtures/make_reference.py with
transformers from the same files (SmolLM2 from its GGUF, MiniLM from its HF directory).

Tolerance. The target is 1e-4 absolute, and MiniLM meets it with a wide margin. SmolLM2's logits
reach |30| and its first-token rows carry very large activations, so fp32 rounding alone moves
them by more: against a float64 run of the same weights, our fp32 logits differ by up to 1.5e-4
and transformers' fp32 logits by up to 7e-5. The logit checks therefore allow, per row,
max(1e-4, 1e-5 * max|reference row|): 1e-4 absolute for rows of scale <= 10, the same 1e-5
relative precision above. Every failure message prints the raw max abs difference.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.io import load_pretrained
from ftjax.models import PRESETS
from ftjax.models.heads import pool

FIXTURES = Path(__file__).parent / "fixtures"
ABS_TOL, REL_TOL = 1e-4, 1e-5


def assert_logits_close(ours, reference, what: str) -> None:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, what
    diff = np.abs(ours - reference).reshape(-1, reference.shape[-1]).max(axis=-1)
    scale = np.abs(reference).reshape(-1, reference.shape[-1]).max(axis=-1)
    allowed = np.maximum(ABS_TOL, REL_TOL * scale)
    worst = int(np.argmax(diff / allowed))
    assert (diff <= allowed).all(), (
        f"{what}: max abs diff {diff.max():.3g}; row {worst} differs by {diff[worst]:.3g} "
        f"(allowed {allowed[worst]:.3g} at logit scale {scale[worst]:.3g})")


# -- SmolLM2-135M-Instruct from GGUF ------------------------------------------------------------


def test_smollm2_from_gguf_matches_transformers(subtests):
    """One test with subtests: under xdist the 135M checkpoint then loads in one worker only."""
    smollm2 = load_pretrained("smollm2-135m-instruct", dtype="float32")
    ref = dict(np.load(FIXTURES / "smollm2_reference.npz"))
    jitted = jax.jit(smollm2.model.apply)

    def apply(ids, **kw):
        return jitted({"params": smollm2.params}, jnp.asarray(ids), **kw)

    with subtests.test("config from GGUF metadata"):
        assert smollm2.model.config.with_policy(dtype="float32") == PRESETS["smollm2-135m"]
        assert smollm2.model.head_config.kind == "lm" and "head" not in smollm2.params  # tied
        assert smollm2.source.suffix == ".gguf" and smollm2.name == "smollm2-135m-instruct"
        assert sum(x.size for x in jax.tree.leaves(smollm2.params)) == 134_515_008

    # All prompts in ONE right-padded batch (one compile); causal attention keeps real tokens
    # from seeing the padding after them.
    prompts = [ref[f"ids_{i}"] for i in range(3)]
    ids = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, 1
    logits = np.asarray(apply(ids, attention_mask=mask).logits)
    for i, prompt in enumerate(prompts):
        ours = logits[i, :len(prompt)]
        with subtests.test("every position, vocab subset", prompt=i):
            assert_logits_close(ours[:, ref["vocab_subset"]], ref[f"logits_subset_{i}"],
                                f"prompt {i}, all positions")
        with subtests.test("last position, full vocab, and argmax everywhere", prompt=i):
            assert_logits_close(ours[-1], ref[f"last_logits_{i}"], f"prompt {i}, last")
            np.testing.assert_array_equal(ours.argmax(-1), ref[f"argmax_{i}"])

    with subtests.test("8 greedy tokens"):
        prompt, expected = ref["ids_0"], ref["greedy_0"]
        buffer = np.zeros_like(ids)  # the same shape: no new compile; causal mask hides the tail
        buffer[0, :len(prompt)] = prompt
        for end in range(len(prompt), len(prompt) + len(expected)):
            buffer[0, end] = int(np.argmax(np.asarray(apply(buffer).logits[0, end - 1])))
        np.testing.assert_array_equal(buffer[0, len(prompt):len(prompt) + len(expected)], expected)

    with subtests.test("left-padded batch, default positions"):
        out = apply(ref["batch_input_ids"], attention_mask=ref["batch_attention_mask"])
        assert_logits_close(out.logits[:, -1], ref["batch_last_logits"], "left-padded batch")


# -- all-MiniLM-L6-v2 from an HF directory ------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_ref():
    return dict(np.load(FIXTURES / "minilm_reference.npz"))


def _encode(module, input_ids, attention_mask, token_type_ids):
    """The BERT backbone's (hidden states, pooler output): the pooler is not a head's output."""
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    return module.backbone(input_ids, positions=positions, attention_mask_BT=attention_mask,
                           token_type_ids=token_type_ids)


def _minilm_outputs(pretrained, ref):
    encode = jax.jit(lambda params, *batch: pretrained.model.apply(
        {"params": params}, *batch, method=_encode))
    mask = jnp.asarray(ref["attention_mask"])
    hidden, pooled = encode(pretrained.params, jnp.asarray(ref["input_ids"]), mask,
                            jnp.asarray(ref["token_type_ids"]))
    return np.asarray(hidden), np.asarray(pooled), np.asarray(pool(hidden, mask, "mean"))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["per_layer", "scanned"])
def test_minilm_hidden_states_pooler_and_mean_pooling(minilm_ref, scan_layers):
    pretrained = load_pretrained("all-minilm-l6-v2", dtype="float32", scan_layers=scan_layers)
    assert pretrained.model.head_config.kind == "none"
    assert pretrained.model.config.scan_layers == scan_layers
    assert ("layers" in pretrained.params["backbone"]) == scan_layers
    hidden, pooler, mean = _minilm_outputs(pretrained, minilm_ref)
    mask = minilm_ref["attention_mask"][..., None]
    np.testing.assert_allclose(hidden * mask, minilm_ref["last_hidden_state"] * mask, rtol=0,
                               atol=ABS_TOL)
    np.testing.assert_allclose(pooler, minilm_ref["pooler_output"], rtol=0, atol=ABS_TOL)
    np.testing.assert_allclose(mean, minilm_ref["mean_pooled"], rtol=0, atol=ABS_TOL)
