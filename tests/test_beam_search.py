"""Beam search (ftjax.generate.beam) on tiny random Llamas: greedy at one beam, the exhaustive
optimum with enough beams, EOS and padding, and transformers' beam search on the same weights.

Compiles dominate: the tests share a few (batch, beams) shapes.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax import cli
from ftjax.generate import SamplingConfig, beam_search, generate, generate_ids
from ftjax.generate.beam import _beam_search
from ftjax.io import load_pretrained, save_hf
from ftjax.models import Model, init_params, preset

PROMPTS = [[5, 17, 33], [40, 8, 21, 9, 60, 71, 12], [90, 3, 44, 44, 7, 81, 26, 52, 11, 64, 30, 15]]
GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(scope="module")
def tiny():
    model = Model(preset("tiny-llama"))
    return model, init_params(model, jax.random.key(0))


def sequence_logprobs(model, params, prompt, continuations):
    """(R, L) log p of each continuation's tokens after `prompt`, by full forward passes."""
    rows = np.asarray([list(prompt) + list(c) for c in continuations], np.int32)
    logits = model.apply({"params": params}, jnp.asarray(rows),
                         attention_mask=jnp.ones_like(rows)).logits
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1))
    L, P = rows.shape[1] - len(prompt), len(prompt)
    positions = np.arange(P - 1, P - 1 + L)
    return np.take_along_axis(logp[:, positions], rows[:, P:, None], -1)[..., 0]


def test_one_beam_is_greedy(tiny):
    model, params = tiny
    beams = beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=1, eos_ids=[])
    assert beams.generation.token_ids == generate_ids(model, params, PROMPTS, max_new_tokens=8,
                                                      sampling=GREEDY, eos_ids=[])


def test_beams_score_at_least_greedy_and_padding_changes_no_row(tiny):
    model, params = tiny
    greedy = generate_ids(model, params, PROMPTS, max_new_tokens=8, sampling=GREEDY, eos_ids=[])
    result = beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=4, eos_ids=[])
    for prompt, g, (best, score), beams in zip(PROMPTS, greedy, [r[0] for r in result.beams],
                                               result.beams):
        ours, theirs = sequence_logprobs(model, params, prompt, [best, g]).sum(-1)
        assert ours >= theirs - 1e-5
        # The reported score is the length-penalised sum (here all of length 8).
        np.testing.assert_allclose(score, ours / 8, rtol=1e-4, atol=1e-5)
        assert [s for _, s in beams] == sorted((s for _, s in beams), reverse=True)
        assert len(beams) == 4 and len({tuple(b) for b, _ in beams}) == 4  # distinct beams
    # Left padding to the longest prompt: a row's beams are those it gets alone.
    for prompt, row in zip(PROMPTS, result.beams):
        alone = beam_search(model, params, [prompt], max_new_tokens=8, num_beams=4, eos_ids=[])
        assert [b for b, _ in alone.beams[0]] == [b for b, _ in row]
        np.testing.assert_allclose([s for _, s in alone.beams[0]], [s for _, s in row],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length_penalty", [1.0, -1.0, 2.0])
def test_enough_beams_find_the_exhaustive_optimum(length_penalty):
    """V = 6, L = 3: with V ** (L - 1) = 36 beams nothing is dropped before the last step, so the
    best beam is the best of all hypotheses (each continuation cut after its first EOS)."""
    V, L, eos = 6, 3, 2
    model = Model(preset("tiny-llama", vocab_size=V))
    params = init_params(model, jax.random.key(1))
    prompts = [[1, 4, 5, 3], [1, 3]]
    result = beam_search(model, params, prompts, max_new_tokens=L, num_beams=V ** (L - 1),
                         eos_ids=[eos], length_penalty=length_penalty)
    for prompt, beams in zip(prompts, result.beams):
        every = list(itertools.product(range(V), repeat=L))
        logp = sequence_logprobs(model, params, prompt, every)
        hypotheses = {}
        for seq, lp in zip(every, logp):
            n = seq.index(eos) + 1 if eos in seq else L
            hypotheses[seq[:n]] = lp[:n].sum() / n ** length_penalty
        best = max(hypotheses, key=hypotheses.get)
        got, score = beams[0]
        expected = list(best[:-1]) if best[-1] == eos else list(best)
        assert got == expected, (length_penalty, got, best, score, hypotheses[best])
        np.testing.assert_allclose(score, hypotheses[best], rtol=1e-4, atol=1e-5)


def test_finished_beams_pad_and_the_loop_stops_when_all_are_done(tiny):
    model, params = tiny
    free = beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=4, eos_ids=[])
    stop = free.generation.token_ids[0][2]
    ids = np.zeros((3, 32), np.int32)
    mask = np.zeros((3, 32), np.int32)
    for r, p in enumerate(PROMPTS):
        ids[r, 32 - len(p):], mask[r, 32 - len(p):] = p, 1
    tokens, scores, lengths, steps = _beam_search(
        model, params, jnp.asarray(ids), jnp.asarray(mask), jnp.int32(8),
        jnp.asarray([stop], jnp.int32), jnp.int32(0), jnp.float32(1.0), cache_length=64,
        num_beams=4)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    finished = 0
    for row, n in zip(tokens.reshape(12, -1), lengths.reshape(12)):
        if stop in row[:n].tolist():
            finished += 1
            assert row[n - 1] == stop and stop not in row[:n - 1].tolist()
            assert (row[n:] == 0).all()  # a finished beam grows no further: pad
        else:
            assert n == 8
    assert finished >= 1
    result = beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=4, eos_ids=[stop])
    assert all(stop not in b for row in result.beams for b, _ in row)  # EOS excluded
    # Every token ends a beam: all beams finish at the first step and the loop exits.
    everything = beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=4,
                             eos_ids=list(range(model.config.vocab_size)))
    assert everything.generation.decode_steps == 1
    assert all(b == [] for row in everything.beams for b, _ in row)


