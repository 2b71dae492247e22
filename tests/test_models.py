"""Invariants of the model code on tiny prime-dimension configs (no checkpoints needed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.models import (
    HeadConfig,
    Model,
    init_cache,
    init_params,
    logical_axes,
    preset,
    replace_head,
    stacked_kv,
)
from ftjax.models.layout import stack_layers, to_layout, unstack_layers

HEADS = {
    "tiny-llama": [HeadConfig(), HeadConfig("sequence", 3, "last"), HeadConfig("token", 5),
                   HeadConfig("span")],
    "tiny-llama-tied": [HeadConfig()],
    "tiny-bert": [HeadConfig("sequence", 2, "cls"), HeadConfig("sequence", 2, "mean"),
                  HeadConfig("sequence", 2, "pooler"), HeadConfig("token", 7),
                  HeadConfig("span"), HeadConfig("mlm")],
}


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_produces_its_shape(name):
    cfg = preset(name)
    ids = _ids(cfg, (2, 9))
    for head in HEADS[name]:
        model = Model(cfg, head)
        out = _apply(model, init_params(model, jax.random.key(0)), ids)
        expected = {"lm": (2, 9, cfg.vocab_size), "mlm": (2, 9, cfg.vocab_size),
                    "sequence": (2, head.num_labels), "token": (2, 9, head.num_labels),
                    "span": (2, 9, 2)}[head.kind]
        assert out.logits.shape == expected and out.logits.dtype == jnp.float32
        assert bool(jnp.isfinite(out.logits).all())


def _ids(cfg, shape, seed=1):
    # Avoid id 0..2 so real tokens never collide with pad/bos/eos in these tests.
    return jax.random.randint(jax.random.key(seed), shape, 3, cfg.vocab_size)


def _apply(model, params, ids, **kw):
    """Jitted apply: op-by-op dispatch of a whole model costs seconds of per-primitive compiles."""
    return jax.jit(model.apply)({"params": params}, ids, **kw)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# Heads do not interact with the layer layout: one head per backbone suffices here.
SCAN_CASES = [("tiny-llama", HeadConfig()), ("tiny-bert", HeadConfig("sequence", 2, "pooler"))]


@pytest.mark.parametrize("name,head", SCAN_CASES, ids=lambda c: str(c))
def test_scanned_equals_per_layer(name, head):
    cfg = preset(name)
    model = Model(cfg, head)
    params = init_params(model, jax.random.key(0))
    scanned = Model(dataclasses.replace(cfg, scan_layers=True), head)
    ids = _ids(cfg, (2, 9))
    ref = _apply(model, params, ids).logits
    out = _apply(scanned, to_layout(params, scan_layers=True), ids).logits
    _close(ref, out)
    # The two layouts convert exactly, both ways.
    back = unstack_layers(stack_layers(params["backbone"]))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, params["backbone"]))
    # The scanned tree is what a scanned model initializes.
    fresh = init_params(scanned, jax.random.key(0))
    assert jax.tree.structure(fresh) == jax.tree.structure(to_layout(params, scan_layers=True))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_every_leaf_has_logical_axes(name):
    for head in HEADS[name]:
        for scan in (False, True):
            model = Model(preset(name, scan_layers=scan), head)
            specs = jax.tree.leaves(logical_axes(model), is_leaf=lambda x: x is None or
                                    isinstance(x, jax.sharding.PartitionSpec))
            shapes = jax.tree.leaves(jax.eval_shape(lambda m=model: init_params(m, jax.random.key(0))))
            assert len(specs) == len(shapes)
            for spec, shape in zip(specs, shapes):
                assert spec is not None and len(spec) == len(shape.shape), (spec, shape)
                assert all(isinstance(a, str) for a in spec)


def test_causal_prefix_invariance():
    """Appending tokens never changes earlier positions' logits (causality)."""
    cfg = preset("tiny-llama")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (2, 11))
    full = _apply(model, params, ids).logits
    prefix = _apply(model, params, ids[:, :6]).logits
    _close(full[:, :6], prefix)


