"""Invariants of ftjax.generate on tiny random models (no checkpoints needed).

Compiles dominate the run time: tests share a few (batch, bucket, sampler) shapes on purpose.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import models as tok_models
from tokenizers import pre_tokenizers

import ftjax
from ftjax import cli
from ftjax.generate import (
    SamplingConfig,
    encode_prompts,
    generate,
    generate_ids,
    run_generation,
    sample,
)
from ftjax.generate.sampling import top_k_filter, top_p_filter
from ftjax.io import load_pretrained
from ftjax.io.tokenizer import Tokenizer
from ftjax.models import Model, init_params, preset
from ftjax.models.layout import to_layout
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment

EOS = 2
# Three rows of different lengths (ids >= 3: never pad/bos/eos).
PROMPTS = [[5, 17, 33], [40, 8, 21, 9, 60, 71, 12], [90, 3, 44, 44, 7, 81, 26, 52, 11, 64, 30, 15]]
GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(scope="module")
def tiny():
    cfg = preset("tiny-llama")
    model = Model(cfg)
    return model, init_params(model, jax.random.key(0))


@pytest.fixture(scope="module")
def tiny_scanned(tiny):
    model, params = tiny
    cfg = preset("tiny-llama", scan_layers=True)
    return Model(cfg), to_layout(params, scan_layers=True)


def _full_forward_greedy(model, params, prompt, n, *, tie_tol=1e-4, against=None):
    """Greedy by re-running the whole forward pass on the growing sequence (no cache).

    With `against` (tokens from the cached decoder), follows those tokens and checks each is the
    argmax up to `tie_tol` (an exact tie may break either way); returns the reference tokens.
    """
    length = 64  # fixed right-padded buffer: one compile for every step
    forward = jax.jit(lambda ids, mask: model.apply({"params": params}, ids,
                                                    attention_mask=mask).logits)
    seq, out = list(prompt), []
    for t in range(n):
        ids = np.zeros((1, length), np.int32)
        mask = np.zeros((1, length), np.int32)
        ids[0, :len(seq)], mask[0, :len(seq)] = seq, 1
        logits = np.asarray(forward(ids, mask))[0, len(seq) - 1]
        best = int(np.argmax(logits))
        if against is not None:
            assert logits[against[t]] >= logits[best] - tie_tol, (t, against[t], best)
            best = against[t]
        out.append(best)
        seq.append(best)
    return out


@pytest.mark.parametrize("scanned", [False, True], ids=["per_layer", "scan_layers"])
def test_cached_greedy_equals_full_forward_greedy(tiny, tiny_scanned, scanned):
    model, params = tiny_scanned if scanned else tiny
    got = generate_ids(model, params, PROMPTS, max_new_tokens=10, sampling=GREEDY, eos_ids=[])
    assert [len(row) for row in got] == [10, 10, 10]
    for prompt, row in zip(PROMPTS, got):
        _full_forward_greedy(model, params, prompt, 10, against=row)


def test_left_padding_and_batch_do_not_change_a_row(tiny):
    model, params = tiny
    # The 40-token row moves the batch to a 64-column prompt bucket and a 128-slot cache, so the
    # short rows carry twice the padding they have alone (32-column bucket, 64-slot cache).
    long_row = list(range(3, 43))
    batched = generate_ids(model, params, PROMPTS + [long_row], max_new_tokens=8,
                           sampling=GREEDY, eos_ids=[], max_length=128)
    for prompt, row in zip(PROMPTS, batched):
        alone = generate_ids(model, params, [prompt], max_new_tokens=8, sampling=GREEDY, eos_ids=[])
        assert alone == [row]


def test_stops_at_eos_excluding_it_and_exits_early(tiny):
    model, params = tiny
    reference = generate_ids(model, params, PROMPTS, max_new_tokens=10, sampling=GREEDY, eos_ids=[])
    stop = reference[1][3]  # make row 1's 4th greedy token the EOS
    got = generate_ids(model, params, PROMPTS, max_new_tokens=10, sampling=GREEDY, eos_ids=[stop])
    for ref, row in zip(reference, got):
        expected = ref[:ref.index(stop)] if stop in ref else ref
        assert row == expected
    assert len(got[1]) == 3

    # A processor forces EOS at a different step per row; the loop ends after the last one.
    stop_at = jnp.array([1, 4, 6])

    def force_eos(logits, context):
        now = (context.step >= stop_at)[:, None] & (jnp.arange(logits.shape[-1]) == EOS)
        return jnp.where(now, 1e9, logits)

    result = run_generation(model, params, PROMPTS, max_new_tokens=30, eos_ids=[EOS],
                            sampling=SamplingConfig(greedy=True, processors=(force_eos,)))
    assert [len(row) for row in result.token_ids] == [1, 4, 6]
    assert result.decode_steps == 6  # first token comes from prefill; steps 1..6, not 1..29


def test_rows_that_start_with_eos_return_nothing(tiny):
    model, params = tiny
    firsts = [row[0] for row in generate_ids(model, params, PROMPTS, max_new_tokens=1,
                                             sampling=GREEDY, eos_ids=[])]
    result = run_generation(model, params, PROMPTS, max_new_tokens=5, sampling=GREEDY,
                            eos_ids=firsts)
    assert result.token_ids == [[], [], []] and result.decode_steps == 0


def test_top_k_1_and_tiny_top_p_equal_greedy():
    # At the sampler level: the decode loop calls the same Sampler, and every extra sampler kind
    # at the decode level costs a compile. The temperature test covers the wiring.
    logits = jax.random.normal(jax.random.key(3), (8, 97))
    keys = jax.random.split(jax.random.key(4), 50)
    argmax = np.asarray(jnp.argmax(logits, -1))
    for config in (SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=1.5,
                                                                            top_p=1e-6)):
        drawn = jax.jit(jax.vmap(lambda k, c=config: sample(logits, k, c)))(keys)  # (50, 8)
        assert (np.asarray(drawn) == argmax).all(), config
    assert (np.asarray(sample(logits, keys[0], GREEDY)) == argmax).all()
    assert SamplingConfig(temperature=0.0).is_greedy


def test_temperature_sampling_is_reproducible_per_seed(tiny):
    model, params = tiny

    def run(seed):
        return generate_ids(model, params, PROMPTS, max_new_tokens=16, eos_ids=[],
                            sampling=SamplingConfig(temperature=2.0, seed=seed))

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert all(0 <= t < model.config.vocab_size for row in first for t in row)


def test_sampled_tokens_lie_in_the_top_k_and_nucleus_sets():
    logits = jax.random.normal(jax.random.key(3), (8, 97)) * 3
    keys = jax.random.split(jax.random.key(4), 200)
    top5 = np.asarray(jax.lax.top_k(logits, 5)[1])
    config = SamplingConfig(temperature=3.0, top_k=5)
    drawn = np.asarray(jax.jit(jax.vmap(lambda k: sample(logits, k, config)))(keys))  # (200, 8)
    for row in range(8):
        assert set(drawn[:, row]) <= set(top5[row])
        assert len(set(drawn[:, row])) > 1  # it does sample, not just argmax

    # Nucleus: the kept set is the shortest prefix of sorted tokens whose mass reaches top_p.
    probs = np.asarray(jax.nn.softmax(logits))
    kept = np.isfinite(np.asarray(jax.jit(top_p_filter)(logits, 0.7)))
    for row in range(8):
        order = np.argsort(-probs[row])
        need = int(np.searchsorted(np.cumsum(probs[row][order]), 0.7)) + 1
        assert set(np.flatnonzero(kept[row])) == set(order[:need])
    assert top_k_filter(logits, 0) is logits and top_k_filter(logits, 97) is logits
    kept_k = np.isfinite(np.asarray(jax.jit(top_k_filter, static_argnums=1)(logits, 5)))
    assert all(set(np.flatnonzero(kept_k[row])) == set(top5[row]) for row in range(8))


def test_second_request_of_similar_length_compiles_nothing(tiny):
    model, params = tiny
    compiles = []

    def on_event(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    generate_ids(model, params, [[5, 6, 7, 8], [9] * 9, [10] * 2], max_new_tokens=8,
                 sampling=SamplingConfig(temperature=0.7, seed=0), eos_ids=[EOS])
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        # Other lengths (same buckets), token budget, temperature, seed and EOS ids.
        generate_ids(model, params, [[11] * 6, [12] * 11, [13, 14, 15]], max_new_tokens=13,
                     sampling=SamplingConfig(temperature=0.9, seed=5), eos_ids=[EOS + 1])
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert compiles == []


def test_bad_requests_are_clear_errors(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_ids(model, params, [[5], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate_ids(model, params, [[5, 97]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, params, [[5]], max_new_tokens=0)
    with pytest.raises(ValueError, match="exceeds max_length=64"):
        generate_ids(model, params, [[5] * 40], max_new_tokens=30)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)


# -- text API and CLI ---------------------------------------------------------------------------

WORDS = "the cat sat on a mat dog ran far away user assistant system hello world".split()
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant{% endif %}")


@pytest.fixture(scope="module")
def tiny_pretrained(tiny):
    """A Pretrained-like bundle: the tiny model plus a word-level Tokenizer that adds BOS."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3 as in the tiny-llama config
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    backend = tokenizers.Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = Tokenizer(backend, name="tiny-words", chat_template=CHAT_TEMPLATE,
                          special_tokens={"bos_token": "<s>", "eos_token": "</s>",
                                          "pad_token": "<pad>", "unk_token": "<unk>"})
    model, params = tiny
    return types.SimpleNamespace(model=model, params=params, tokenizer=tokenizer, name="tiny")


