"""A store of adapters for one base (`ftjax adapters list / add / remove`) and serving many
adapters at once (`ftjax generate --adapter NAME=DIR ... / --adapter-store`): each prompt
decodes with its own adapter, in one batch, exactly as it does with that adapter alone."""

import re

import jax
import pytest

from ftjax.cli import main
from ftjax.generate import complete
from ftjax.generate.sampling import SamplingConfig
from ftjax.io import load_pretrained
from ftjax.io.adapter import load_adapter, load_adapters, save_adapter
from ftjax.peft import PEFT_LEAVES, add_peft

PROMPTS = {"a": "the film was good and", "b": "the film was bad", "c": "good good"}


def _save(base, method, settings, seed, out):
    model, params = add_peft(base.model, base.params, method, settings, jax.random.key(seed))
    pattern = PEFT_LEAVES[method]
    # Perturbed: a fresh adapter is (nearly) the identity.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.5 * jax.random.normal(jax.random.key(seed + 100), x.shape)
        if _matches(path, pattern) else x, params)
    mask = jax.tree_util.tree_map_with_path(lambda path, _: _matches(path, pattern), params)
    save_adapter(out, model, params, mask, base_name="tiny", method=method)
    return out


def _matches(path, pattern):
    return re.fullmatch(pattern, "/".join(str(k.key) for k in path)) is not None


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = load_pretrained(tiny_llama_dir, dtype="float32")
    return {name: _save(base, "lora", {"rank": 3, "alpha": 6.0}, seed, root / name)
            for seed, name in enumerate(PROMPTS)}


def _alone(tiny_llama_dir, directory, prompt, **kw):
    base = load_pretrained(tiny_llama_dir, dtype="float32")
    model, params = load_adapter(directory, base)
    texts, _ = complete(model, params, base.tokenizer, [prompt], max_new_tokens=6,
                        sampling=SamplingConfig(greedy=True), **kw)
    return texts[0]


def _generate(tiny_llama_dir, capsys, *args):
    capsys.readouterr()
    code = main(["generate", "--model", str(tiny_llama_dir), "--greedy", "--max-new-tokens",
                 "6", "--dtype", "float32", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.mark.parametrize("beams", [1, 2])
def test_a_mixed_batch_generates_what_each_adapter_generates_alone(tiny_llama_dir, adapters,
                                                                    capsys, beams):
    order = ["b", "a", "c", "b"]
    args = [f"--adapter={n}={adapters[n]}" for n in adapters]
    args += [f"--prompt={n}={PROMPTS[n]}" for n in order] + ["--num-beams", str(beams)]
    code, lines, err = _generate(tiny_llama_dir, capsys, *args)
    assert code == 0, err
    expected = [_alone(tiny_llama_dir, adapters[n], PROMPTS[n], num_beams=beams) for n in order]
    assert lines == expected
    assert len(set(expected[:3])) > 1  # the adapters differ


def test_the_store_commands_and_serving_a_store(tiny_llama_dir, tiny_bert_dir, adapters,
                                                tmp_path, capsys):
    store = tmp_path / "store"
    for name in ("a", "b"):
        assert main(["adapters", "add", str(store), name, str(adapters[name])]) == 0
    assert main(["adapters", "add", str(store), "a", str(adapters["c"])]) == 2
    assert "already holds an adapter 'a'" in capsys.readouterr().err
    bert = load_pretrained(tiny_bert_dir, dtype="float32")
    other = _save(bert, "lora", {"rank": 2}, 9, tmp_path / "bert_adapter")
    assert main(["adapters", "add", str(store), "x", str(other)]) == 2
    assert "another shape fingerprint" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["adapters", "list", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "2 adapters" in listing and "lora" in listing
    code, lines, err = _generate(tiny_llama_dir, capsys, "--adapter-store", str(store),
                                 f"--prompt=a={PROMPTS['a']}", f"--prompt=b={PROMPTS['b']}")
    assert code == 0, err
    assert lines == [_alone(tiny_llama_dir, adapters[n], PROMPTS[n]) for n in "ab"]
    code, _, err = _generate(tiny_llama_dir, capsys, "--adapter-store", str(store),
                             "--prompt=z=hello")
    assert code == 2 and "NAME=TEXT, NAME one of a, b" in err
    assert main(["adapters", "remove", str(store), "a"]) == 0
    assert main(["adapters", "remove", str(store), "a"]) == 2
    assert "no adapter 'a'" in capsys.readouterr().err


def test_adapters_of_other_settings_are_not_served_together(tiny_llama_dir, adapters,
                                                              tmp_path):
    base = load_pretrained(tiny_llama_dir, dtype="float32")
    rank5 = _save(base, "lora", {"rank": 5, "alpha": 6.0}, 4, tmp_path / "rank5")
    with pytest.raises(ValueError, match="method settings differ"):
        load_adapters({"a": adapters["a"], "r": rank5}, base)