def test_left_padding_does_not_change_a_row():
    cfg = preset("tiny-llama")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (1, 7))
    alone = _apply(model, params, ids).logits
    pad = 4
    padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), ids], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones((1, 7), jnp.int32)], axis=1)
    out = _apply(model, params, padded, attention_mask=mask).logits
    _close(out[:, pad:], alone)


def test_right_padding_does_not_change_encoder_tokens():
    cfg = preset("tiny-bert")
    model = Model(cfg, HeadConfig("sequence", 2, "mean"))
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (1, 7))
    alone = _apply(model, params, ids)
    padded = jnp.concatenate([ids, jnp.zeros((1, 5), jnp.int32)], axis=1)
    mask = (jnp.arange(12) < 7).astype(jnp.int32)[None]
    out = _apply(model, params, padded, attention_mask=mask)
    _close(out.hidden[:, :7], alone.hidden)
    _close(out.logits, alone.logits)  # mean pooling weighted by the mask


def test_packed_segments_equal_separate_sequences():
    cfg = preset("tiny-llama")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    a, b = _ids(cfg, (1, 5), seed=2), _ids(cfg, (1, 6), seed=3)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 6])
    positions = jnp.array([list(range(5)) + list(range(6))])
    out = _apply(model, params, packed, segment_ids=segments, positions=positions).logits
    _close(out[:, :5], _apply(model, params, a).logits)
    _close(out[:, 5:], _apply(model, params, b).logits)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_equals_full_forward(scan):
    """Prefill a left-padded batch, then feed tokens one at a time through the cache."""
    cfg = preset("tiny-llama-tied", scan_layers=scan)
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (2, 10))
    mask = jnp.array([[0, 0, 0] + [1] * 7, [1] * 10], jnp.int32)
    full = _apply(model, params, ids, attention_mask=mask).logits

    prompt = 6
    cache = init_cache(cfg, batch_size=2, max_length=16)
    out = _apply(model, params, ids[:, :prompt], attention_mask=mask[:, :prompt],
                      cache=cache)
    real = np.asarray(mask[:, :prompt], bool)  # padded queries see no key: their output is moot
    _close(np.asarray(out.logits)[real], np.asarray(full[:, :prompt])[real], 1e-4)
    cache = out.cache
    for t in range(prompt, 10):
        out = _apply(model, params, ids[:, t:t + 1], attention_mask=mask[:, t:t + 1],
                          cache=cache)
        _close(out.logits[:, 0], full[:, t], 1e-4)
        cache = out.cache
    assert int(cache["end"]) == 10


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-tied"])
def test_prefill_equals_the_general_cached_call(name, scan):
    """Generation's first call (`prefill`: the prompt attends among its own tokens, the LM head
    on the last position only) gives the general cached call's last logits and cache, for a
    left-padded batch, tied or untied, per-layer or scanned."""
    cfg = preset(name, scan_layers=scan)
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    if scan:
        params = to_layout(params, scan_layers=True)
    ids = _ids(cfg, (2, 7))
    mask = jnp.array([[0, 0] + [1] * 5, [1] * 7], jnp.int32)

    def call(prefill):
        return model.apply({"params": params}, ids, attention_mask=mask,
                           cache=init_cache(cfg, 2, 11), prefill=prefill)

    general, first = call(False), call(True)
    assert first.logits.shape == (2, 1, cfg.vocab_size)
    _close(first.logits[:, 0], general.logits[:, -1], 1e-5)
    # Padding slots hold garbage that no query attends to (mask 0): compare the real ones.
    real = np.asarray(general.cache["mask"], bool)
    for a, b in zip(stacked_kv(first.cache), stacked_kv(general.cache)):
        _close(np.asarray(a)[:, real], np.asarray(b)[:, real], 1e-5)
    assert int(first.cache["end"]) == 7
    np.testing.assert_array_equal(first.cache["mask"], general.cache["mask"])
    classifier = Model(preset("tiny-llama"), HeadConfig("sequence", 3, "last"))
    with pytest.raises(ValueError, match="prefill is a decoder's first call"):
        classifier.apply({"params": init_params(classifier, jax.random.key(0))}, ids,
                         cache=init_cache(cfg, 2, 11), prefill=True)


