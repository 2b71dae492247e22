"""paraphrase-MiniLM-L3-v2 from its ONNX export: the same hidden states as the ONNX model run by
onnxruntime, and sentence embeddings that put paraphrases closer than unrelated sentences."""

import numpy as np
import pytest

from ftjax import assets
from ftjax.io import load_pretrained
from ftjax.io.loading import CheckpointError
from ftjax.io.onnx_bert import read_onnx_bert

NAME = "paraphrase-minilm-l3-v2"
PAIRS = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("The stock market fell sharply today.", "Shares dropped steeply in today's trading."),
    ("She is learning to play the violin.", "She takes violin lessons."),
    ("The train to Paris was delayed by an hour.", "Our Paris train arrived an hour late."),
    ("He cooked pasta for dinner.", "He made spaghetti for his evening meal."),
]


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained(NAME, dtype="float32")


def _batch(tokenizer, texts):
    rows = [tokenizer.encode(t) for t in texts]
    length = max(len(r) for r in rows)
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def _embed(minilm, ids, mask):
    out = minilm.model.apply({"params": minilm.params}, ids.astype(np.int32),
                             attention_mask=mask.astype(np.int32))
    hidden = np.asarray(out.hidden)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return hidden, pooled


def test_hidden_states_match_onnxruntime(minilm):
    ort = pytest.importorskip("onnxruntime", reason="runs the ONNX model for the parity check")
    config = minilm.model.config
    assert (config.num_layers, config.hidden_size, config.num_heads, config.add_pooler) == (
        3, 384, 12, False)
    ids, mask = _batch(minilm.tokenizer, [a for a, _ in PAIRS])
    session = ort.InferenceSession(str(assets.resolve(NAME)))
    names = [o.name for o in session.get_outputs()]
    theirs = dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask})))
    hidden, pooled = _embed(minilm, ids, mask)
    real = mask.astype(bool)  # padded positions are free to differ
    np.testing.assert_allclose(hidden[real], theirs["onnx::Shape_422"][real], atol=2e-5)
    np.testing.assert_allclose(pooled, theirs["461"], atol=2e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(minilm):
    ids, mask = _batch(minilm.tokenizer, [t for pair in PAIRS for t in pair])
    _, pooled = _embed(minilm, ids, mask)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    similarity = unit @ unit.T
    n = len(PAIRS)
    paired = [similarity[2 * i, 2 * i + 1] for i in range(n)]
    unrelated = [similarity[2 * i, 2 * j + 1] for i in range(n) for j in range(n) if i != j]
    # Every paraphrase pair is closer than every unrelated pair of its first sentence.
    for i in range(n):
        assert paired[i] > max(similarity[2 * i, 2 * j + 1] for j in range(n) if j != i)
    assert np.mean(paired) > np.mean(unrelated) + 0.3


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        read_onnx_bert(bad)
