"""Translation with a decoder: prompt / target documents (the loss on the target only), packed
documents that cannot see each other, splits held out by group, the Bible asset's cleaning,
and a short real run of experiments/translate_es_en_smollm2.py scored by generation."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax import assets
from ftjax.assets.bible import clean_verse
from ftjax.data import CausalLM, make_eval_batches
from ftjax.data.features import IndexedRecord
from ftjax.data.prompting import PromptTemplate
from ftjax.data.splitting import grouped_split
from ftjax.generate.evaluation import GenerationEval
from ftjax.io import load_pretrained
from ftjax.train.config import load_config
from ftjax.train.loop import train

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "translate_es_en_smollm2.py"
TEMPLATE = PromptTemplate("Translate into English:\n{text}", chat=True, system="Translate.")
PAIRS = [
    {"prompt": "EN el principio crió Dios los cielos y la tierra.",
     "text": "In the beginning God created the heaven and the earth."},
    {"prompt": "Y dijo Dios: Sea la luz: y fué la luz.",
     "text": "And God said, Let there be light: and there was light."},
    {"prompt": "Y vió Dios que la luz era buena.",
     "text": "And God saw the light, that it was good."},
]


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("smollm2-135m-instruct")


def _task(**kw):
    return CausalLM("text", 192, prompt_key="prompt", prompt=TEMPLATE, **kw)


def test_only_target_tokens_carry_loss_token_by_token(smollm2):
    tokenizer = smollm2.tokenizer
    featurizer = _task(packing=False).featurizer(tokenizer)
    record = PAIRS[0]
    doc = featurizer.document(IndexedRecord(0, 0, record))
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Translate."},
         {"role": "user", "content": "Translate into English:\n" + record["prompt"]}],
        add_generation_prompt=True)
    prompt = featurizer.prompt_ids(record)
    # The prompt is the chat rendering, the assistant header included, and the document is
    # that prompt, the target, and <|im_end|>.
    assert prompt == tokenizer.encode(rendered, add_special_tokens=False)
    assert doc["input_ids"].tolist() == (
        prompt + tokenizer.encode(record["text"], add_special_tokens=False) + [tokenizer.eos_id])
    trained = doc["input_ids"][1:][doc["loss_mask"][:-1] > 0]
    assert tokenizer.decode(trained, skip_special_tokens=False) == record["text"] + "<|im_end|>"
    assert doc["loss_mask"][: len(prompt) - 1].sum() == 0


def test_packed_translation_documents_do_not_see_each_other(smollm2):
    """Logits of each document in a packed row equal those of the document alone."""
    model, params, tokenizer = smollm2.model, smollm2.params, smollm2.tokenizer
    batch = next(iter(make_eval_batches(PAIRS, _task(packing=True), tokenizer, batch_size=1)))
    segments = batch["segment_ids"][0]
    assert segments.max() == len(PAIRS)  # all three in one row

    apply = jax.jit(model.apply)  # op-by-op dispatch of a whole model is slow

    def logits(ids, **kw):
        return apply({"params": params}, jnp.asarray(ids), **kw).logits

    packed = logits(batch["input_ids"], attention_mask=jnp.asarray(batch["attention_mask"]),
                    segment_ids=jnp.asarray(batch["segment_ids"]),
                    positions=jnp.asarray(batch["positions"]))[0]
    for segment in range(1, len(PAIRS) + 1):
        where = np.flatnonzero(segments == segment)
        alone = logits(batch["input_ids"][:, where])[0]
        np.testing.assert_allclose(np.asarray(packed[where]), np.asarray(alone),
                                   atol=2e-3, rtol=2e-3)


def test_grouped_split_keeps_each_group_in_one_split():
    groups = [f"book{i % 13}" for i in range(400)]
    parts = grouped_split(groups, (0.6, 0.2, 0.2), seed=3)
    assert sorted(i for part in parts for i in part) == list(range(400))
    held = [{groups[i] for i in part} for part in parts]
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    assert [len(h) for h in held] == [8, 3, 2]  # fractions of the 13 groups
    assert parts == grouped_split(groups, (0.6, 0.2, 0.2), seed=3)  # seeded
    assert parts != grouped_split(groups, (0.6, 0.2, 0.2), seed=4)


def test_clean_verse_drops_notes_and_keeps_words_apart():
    spanish = ('<w lemma="strong:H1961">Y FUÉ</w><transChange type="added">que</transChange>'
               '<w lemma="strong:H7970">á los treinta</w> <w>años</w>, en el '
               '<transChange type="added">mes</transChange><w>cuarto</w>.')
    assert clean_verse(spanish) == "Y FUÉ que á los treinta años, en el mes cuarto."
    english = ('\u00b6 <title>A Psalm of David.</title> <w>LORD</w>, how are they '
               '<transChange type="added">increased</transChange><note n="a">Or, many</note>!')
    assert clean_verse(english) == "A Psalm of David. LORD, how are they increased!"


def test_short_real_run_scores_bleu_at_start_and_end(tmp_path):
    """A few steps of the experiment on the real Bible pairs: BLEU and chrF of greedy
    generations reach metrics.jsonl (step 0: zero-shot; the last step: fine-tuned), the final
    report, and the generations files; the held-out books are never trained on."""
    # Scanned layers: one compiled block instead of 30 (compilation is most of this test's
    # time); the layout computes the same model (tests/test_models.py).
    cfg = load_config(EXPERIMENT, [
        "steps=2", "eval_every=2", "checkpoint_every=2", "log_every=1", "hooks=()",
        "eval_splits=('validation',)", "model.scan_layers=True",
        "sources.bible.max_eval_examples=3", "sources.bible.max_train_examples=64"])
    result = train(cfg, tmp_path, quiet=True,
                   hooks=[GenerationEval(max_new_tokens=8, batch_size=4)])
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    scored = [(line["step"], line["split"]) for line in lines if "bleu" in line]
    # Validation at step 0 (zero-shot) and 2; the test split once, in the final report.
    assert scored == [(0, "validation"), (2, "validation")]
    for split in ("validation", "test"):
        metrics = result.eval[split]
        assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100
        assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]), rel=1e-6)
        # The final report scores the kept checkpoint (step 0 or 2, by validation BLEU).
        kept = result.best_step if result.best_step is not None else 2
        generated = [json.loads(line) for line in open(tmp_path / "generations" /
                                                       f"{split}-{kept}.jsonl")]
        assert len(generated) == 3 and all(g["reference"] for g in generated)
        assert all(g["prompt"].startswith("<|im_start|>system") for g in generated)
    sources = result.experiment.sources[0].splits
    books = [{r["book"] for r in sources[role]} for role in ("train", "validation", "test")]
    assert not (books[0] & books[1] or books[0] & books[2])