def test_per_layer_cache_buffers_hold_what_the_stacked_cache_holds():
    """The per-layer KV cache (unscanned) and the stacked one (scan_layers) hold the same keys
    and values after a prefill of the same weights."""
    cfg = preset("tiny-llama-tied")
    model, scanned = Model(cfg), Model(dataclasses.replace(cfg, scan_layers=True))
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (2, 6))
    per_layer = _apply(model, params, ids, cache=init_cache(cfg, 2, 8)).cache
    stacked = _apply(scanned, to_layout(params, scan_layers=True), ids,
                     cache=init_cache(scanned.config, 2, 8)).cache
    assert isinstance(per_layer["k"], tuple) and len(per_layer["k"]) == cfg.num_layers
    assert stacked["k"].shape == (cfg.num_layers, 2, 8, cfg.num_kv_heads, cfg.head_size)
    for a, b in zip(stacked_kv(per_layer), stacked_kv(stacked)):
        _close(a, b, 1e-5)


def test_replace_head_keeps_backbone_and_discards_old_head():
    cfg = preset("tiny-llama")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    new_model, new_params = replace_head(model, params, HeadConfig("sequence", 4, "last"),
                                         jax.random.key(5))
    assert new_params["backbone"] is params["backbone"]
    assert new_params["head"]["classifier"]["kernel"].shape == (cfg.hidden_size, 4)
    out = _apply(new_model, new_params, _ids(cfg, (3, 5)))
    assert out.logits.shape == (3, 4)


def test_bf16_compute_policy_tracks_fp32():
    cfg = preset("tiny-llama")
    params = init_params(Model(cfg), jax.random.key(0))
    ids = _ids(cfg, (2, 9))
    ref = _apply(Model(cfg), params, ids).logits
    out = _apply(Model(dataclasses.replace(cfg, dtype="bfloat16")), params, ids)
    assert out.hidden.dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32
    rel = jnp.linalg.norm(out.logits - ref) / jnp.linalg.norm(ref)
    assert rel < 2e-2


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_nothing_but_memory(remat):
    cfg = preset("tiny-llama")
    params = init_params(Model(cfg), jax.random.key(0))
    ids = _ids(cfg, (2, 9))

    def grads(c):
        loss = lambda p: _apply(Model(c), p, ids).logits.sum()  # noqa: E731
        return jax.jit(jax.grad(loss))(to_layout(params, c.scan_layers))

    ref = grads(cfg)
    for scan in (False, True):
        out = grads(dataclasses.replace(cfg, remat=remat, scan_layers=scan))
        out = to_layout(out, scan_layers=False)
        jax.tree.map(lambda a, b: _close(a, b, 1e-4), out, ref)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        dataclasses.replace(preset("tiny-llama"), num_kv_heads=4)
    with pytest.raises(ValueError, match="num_labels"):
        HeadConfig("sequence")
    with pytest.raises(KeyError, match="unknown model preset"):
        preset("no-such-model")
    with pytest.raises(ValueError, match="no causal LM head"):
        init_params(Model(preset("tiny-bert"), HeadConfig("lm")), jax.random.key(0))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_dropout_acts_only_in_training(name):
    cfg = dataclasses.replace(preset(name), hidden_dropout=0.3, attention_dropout=0.3,
                              embedding_dropout=0.3)
    model = Model(cfg, HeadConfig("sequence", 2, "mean"))
    params = init_params(model, jax.random.key(0))
    ids = _ids(cfg, (2, 9))
    plain = _apply(Model(dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0,
                                             embedding_dropout=0.0), model.head_config),
                   params, ids).hidden
    _close(_apply(model, params, ids).hidden, plain)  # deterministic: dropout is off
    train = jax.jit(lambda p, key: model.apply({"params": p}, ids, deterministic=False,
                                               rngs={"dropout": key}).hidden)
    a, b = train(params, jax.random.key(1)), train(params, jax.random.key(2))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, train(params, jax.random.key(1)))  # keyed, reproducible


