"""Beam search with the KV cache: one jitted program (prefill + a `lax.while_loop`) per shape.

The B prompts are prefilled once; the cache is then repeated to B * K rows (K = num_beams, beam
k of prompt b in row b * K + k). The algorithm is transformers' (`generate(num_beams=K,
do_sample=False)`), and tests/test_beam_search.py checks that both return the same beams:
  - K running beams per prompt, ranked by their sum of log-probs; each step takes the 2K best
    one-token extensions; those ending in an EOS id and ranked among the first K enter the bank,
    the K best that did not end stay running (so a finished beam never takes a running slot);
  - the bank keeps the K best finished hypotheses by score sum(log p) / length ** length_penalty,
    where length counts the generated tokens INCLUDING the EOS; at the last step (max_new_tokens)
    the running beams enter it too. A banked hypothesis no longer grows: its later slots are pad;
  - the running beams' cache rows are reordered by parent beam (a take along the batch axis) and
    their new tokens run through the model;
  - the loop stops at max_new_tokens or once every prompt's bank is full and no running beam can
    still beat its worst entry (the best reachable score: the best sum now over
    max_new_tokens ** length_penalty when length_penalty > 0, over the current length
    otherwise); a stop that changes no result.
At step 0 only beam 0 is live (the others start at -inf), so the first K beams are distinct.

Without EOS ids, num_beams = 1 is greedy decoding (with them a one-beam search may bank an EOS
and go on looking for a better ending, as transformers does). With num_beams >= V ** (L - 1)
(V the vocabulary, L = max_new_tokens) no hypothesis is dropped before the last step, so the
result is the exhaustive optimum of the score (tests/test_beam_search.py checks both).
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
    adapter_ids_of,
    left_pad,
    plan_shapes,
    prepare_request,
    row_adapters,
    virtual_tokens,
)
from ftjax.models import Model, init_cache
from ftjax.models.kv_cache import take_rows


@functools.partial(jax.jit, static_argnames=("model", "cache_length", "num_beams"))
def _beam_search(model: Model, params, prompt_ids_BP, prompt_mask_BP, max_new_tokens,
                 eos_ids_E, pad_id, length_penalty, adapter_ids_B=None, *, cache_length: int,
                 num_beams: int):
    """Returns (tokens (B, K, N), scores (B, K) length-penalised, lengths (B, K), steps); beams
    are in no particular order (the caller sorts by score)."""
    B, P = prompt_ids_BP.shape
    K = num_beams
    virtual = virtual_tokens(model)
    cache = init_cache(model.config, B, cache_length)
    start = {"with_prompt": True} if virtual else {}
    out = model.apply({"params": params}, prompt_ids_BP, attention_mask=prompt_mask_BP,
                      cache=cache, prefill=True, **start,
                      **row_adapters(adapter_ids_B))
    beam_adapters = row_adapters(None if adapter_ids_B is None else
                                 jnp.repeat(adapter_ids_B, K))  # row b's beams: b * K + k
    logp_BV = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)
    V = logp_BV.shape[-1]
    cache = take_rows(out.cache, jnp.repeat(jnp.arange(B), K))
    logp_BKV = jnp.repeat(logp_BV[:, None], K, axis=1)
    N = cache_length - virtual - P - 1  # one slot spare: the last step's forward pass writes it
    tokens_BKN = jnp.full((B, K, N), pad_id, jnp.int32)
    raw_BK = jnp.full((B, K), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    penalty = jnp.asarray(length_penalty, jnp.float32)
    bank_tokens_BKN = jnp.full((B, K, N), pad_id, jnp.int32)
    bank_score_BK = jnp.full((B, K), -jnp.inf, jnp.float32)
    bank_length_BK = jnp.zeros((B, K), jnp.int32)

    def penalised(raw, length):
        return raw / jnp.maximum(length, 1).astype(jnp.float32) ** penalty

    def keep_going(state):
        step, _, _, raw_BK, _, bank_score_BK, _, _ = state
        # No running beam can still beat the worst banked one: raw sums only fall, so the best
        # reachable score is the best sum now over max_new_tokens ** penalty (penalty > 0) or
        # over the current length (penalty <= 0).
        best_length = jnp.where(penalty > 0, max_new_tokens, jnp.maximum(step, 1))
        reachable_B = penalised(jnp.max(raw_BK, -1), best_length)
        settled = jnp.all(jnp.min(bank_score_BK, -1) >= reachable_B)
        return (step < max_new_tokens) & ~settled

    def one_token(state):
        (step, cache, tokens_BKN, raw_BK, logp_BKV, bank_score_BK, bank_tokens_BKN,
         bank_length_BK) = state
        extended_BKV = (raw_BK[..., None] + logp_BKV).reshape(B, K * V)
        top_raw_B2, pick_B2 = jax.lax.top_k(extended_BKV, 2 * K)
        parent_B2, token_B2 = pick_B2 // V, (pick_B2 % V).astype(jnp.int32)
        ends_B2 = jnp.isin(token_B2, eos_ids_E)
        grown_B2N = jnp.take_along_axis(tokens_BKN, parent_B2[..., None], axis=1)
        grown_B2N = jax.lax.dynamic_update_slice(grown_B2N, token_B2[..., None], (0, 0, step))
        # Finished hypotheses: EOS among the K best candidates, or every candidate at the end.
        last = step + 1 >= max_new_tokens
        finishing_B2 = (ends_B2 | last) & (jnp.arange(2 * K) < K)
        new_score_B2 = jnp.where(finishing_B2, penalised(top_raw_B2, step + 1), -jnp.inf)
        pool_score = jnp.concatenate([bank_score_BK, new_score_B2], -1)
        pool_tokens = jnp.concatenate([bank_tokens_BKN, grown_B2N], 1)
        pool_length = jnp.concatenate([bank_length_BK, jnp.full((B, 2 * K), step + 1)], -1)
        bank_score_BK, keep_BK = jax.lax.top_k(pool_score, K)
        bank_tokens_BKN = jnp.take_along_axis(pool_tokens, keep_BK[..., None], axis=1)
        bank_length_BK = jnp.take_along_axis(pool_length, keep_BK, -1)
        # Running beams: the K best candidates that did not end.
        raw_B2 = jnp.where(ends_B2, -jnp.inf, top_raw_B2)
        raw_BK, run_BK = jax.lax.top_k(raw_B2, K)
        parent_BK = jnp.take_along_axis(parent_B2, run_BK, -1)
        token_BK = jnp.take_along_axis(token_B2, run_BK, -1)
        tokens_BKN = jnp.take_along_axis(grown_B2N, run_BK[..., None], axis=1)
        cache = take_rows(cache, (jnp.arange(B)[:, None] * K + parent_BK).reshape(B * K))
        out = model.apply({"params": params}, token_BK.reshape(B * K, 1),
                          attention_mask=jnp.ones((B * K, 1), jnp.int32), cache=cache,
                          **beam_adapters)
        logp_BKV = jax.nn.log_softmax(out.logits[:, 0].astype(jnp.float32), -1).reshape(B, K, V)
        return (step + 1, out.cache, tokens_BKN, raw_BK, logp_BKV, bank_score_BK,
                bank_tokens_BKN, bank_length_BK)

    steps, _, _, _, _, scores_BK, tokens_BKN, length_BK = jax.lax.while_loop(
        keep_going, one_token,
        (jnp.int32(0), cache, tokens_BKN, raw_BK, logp_BKV, bank_score_BK, bank_tokens_BKN,
         bank_length_BK))
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
    adapters: Sequence[int] | None = None,
) -> BeamResult:
    """Beam search over each prompt (a list of token ids); `.generation.token_ids` holds each
    prompt's best continuation (EOS excluded), `.beams` all K with their scores.

    eos_ids / pad_id / max_length / adapters as in `generate_ids`. length_penalty > 0 favours longer
    sequences, < 0 shorter ones (score = sum log p / length ** length_penalty).
    """
    if int(num_beams) != num_beams or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams}")
    adapter_ids = adapter_ids_of(model, adapters, len(prompts))
    model, params, request = prepare_request(model, params, prompts, max_new_tokens,
                                             eos_ids=eos_ids, pad_id=pad_id,
                                             max_length=max_length)
    virtual, eos_ids, pad_id = request.virtual, request.eos_ids, request.pad_id
    # One spare slot: the loop's last forward pass writes a token nobody reads.
    shapes = plan_shapes([len(p) for p in prompts], int(max_new_tokens) + 1, virtual)
    ids, mask = left_pad(prompts, shapes.prompt_length, pad_id)
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    start = time.perf_counter()
    tokens, scores, lengths, steps = jax.block_until_ready(_beam_search(
        model, params, jnp.asarray(ids), jnp.asarray(mask), jnp.int32(max_new_tokens), eos,
        jnp.int32(pad_id), jnp.float32(length_penalty), adapter_ids, cache_length=shapes.cache_length,
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