def test_matches_transformers_beam_search(tmp_path):
    """Same weights in transformers: the same beams and scores, without EOS and with EOS ids
    that end some beams early, for length penalties favouring long and short output.
    transformers wants hidden = heads x head_dim, which the tiny-llama preset (31) is not."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = Model(preset("tiny-llama", hidden_size=36, head_dim=6))
    params = init_params(model, jax.random.key(2))
    save_hf(model.config, params, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    hf.eval()
    # EOS ids: a token of a free run's best beam, of another beam, and none.
    cases = [([1, 17, 33, 5], 96, 1.0), ([1, 17, 33, 5], 25, 1.0), ([1, 17, 33, 5], 25, -1.0),
             ([1, 40, 8, 21, 9, 60], 17, 2.0), ([1, 40, 8, 21, 9, 60], None, 1.0)]
    for prompt, eos, length_penalty in cases:
        result = beam_search(model, params, [prompt], max_new_tokens=6, num_beams=3,
                             eos_ids=[] if eos is None else [eos], length_penalty=length_penalty)
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), num_beams=3, num_return_sequences=3,
                              do_sample=False, max_new_tokens=6, length_penalty=length_penalty,
                              eos_token_id=eos, pad_token_id=0, output_scores=True,
                              return_dict_in_generate=True)
        theirs = []
        for row in out.sequences[:, len(prompt):].tolist():  # transformers pads with EOS
            theirs.append(row[:row.index(eos)] if eos in row else row)
        what = (prompt, eos, length_penalty)
        assert [b for b, _ in result.beams[0]] == theirs, what
        np.testing.assert_allclose([s for _, s in result.beams[0]], out.sequences_scores.numpy(),
                                   rtol=1e-4, atol=1e-5, err_msg=str(what))


def test_text_api_and_cli(capsys, monkeypatch, tiny_llama_dir):
    pretrained = load_pretrained(tiny_llama_dir, dtype="float32")
    tok = pretrained.tokenizer
    texts = ["good movie", "bad plot"]
    out = generate(pretrained, texts, num_beams=3, max_new_tokens=5)
    ids = beam_search(pretrained.model, pretrained.params, [tok.encode(t) for t in texts],
                      max_new_tokens=5, num_beams=3, eos_ids=[tok.eos_id])
    assert out == [tok.decode(r, skip_special_tokens=True) for r in ids.generation.token_ids]
    assert generate(pretrained, texts, greedy=True, max_new_tokens=5) == generate(
        pretrained, texts, num_beams=1, greedy=True, max_new_tokens=5)

    from ftjax.commands import generate as command

    monkeypatch.setattr(command, "_load_pretrained", lambda name, dtype: pretrained)
    code = cli.main(["generate", "--model", str(tiny_llama_dir), "--prompt", texts[0],
                     "--prompt", texts[1], "--num-beams", "3", "--max-new-tokens", "5"])
    assert code == 0 and capsys.readouterr().out.splitlines() == out
    code = cli.main(["generate", "--model", str(tiny_llama_dir), "--prompt", "x",
                     "--num-beams", "3", "--temperature", "0.5"])
    assert code == 2 and "--num-beams" in capsys.readouterr().err


def test_other_budget_eos_and_penalty_compile_nothing(tiny):
    model, params = tiny
    beam_search(model, params, PROMPTS, max_new_tokens=8, num_beams=4, eos_ids=[])
    compiles = []

    def on_event(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        beam_search(model, params, [[7, 8], [9] * 5, [10] * 11], max_new_tokens=11, num_beams=4,
                    eos_ids=[5], length_penalty=0.3)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert compiles == []