def test_attention_dropout_path_equals_fused_attention_at_rate_zero():
    """The explicit-softmax path (used when dropping probabilities) computes the same function."""
    from ftjax.nn.layers import attention_mask, dot_product_attention

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (2, 5, 6, 4))
    k = jax.random.normal(k2, (2, 7, 2, 4))
    v = jax.random.normal(k3, (2, 7, 2, 4))
    mask = attention_mask(k_valid_BS=jnp.array([[1] * 7, [1] * 4 + [0] * 3]), causal_offset=2,
                          q_len=5, k_len=7)
    fused = dot_product_attention(q, k, v, mask)
    explicit = dot_product_attention(q, k, v, mask, dropout_rate=1e-9,
                                     dropout_rng=jax.random.key(1))
    _close(explicit, fused, 1e-5)


@pytest.mark.parametrize("backend, dtype, head, q_len, kv_len, requested, expected", [
    ("gpu", jnp.bfloat16, 64, 128, 128, None, "cudnn"),
    ("gpu", jnp.float16, 128, 7, 7, None, "cudnn"),
    ("gpu", jnp.float32, 64, 128, 128, None, "xla"),  # the fused kernel takes bf16 / fp16 only
    ("gpu", jnp.bfloat16, 60, 128, 128, None, "xla"),  # head size not a multiple of 8
    ("gpu", jnp.bfloat16, 256, 128, 128, None, "xla"),  # beyond 128
    ("gpu", jnp.bfloat16, 64, 1, 129, None, "xla"),  # a decode step against the cache
    ("cpu", jnp.bfloat16, 64, 128, 128, None, "xla"),
    ("cpu", jnp.float32, 64, 128, 128, "cudnn", "cudnn"),  # asked for: taken as given
    ("gpu", jnp.bfloat16, 64, 128, 128, "xla", "xla"),
])
def test_attention_implementation_choice(backend, dtype, head, q_len, kv_len, requested,
                                         expected):
    from ftjax.nn.layers import attention_implementation

    assert attention_implementation(requested, dtype, head, q_len, kv_len,
                                    backend=backend) == expected


def test_chosen_cudnn_that_jax_declines_runs_on_xla(monkeypatch):
    """Where cuDNN was picked (here: the backend claims to be a GPU) but jax refuses the call
    while tracing it (on this CPU: "cuDNN is not detected"), the layer computes XLA's attention,
    the same numbers; a cuDNN asked for by the config is not second-guessed."""
    import ftjax.nn.layers as layers

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 16, 4, 64)), jnp.bfloat16)
    k = v = jnp.asarray(rng.normal(size=(2, 16, 2, 64)), jnp.bfloat16)
    mask = jnp.tril(jnp.ones((16, 16), bool))[None, None].repeat(2, axis=0)
    xla = layers.dot_product_attention(q, k, v, mask, implementation="xla")
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert layers.attention_implementation(None, q.dtype, 64, 16, 16) == "cudnn"
    auto = jax.jit(lambda *a: layers.dot_product_attention(*a))(q, k, v, mask)
    np.testing.assert_array_equal(np.asarray(auto, np.float32), np.asarray(xla, np.float32))
    with pytest.raises(RuntimeError, match="cuDNN"):
        layers.dot_product_attention(q, k, v, mask, implementation="cudnn")


