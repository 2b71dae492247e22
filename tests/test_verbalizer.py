"""Classification as instruction following: prompt templates, label words, the verbalizer head.

The invariant: a verbalizer head at initialization IS the LM's label-word logits after the
prompt (zero-shot), for a tied and an untied LM head; the methods then train it like any head.
"""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import make_tiny_tokenizer

from ftjax.data import DataError, PromptTemplate, SequenceClassification, TokenizerError
from ftjax.data.features import IndexedRecord, stack_rows
from ftjax.io import load_pretrained
from ftjax.models import HeadConfig
from ftjax.train.step import model_inputs

# Word-level tiny tokenizer: words are separated by spaces, so the label words carry one.
PROMPT = PromptTemplate("the film was {text} and it was")
WORDS = (" bad", " good")
TEXTS = ["a very dull plot", "great", "the actor and the cast were quite superb fun warm"]


@pytest.fixture(scope="module")
def tiny_tied_llama_dir(tmp_path_factory):
    from ftjax.io import save_hf
    from ftjax.models import Model, init_params, preset

    cfg = dataclasses.replace(preset("tiny-llama-tied"), bos_token_id=2, eos_token_id=3,
                              pad_token_id=0)
    params = init_params(Model(cfg), jax.random.key(1))
    out = tmp_path_factory.mktemp("tiny_tied_llama")
    save_hf(cfg, params, out, tokenizer=make_tiny_tokenizer())
    return out


def _task(max_length=16, **kw):
    return SequenceClassification("text", "label", num_labels=2, max_length=max_length,
                                  prompt=PROMPT, label_words=WORDS, **kw)


def _batch(task, tokenizer, texts=TEXTS):
    featurize = task.featurizer(tokenizer)
    return stack_rows([featurize(IndexedRecord(i, i, {"text": t, "label": i % 2}))
                       for i, t in enumerate(texts)])