def test_text_api_matches_token_api(tiny_pretrained):
    tok = tiny_pretrained.tokenizer
    texts = ["the cat sat", "a dog ran far away"]
    outputs = generate(tiny_pretrained, texts, greedy=True, max_new_tokens=6)
    ids = generate_ids(tiny_pretrained.model, tiny_pretrained.params,
                       [tok.encode(t) for t in texts], max_new_tokens=6, sampling=GREEDY,
                       eos_ids=[tok.eos_id])
    assert outputs == [tok.decode(row) for row in ids]
    single = generate(tiny_pretrained, "the cat sat", greedy=True, max_new_tokens=6)
    assert single == outputs[0]
    # The lazy top-level entry point is the same function.
    assert ftjax.generate(tiny_pretrained, "the cat sat", greedy=True, max_new_tokens=6) == single


def test_chat_prompts_use_the_template_without_a_second_bos(tiny_pretrained):
    tok = tiny_pretrained.tokenizer
    [ids] = encode_prompts(tok, ["hello world"], chat=True, system="the cat")
    words = "<s> system the cat </s> <s> user hello world </s> <s> assistant".split()
    assert ids == [tok.token_to_id(w) for w in words]
    [plain] = encode_prompts(tok, ["hello world"])
    assert plain == [tok.bos_id, tok.token_to_id("hello"), tok.token_to_id("world")]
    reply = generate(tiny_pretrained, "hello world", chat=True, system="the cat", greedy=True,
                     max_new_tokens=4)
    assert isinstance(reply, str)