def _record_attention_calls(monkeypatch):
    """Fake a GPU backend and record (implementation, is_causal) of every jax attention call,
    computing each with XLA (this CPU has no cuDNN)."""
    import ftjax.nn.layers as layers

    real, calls = jax.nn.dot_product_attention, []

    def record(*args, implementation=None, is_causal=False, **kwargs):
        calls.append((implementation, is_causal))
        return real(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(layers.jax.nn, "dot_product_attention", record)
    return calls


def test_decoder_self_attention_tells_cudnn_it_is_causal(monkeypatch):
    """cuDNN's kernel skips the blocks above the diagonal only when told the attention is
    causal: a decoder attending over its own tokens tells it (the mask is causal anyway); the
    encoder never does; a decode step against a longer cache never reaches cuDNN."""
    cfg = dataclasses.replace(preset("tiny-llama"), head_dim=16, dtype="bfloat16")
    model = Model(cfg)
    params = init_params(model, jax.random.key(0))
    bert = dataclasses.replace(preset("tiny-bert"), hidden_size=40, dtype="bfloat16")
    bert_model = Model(bert, HeadConfig("sequence", 2, "cls"))
    bert_params = init_params(bert_model, jax.random.key(0))
    calls = _record_attention_calls(monkeypatch)
    ids = _ids(cfg, (2, 9))
    model.apply({"params": params}, ids)
    assert calls == [("cudnn", True)] * cfg.num_layers

    calls.clear()
    cache = init_cache(cfg, 2, 16)
    model.apply({"params": params}, ids, cache=cache)  # prefill: 9 queries, 16 cache slots
    assert calls == [("xla", False)] * cfg.num_layers

    calls.clear()
    bert_model.apply({"params": bert_params}, _ids(bert, (2, 9)))
    assert calls == [("cudnn", False)] * bert.num_layers


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU: cuDNN's fused attention")
def test_cudnn_attention_matches_xla_on_gpu():
    """On a GPU, bf16 decoder logits and gradients with cuDNN's kernel (causal hint, padding
    and packed segments in the mask) equal XLA's attention to bf16 precision, and the compiled
    program really calls cuDNN."""
    cfg = dataclasses.replace(preset("tiny-llama"), hidden_size=128, num_heads=4, num_kv_heads=2,
                              head_dim=64, max_position_embeddings=256, dtype="bfloat16")
    ids = _ids(cfg, (2, 128))
    mask = jnp.ones((2, 128), jnp.int32).at[1, 100:].set(0)  # row 1 padded at the end
    segments = jnp.ones((2, 128), jnp.int32).at[0, 60:].set(2)  # row 0: two packed segments
    positions = jnp.stack([jnp.concatenate([jnp.arange(60), jnp.arange(68)]), jnp.arange(128)])
    kwargs = dict(attention_mask=mask, segment_ids=segments, positions=positions)

    def loss_and_grads(impl):
        model = Model(dataclasses.replace(cfg, attention_impl=impl))
        params = init_params(model, jax.random.key(0))

        def loss(p):
            logits = model.apply({"params": p}, ids, **kwargs).logits.astype(jnp.float32)
            return jnp.sum(jnp.where(mask[..., None] > 0, logits, 0.0) ** 2) / 1e4

        fn = jax.jit(jax.value_and_grad(loss))
        return fn(params), fn.lower(params).compile().as_text()

    (ours, ours_grads), hlo = loss_and_grads(None)
    (xla, xla_grads), _ = loss_and_grads("xla")
    assert "cudnn$fmha" in hlo
    _close(ours, xla, 2e-2)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(xla_grads)):
        scale = float(jnp.max(jnp.abs(b.astype(jnp.float32)))) + 1e-6
        np.testing.assert_allclose(np.asarray(a, np.float32) / scale,
                                   np.asarray(b, np.float32) / scale, atol=3e-2)