def _logits(pretrained, batch):
    apply = jax.jit(pretrained.model.apply)
    out = apply({"params": pretrained.params}, batch["input_ids"],
                **model_inputs(batch, pretrained.model))
    return np.asarray(out.logits)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_verbalizer_at_init_equals_the_lm_label_word_logits(tied, tiny_llama_dir,
                                                           tiny_tied_llama_dir):
    path = tiny_tied_llama_dir if tied else tiny_llama_dir
    lm = load_pretrained(path)
    task = _task()
    ids = task.label_token_ids(lm.tokenizer)
    verbalizer = load_pretrained(path, head=HeadConfig("verbalizer", 2, "last"),
                                 label_tokens=task.label_token_ids)
    assert lm.model.config.tie_word_embeddings == tied
    batch = _batch(task, lm.tokenizer)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(TEXTS)  # right padding of different amounts
    lm_logits_BTV = _logits(lm, batch)
    zero_shot_BC = lm_logits_BTV[np.arange(len(TEXTS)), lengths - 1][:, list(ids)]
    np.testing.assert_allclose(_logits(verbalizer, batch), zero_shot_BC, rtol=1e-6, atol=1e-6)
    # A copy of the rows, not a view of the embedding: the backbone is untouched.
    for a, b in zip(jax.tree.leaves(lm.params["backbone"]),
                    jax.tree.leaves(verbalizer.params["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_verbalizer_init_is_deterministic_across_seeds(tiny_llama_dir):
    head = HeadConfig("verbalizer", 2, "last")
    a, b = (load_pretrained(tiny_llama_dir, head=head, rng_seed=seed,
                            label_tokens=_task().label_token_ids) for seed in (0, 7))
    for x, y in zip(jax.tree.leaves(a.params["head"]), jax.tree.leaves(b.params["head"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_prompt_rows_keep_the_prompt_and_cut_the_text():
    tokenizer = make_tiny_tokenizer()
    task = _task(max_length=12)
    prefix = tokenizer.encode("the film was", add_special_tokens=True)[:-1]  # [CLS] + words
    suffix = tokenizer.encode("and it was", add_special_tokens=False)
    long_text = " ".join(["very"] * 20)
    row = _batch(task, tokenizer, [long_text])
    ids = row["input_ids"][0].tolist()
    assert row["attention_mask"].sum() == 12
    assert ids[: len(prefix)] == prefix and ids[-len(suffix):] == suffix  # no [SEP]: answer next
    # Without label words the tokenizer's closing token ends the row as usual.
    plain = SequenceClassification("text", "label", num_labels=2, max_length=12, prompt=PROMPT)
    assert _batch(plain, tokenizer, [long_text])["input_ids"][0, -1] == tokenizer.sep_id


def test_multi_token_or_unknown_label_word_is_a_clear_error():
    tokenizer = make_tiny_tokenizer()
    task = SequenceClassification("text", "label", num_labels=2, max_length=16, prompt=PROMPT,
                                  label_words=(" bad", " good film"))
    with pytest.raises(TokenizerError, match=r"label word ' good film' is not a single token"):
        task.label_token_ids(tokenizer)
    with pytest.raises(TokenizerError, match=r"' good film'"):
        task.featurizer(tokenizer)  # a data pipeline fails before its first batch
    unknown = dataclasses.replace(task, label_words=(" bad", " splendid"))
    with pytest.raises(TokenizerError, match=r"' splendid' is unknown to the tokenizer"):
        unknown.label_token_ids(tokenizer)


def test_bad_templates_and_label_words_are_clear_errors():
    with pytest.raises(DataError, match=r"exactly once, found it 0 times"):
        PromptTemplate("no field here")
    with pytest.raises(DataError, match=r"system prompt applies only to chat"):
        PromptTemplate("{text}", system="be brief")
    with pytest.raises(DataError, match=r"3 label words .* num_labels=2"):
        _task().__class__("text", "label", 2, 16, prompt=PROMPT, label_words=(" a", " b", " c"))
    with pytest.raises(DataError, match=r"label words answer a prompt"):
        SequenceClassification("text", "label", 2, 16, label_words=WORDS)
    with pytest.raises(ValueError, match=r"pooling must be 'last'"):
        HeadConfig("verbalizer", 2, "mean")


def test_smollm2_chat_prompt_ends_where_the_label_word_is_one_token():
    """The paper task's real template: the chat turn ends with the assistant prompt, where
    'negative' / 'positive' are each one token, and the pieces encode as the whole string."""
    from ftjax.io.tokenizer import load_tokenizer
    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_task

    cfg = load_config("experiments/polarity_smollm2.py")
    task = build_task(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    ids = task.label_token_ids(tokenizer)
    assert [tokenizer.id_to_token(i) for i in ids] == list(cfg.task.label_words)
    sentences = ["The gorgeous , witty , seductive movie .", "it's a bore", "''Conan'' rules!"]
    rows = _batch(task, tokenizer, sentences)
    before, after = task.prompt.render(tokenizer)
    for row_ids, mask, sentence in zip(rows["input_ids"], rows["attention_mask"], sentences):
        real = row_ids[: int(mask.sum())].tolist()
        assert real == tokenizer.encode(before + sentence + after, add_special_tokens=False)
        assert tokenizer.decode(real, skip_special_tokens=False).endswith(
            "<|im_start|>assistant\n")


def test_methods_train_the_verbalizer_head_like_any_new_head(tiny_llama_dir, tiny_text_data,
                                                            tmp_path):
    """Through the config: a linear probe trains exactly the 2-row head, LoRA its adapters and
    the head (a verbalizer is a new task head, not the frozen pretrained LM head)."""
    from ftjax.optim import trainability
    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_experiment
    from ftjax.utils.paths import leaf_paths

    path = tmp_path / "verbalizer.py"
    path.write_text(f"""
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = {str(tiny_llama_dir)!r}
    c.data.source = "local"
    c.data.path = {tiny_text_data!r}
    c.head.kind = "verbalizer"
    c.head.pooling = "last"
    c.task.template = {PROMPT.template!r}
    c.task.label_words = {WORDS!r}
    c.task.max_length = 24
    return c
""")
    head = 31 * 2 + 2  # tiny-llama hidden size 31, two label words, a bias per label
    for method in ("linear_probe", "lora"):
        exp = build_experiment(load_config(path, [f"method={method}"]))
        mask = jax.tree.leaves(trainability.trainable_mask(exp.resolved))
        trained = [p for (p, _), m in zip(leaf_paths(exp.state.params), mask) if m]
        report = trainability.report(exp.state.params, exp.resolved)
        assert report["groups"]["head"]["trainable"] == head
        if method == "linear_probe":
            assert report["trainable"] == head
            assert sorted(trained) == ["head/classifier/bias", "head/classifier/kernel"]
        else:
            assert report["trainable"] > head
            assert all(p.startswith("head/") or "/lora_" in p for p in trained)
