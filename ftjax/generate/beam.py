"""Beam search with the KV cache: one jitted program (prefill + a `lax.while_loop`) per shape.

The B prompts are prefilled once; the cache is then repeated to B * K rows (K = num_beams, beam
k of prompt b in row b * K + k). Each step scores every candidate and keeps K per prompt:
  - a live beam extends by every token v: raw = sum of log-probs + log p(v), ranked by
    raw / length ** length_penalty with length = tokens generated so far including v;
  - a finished beam (it emitted an EOS id) is one candidate, itself, with its final score; it no
    longer grows and its later slots hold pad.
The cache rows are then reordered by each survivor's parent beam (a take along the batch axis)
and the chosen tokens run through the model. The loop ends when every beam of every prompt is
finished or max_new_tokens tokens exist. Scores follow the HF convention sum(log p) /
length ** length_penalty; here length counts the generated tokens INCLUDING the stopping EOS.
At step 0 only beam 0 is live (the others start at -inf), so the first K beams are distinct.

With num_beams = 1 this is greedy decoding. With num_beams >= V ** (L - 1) (V the vocabulary,
L = max_new_tokens) no hypothesis is ever dropped before the last step, so the result is the
exhaustive optimum of the score (tests/test_beam_search.py checks both).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.generate.decode import (
    Generation,
    _check_prompts,
    left_pad,
    plan_shapes,
    virtual_tokens,
)
from ftjax.models import Model, init_cache
from ftjax.peft.fold import fold_prefix


def _take_rows(cache: dict, rows):
    """The cache with its batch rows gathered by `rows` (k / v: axis 1, mask: axis 0)."""
    out = {}
    for name, value in cache.items():
        if name in ("k", "v"):
            out[name] = jnp.take(value, rows, axis=1)
        elif name == "mask":
            out[name] = jnp.take(value, rows, axis=0)
        else:
            out[name] = value
    return out


@functools.partial(jax.jit, static_argnames=("model", "cache_length", "num_beams"))
def _beam_search(model: Model, params, prompt_ids_BP, prompt_mask_BP, max_new_tokens,
                 eos_ids_E, pad_id, length_penalty, *, cache_length: int, num_beams: int):
    """Returns (tokens (B, K, N), scores (B, K) length-penalised, lengths (B, K), steps); beams
    are in no particular order (the caller sorts by score)."""
    B, P = prompt_ids_BP.shape
    K = num_beams
    virtual = virtual_tokens(model)
    cache = init_cache(model.config, B, cache_length)
    start = {"with_prompt": True} if virtual else {}
    out = model.apply({"params": params}, prompt_ids_BP, attention_mask=prompt_mask_BP,
                      cache=cache, **start)
    logp_BV = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)
    V = logp_BV.shape[-1]
    cache = _take_rows(out.cache, jnp.repeat(jnp.arange(B), K))
    logp_BKV = jnp.repeat(logp_BV[:, None], K, axis=1)
    N = cache_length - virtual - P - 1  # one slot spare: the last step's forward pass writes it
    tokens_BKN = jnp.full((B, K, N), pad_id, jnp.int32)
    raw_BK = jnp.full((B, K), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    length_BK = jnp.zeros((B, K), jnp.int32)
    done_BK = jnp.zeros((B, K), bool)
    penalty = jnp.asarray(length_penalty, jnp.float32)

    def keep_going(state):
        step, _, _, _, _, done_BK, _ = state
        return (step < max_new_tokens) & ~jnp.all(done_BK)

    def one_token(state):
        step, cache, tokens_BKN, raw_BK, length_BK, done_BK, logp_BKV = state
        extended_BKV = jnp.where(done_BK[..., None], -jnp.inf, raw_BK[..., None] + logp_BKV)
        new_length = (step + 1).astype(jnp.float32)
        ranked_live = (extended_BKV / new_length ** penalty).reshape(B, K * V)
        finished_score_BK = raw_BK / jnp.maximum(length_BK, 1).astype(jnp.float32) ** penalty
        ranked_done = jnp.where(done_BK, finished_score_BK, -jnp.inf)
        _, pick_BK = jax.lax.top_k(jnp.concatenate([ranked_live, ranked_done], -1), K)
        kept_BK = pick_BK >= K * V
        live_pick_BK = jnp.minimum(pick_BK, K * V - 1)
        parent_BK = jnp.where(kept_BK, pick_BK - K * V, live_pick_BK // V)
        token_BK = jnp.where(kept_BK, pad_id, live_pick_BK % V).astype(jnp.int32)
        live_raw_BK = jnp.take_along_axis(extended_BKV.reshape(B, K * V), live_pick_BK, -1)
        parent_raw_BK = jnp.take_along_axis(raw_BK, parent_BK, -1)
        raw_BK = jnp.where(kept_BK, parent_raw_BK, live_raw_BK)
        length_BK = jnp.where(kept_BK, jnp.take_along_axis(length_BK, parent_BK, -1), step + 1)
        done_BK = kept_BK | jnp.isin(token_BK, eos_ids_E)
        tokens_BKN = jnp.take_along_axis(tokens_BKN, parent_BK[..., None], axis=1)
        tokens_BKN = jax.lax.dynamic_update_slice(tokens_BKN, token_BK[..., None], (0, 0, step))
        rows = (jnp.arange(B)[:, None] * K + parent_BK).reshape(B * K)
        cache = _take_rows(cache, rows)
        feed = jnp.where(done_BK, pad_id, token_BK).reshape(B * K, 1)
        out = model.apply({"params": params}, feed, attention_mask=jnp.ones((B * K, 1), jnp.int32),
                          cache=cache)
        logp_BKV = jax.nn.log_softmax(out.logits[:, 0].astype(jnp.float32), -1).reshape(B, K, V)
        return step + 1, out.cache, tokens_BKN, raw_BK, length_BK, done_BK, logp_BKV

    steps, _, tokens_BKN, raw_BK, length_BK, _, _ = jax.lax.while_loop(
        keep_going, one_token,
        (jnp.int32(0), cache, tokens_BKN, raw_BK, length_BK, done_BK, logp_BKV))
    scores_BK = raw_BK / jnp.maximum(length_BK, 1).astype(jnp.float32) ** penalty
    return tokens_BKN, scores_BK, length_BK, steps


@dataclasses.dataclass
class BeamResult:
    """`Generation` plus every prompt's beams, best first: beams[b][i] = (tokens, score)
    (tokens with the stopping EOS excluded, score length-penalised)."""

    generation: Generation
    beams: list[list[tuple[list[int], float]]]


def beam_search(
    model: Model,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    max_length: int | None = None,
) -> BeamResult:
    """Beam search over each prompt (a list of token ids); `.generation.token_ids` holds each
    prompt's best continuation (EOS excluded), `.beams` all K with their scores.

    eos_ids / pad_id / max_length as in `generate_ids`. length_penalty > 0 favours longer
    sequences, < 0 shorter ones (score = sum log p / length ** length_penalty).
    """
    cfg = model.config
    _check_prompts(prompts, cfg.vocab_size)
    if int(num_beams) != num_beams or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams}")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
    if getattr(cfg, "prefix", None) is not None and cfg.prefix.projection:
        model, params = fold_prefix(model, params)
    longest = max(len(p) for p in prompts)
    max_length = cfg.max_position_embeddings if max_length is None else max_length
    virtual = virtual_tokens(model)
    if virtual + longest + max_new_tokens > max_length:
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) "
            f"exceeds max_length={max_length}; shorten the prompt, ask for fewer tokens or pass "
            f"a larger max_length")
    if eos_ids is None:
        eos_ids = [] if cfg.eos_token_id is None else [cfg.eos_token_id]
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0

    # One spare slot: the loop's last forward pass writes a token nobody reads.
    shapes = plan_shapes([len(p) for p in prompts], int(max_new_tokens) + 1, virtual)
    ids, mask = left_pad(prompts, shapes.prompt_length, pad_id)
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    start = time.perf_counter()
    tokens, scores, lengths, steps = jax.block_until_ready(_beam_search(
        model, params, jnp.asarray(ids), jnp.asarray(mask), jnp.int32(max_new_tokens), eos,
        jnp.int32(pad_id), jnp.float32(length_penalty), cache_length=shapes.cache_length,
        num_beams=int(num_beams)))
    seconds = time.perf_counter() - start
    tokens, scores, lengths = np.asarray(tokens), np.asarray(scores), np.asarray(lengths)
    stops = set(int(e) for e in eos_ids)
    beams = []
    for b in range(len(prompts)):
        row = []
        for k in np.argsort(-scores[b], kind="stable"):
            seq = tokens[b, k, :lengths[b, k]].tolist()
            cut = next((i for i, t in enumerate(seq) if t in stops), len(seq))
            row.append((seq[:cut], float(scores[b, k])))
        beams.append(row)
    generation = Generation(
        token_ids=[row[0][0] for row in beams], shapes=shapes,
        prompt_tokens=sum(len(p) for p in prompts), compile_seconds=0.0, prefill_seconds=0.0,
        decode_seconds=seconds, decode_steps=int(steps))
    return BeamResult(generation=generation, beams=beams)