def _cli(capsys, *argv):
    code = cli.main(["generate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv,message", [
    (["--model", "no-such-model", "--prompt", "hi"], "unknown model"),
    (["--model", "smollm2-135m-instruct", "--prompt", "  "], "empty"),
    (["--model", "smollm2-135m-instruct", "--prompt", "hi", "--max-new-tokens", "0"],
     "--max-new-tokens must be >= 1"),
    (["--model", "smollm2-135m-instruct", "--prompt", "hi", "--greedy", "--temperature", "0.5"],
     "--greedy cannot be combined with --temperature"),
    (["--model", "smollm2-135m-instruct", "--prompt", "hi", "--top-p", "1.5"], "--top-p"),
    (["--model", "smollm2-135m-instruct", "--prompt", "hi", "--system", "x"], "--system needs"),
])
def test_cli_rejects_bad_input_before_loading(capsys, monkeypatch, argv, message):
    from ftjax.commands import generate as command

    def never(*args):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(command, "_load_pretrained", never)
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and message in err and out == ""


def test_cli_prints_continuations_and_stats(capsys, monkeypatch, tmp_path, tiny_pretrained):
    from ftjax.commands import generate as command

    monkeypatch.setattr(command, "_load_pretrained", lambda name, dtype: tiny_pretrained)
    code, out, err = _cli(capsys, "--model", str(tmp_path), "--prompt", "the cat sat",
                          "--prompt", "a dog", "--greedy", "--max-new-tokens", "5", "--stats")
    expected = generate(tiny_pretrained, ["the cat sat", "a dog"], greedy=True, max_new_tokens=5)
    assert code == 0 and out.splitlines() == expected
    for label in ("load", "compile+warmup", "prefill", "decode rate"):
        assert label in err


def test_an_experiment_generates_with_its_own_weights(tiny_config_file, tiny_llama_dir):
    """build_experiment hands the loaded weights to the train state: `generate(exp)` uses the
    state's params (here scanned top_layers, whose stacks the state holds split in two), and
    the emptied Pretrained says where they went."""
    cfg = load_config(tiny_config_file, [
        f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
        "task.max_length=24", "method=top_layers", "method_args.top_k=1",
        "model.scan_layers=True"])
    exp = build_experiment(cfg)
    assert exp.pretrained.params is None
    with pytest.raises(TypeError, match="moved into a training state"):
        generate(exp.pretrained, "hello", max_new_tokens=2, greedy=True)
    same_weights = load_pretrained(tiny_llama_dir, dtype="float32", scan_layers=True)
    ours, _ = generate(exp, ["hello", "a b c"], max_new_tokens=5, greedy=True)
    assert ours == generate(same_weights, ["hello", "a b c"], max_new_tokens=5, greedy=True)[0]
