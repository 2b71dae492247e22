"""Back-translation: texts go forward and back through the library's own decoding, labels stay,
and the command writes the records as a data source."""

import json

import jax.numpy as jnp  # noqa: F401  (jax initialized before the models load)
import pytest

from ftjax.cli import main
from ftjax.data.prompting import PromptTemplate
from ftjax.generate.api import decode_prompts
from ftjax.generate.back_translation import Translator, back_translate
from ftjax.io.pretrained import load_pretrained


@pytest.fixture(scope="module")
def translators(tiny_llama_dir):
    pretrained = load_pretrained(str(tiny_llama_dir))
    make = lambda template: Translator(pretrained.model, pretrained.params,  # noqa: E731
                                       pretrained.tokenizer, PromptTemplate(template))
    return pretrained, make("to pivot {text}"), make("back {text}")


def test_texts_go_forward_then_back_and_labels_stay(translators):
    pretrained, forward, backward = translators
    records = [{"text": "the film was good", "label": 1}, {"text": "a dull story", "label": 0},
               {"label": 1}]
    out, kept = back_translate(records, forward, backward, max_new_tokens=5, batch_size=2)

    def by_hand(template, texts):
        ids = PromptTemplate(template).encode(pretrained.tokenizer)
        prompts = [[*ids.prefix, *pretrained.tokenizer.encode(ids.text_lead + t,
                                                              add_special_tokens=False),
                    *ids.suffix] for t in texts]
        answers = decode_prompts(pretrained.model, pretrained.params, pretrained.tokenizer,
                                 prompts, max_new_tokens=5)
        return [a.split("\n")[0].strip() for a in answers]

    back = by_hand("back {text}", by_hand("to pivot {text}", [r["text"] for r in records[:2]]))
    assert [r.get("text") for r in out] == [b or r["text"] for b, r in
                                            zip(back, records[:2])] + [None]
    assert [r["label"] for r in out] == [1, 0, 1] and kept == sum(not b for b in back)


def test_the_command_writes_a_source_of_the_translated_records(tiny_config_file, tiny_llama_dir,
                                                               tmp_path, capsys):
    out = tmp_path / "bt.jsonl"
    args = ["back-translate", str(tiny_config_file), "--out", str(out), "--forward",
            str(tiny_llama_dir), "--backward", str(tiny_llama_dir), "--limit", "3",
            "--max-new-tokens", "4"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all("label" in r and "text" in r for r in rows)
    assert main(args) == 2  # an existing file is refused
    assert "exists" in capsys.readouterr().err
