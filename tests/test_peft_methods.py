"""Houlsby / Pfeiffer adapters, prefix, prompt and (IA)^3 on tiny Llama and tiny BERT.

Invariants: the added leaves are exactly the expected ones (names, count) and the base leaves
are the caller's arrays; adapters and (IA)^3 start as the base function exactly; a prefix is a
KV cache of real tokens; a soft prompt is P real tokens' embeddings; scanned == per-layer;
fold_prefix and the (IA)^3 merge change nothing; cached greedy decoding equals recomputation;
training moves only the method's leaves (and a new head). Compiles dominate the run time, so
tests share models and compose methods where one program can check several.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generate import PROMPTS, _full_forward_greedy

from ftjax.generate import SamplingConfig, generate_ids
from ftjax.models import (
    HeadConfig,
    Model,
    init_cache,
    init_params,
    logical_axes,
    preset,
    stacked_kv,
)
from ftjax.models.layout import to_layout
from ftjax.nn.prompt import initial_prompt
from ftjax.objectives import loss_for_task
from ftjax.optim import FROZEN, TRAIN, make_optimizer, resolve, trainable_mask
from ftjax.peft import (
    PEFT_LEAVES,
    AdapterConfig,
    IA3Config,
    PrefixConfig,
    PromptConfig,
    add_peft,
    fold_prefix,
    insert_leaves,
    merge_peft,
    method_spec,
    split_leaves,
    with_peft,
)
from ftjax.train.config import ConfigError, load_config
from ftjax.train.step import create_train_state, jit_train_step, make_train_step
from ftjax.utils.paths import leaf_paths

IDS = jnp.array([[5, 9, 17, 3, 40, 2, 11], [7, 1, 8, 30, 4, 0, 0]], jnp.int32)
MASK = jnp.array([[1] * 7, [1] * 5 + [0] * 2], jnp.int32)
HEADS = {"tiny-llama": HeadConfig("lm"), "tiny-bert": HeadConfig("token", num_labels=3)}
P = 3  # virtual tokens of prefix / prompt
SETTINGS = {
    "houlsby": AdapterConfig(kind="houlsby", size=5),
    "pfeiffer": AdapterConfig(kind="pfeiffer", size=5),
    "ia3": IA3Config(),
    "prefix": PrefixConfig(num_tokens=P),
    "prompt": PromptConfig(num_tokens=P),
}
NEW = tuple(SETTINGS)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-bert"])
def base(request):
    model = Model(preset(request.param), HEADS[request.param])
    return request.param, model, init_params(model, jax.random.key(0))


def _apply(model, params, ids=IDS, mask=MASK, **kw):
    return jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m, **kw))(
        params, ids, mask)


def _perturbed(params, method, seed=3):
    """The method's leaves replaced by random values, so that they change the function."""
    rest, leaves = split_leaves(params, PEFT_LEAVES[method])
    flat, treedef = jax.tree.flatten(leaves)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    offset = 1.0 if method == "ia3" else 0.0  # scales vary around one
    flat = [offset + 0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, flat)]
    return insert_leaves(rest, jax.tree.unflatten(treedef, flat))


def _hand_count(method, cfg):
    """Parameters a method adds, counted from the config's dimensions."""
    D, L, F = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size
    kv = cfg.num_kv_heads * cfg.head_size if cfg.arch == "llama" else D
    m = SETTINGS["houlsby"].size
    adapter = D * m + m + m * D + D
    return {"houlsby": 2 * L * adapter, "pfeiffer": L * adapter, "ia3": L * (2 * kv + F),
            "prefix": L * 2 * P * kv, "prompt": P * D}[method]


def _expected_paths(method, arch):
    attn = "self_attn" if arch == "llama" else "attention"
    per_layer = {
        "houlsby": [f"adapter_{w}/{d}/{x}" for w in ("attn", "mlp") for d in ("down", "up")
                    for x in ("bias", "kernel")],
        "pfeiffer": [f"adapter_mlp/{d}/{x}" for d in ("down", "up") for x in ("bias", "kernel")],
        "ia3": ([f"{attn}/k_proj/ia3_scale", f"{attn}/v_proj/ia3_scale", "mlp/down_proj/ia3_scale"]
                if arch == "llama" else
                [f"{attn}/key/ia3_scale", f"{attn}/value/ia3_scale", "output/ia3_scale"]),
        "prefix": [f"{attn}/prefix_k", f"{attn}/prefix_v"],
        "prompt": [],
    }[method]
    paths = [f"backbone/layers_{i}/{p}" for i in range(2) for p in per_layer]
    return sorted(paths + (["backbone/soft_prompt"] if method == "prompt" else []))


def test_added_leaves_identity_at_init_and_scanned_layout(base):
    name, model, params = base
    added = {}
    for method in NEW:
        pmodel, pparams = add_peft(model, params, method, SETTINGS[method], jax.random.key(1))
        rest, added[method] = split_leaves(pparams, PEFT_LEAVES[method])
        # Only the expected leaves were added, with the hand-counted size; the base leaves are
        # the caller's own arrays.
        arch = model.config.arch
        assert [p for p, _ in leaf_paths(added[method])] == _expected_paths(method, arch)
        assert sum(x.size for x in jax.tree.leaves(added[method])) == _hand_count(
            method, model.config)
        assert jax.tree.structure(rest) == jax.tree.structure(params)
        assert all(a is b for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(params)))
        # Every new leaf is named on the logical axes it shards along.
        axes = dict(leaf_paths(split_leaves(logical_axes(pmodel), PEFT_LEAVES[method])[1]))
        assert axes.keys() == dict(leaf_paths(added[method])).keys()
        assert all(isinstance(a, str) for spec in axes.values() for a in spec)

    def composed(*methods):  # the methods compose: one model, each method's fresh leaves
        fields = {("adapter" if m in ("houlsby", "pfeiffer") else m): SETTINGS[m] for m in methods}
        tree = params
        for m in methods:
            tree = insert_leaves(tree, added[m])
        return with_peft(model, **fields), tree

    # Zero up projections and unit scales: exactly the base function.
    base_logits = _apply(model, params).logits
    for methods in (("houlsby", "ia3"), ("pfeiffer",)):
        np.testing.assert_array_equal(_apply(*composed(*methods)).logits, base_logits)
    # The scanned layout stacks the new leaves like any block leaf and computes the same, with
    # values that make every method act.
    pmodel, pparams = composed("houlsby", "ia3", "prefix", "prompt")
    for method in ("houlsby", "ia3", "prefix", "prompt"):
        pparams = _perturbed(pparams, method)
    scanned = with_peft(pmodel, scan_layers=True)
    np.testing.assert_allclose(_apply(scanned, to_layout(pparams, True)).logits,
                               _apply(pmodel, pparams).logits, atol=2e-5, rtol=2e-5)


def _cached_kv(model, params, prefix_ids):
    """Per-layer keys/values (L, P, K * H) of `prefix_ids`, post-RoPE, from a KV cache."""
    cache = init_cache(model.config, 1, len(prefix_ids))
    out = jax.jit(lambda p, ids, c: model.apply({"params": p}, ids, cache=c))(
        params, jnp.asarray([prefix_ids]), cache)
    k, v = stacked_kv(out.cache)
    L, _, S, K, H = k.shape
    return k[:, 0].reshape(L, S, K * H), v[:, 0].reshape(L, S, K * H)


def test_prefix_is_a_kv_cache_of_real_tokens(base):
    """Prefix keys/values taken from P real tokens reproduce the base model on those tokens
    followed by the input: no rotation of the prefix, real positions start at P, every query
    sees the whole prefix whatever its padding."""
    name, model, params = base
    prefix_ids = [13, 21, 34]
    full_ids = jnp.concatenate([jnp.asarray([prefix_ids] * 2), IDS], axis=1)
    full_mask = jnp.concatenate([jnp.ones((2, P), jnp.int32), MASK], axis=1)
    if name == "tiny-llama":  # causal: the prefix tokens' keys do not depend on the input
        ids, mask = IDS, MASK
        k, v = _cached_kv(model, params, prefix_ids)
    else:  # bidirectional: they do, so one row, keys/values read off the projections
        ids, mask, full_ids, full_mask = IDS[1:], MASK[1:], full_ids[1:], full_mask[1:]
        _, inter = jax.jit(lambda p, i, m: model.apply(
            {"params": p}, i, attention_mask=m, capture_intermediates=True,
            mutable=["intermediates"]))(params, full_ids, full_mask)
        blocks = inter["intermediates"]["backbone"]
        k = jnp.stack([blocks[f"layers_{i}"]["attention"]["key"]["__call__"][0][0, :P]
                       for i in range(2)])
        v = jnp.stack([blocks[f"layers_{i}"]["attention"]["value"]["__call__"][0][0, :P]
                       for i in range(2)])
    pmodel, pparams = add_peft(model, params, "prefix", SETTINGS["prefix"], jax.random.key(1))
    attn = "self_attn" if name == "tiny-llama" else "attention"
    for i in range(2):
        pparams["backbone"][f"layers_{i}"][attn].update(prefix_k=k[i], prefix_v=v[i])
    want = _apply(model, params, full_ids, full_mask)
    got = _apply(pmodel, pparams, ids, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got.logits)[real],
                               np.asarray(want.logits)[:, P:][real], atol=2e-5, rtol=2e-5)


class _Words:
    """A stand-in tokenizer for init_text: one id per word."""

    def encode(self, text, add_special_tokens=True):
        assert not add_special_tokens
        return [len(word) + 10 for word in text.split()]


def test_soft_prompt_is_real_token_embeddings_and_output_lines_up(base):
    name, model, params = base
    table = model.apply({"params": params}, method=lambda m: m.backbone.embedding_table())
    pmodel, pparams = add_peft(model, params, "prompt", SETTINGS["prompt"], jax.random.key(1))
    prompt = pparams["backbone"]["soft_prompt"]
    # init="vocab": each virtual token is exactly one vocabulary token's embedding.
    dist = jnp.sum((prompt[:, None] - table[None]) ** 2, -1)
    ids = jnp.argmin(dist, axis=1)
    np.testing.assert_array_equal(prompt, table[ids])
    # The prompted model = the base model on [those tokens; input], sliced back to the input.
    want = _apply(model, params, jnp.concatenate([jnp.tile(ids, (2, 1)), IDS], 1),
                  jnp.concatenate([jnp.ones((2, P), jnp.int32), MASK], 1))
    got = _apply(pmodel, pparams)
    assert got.logits.shape == (2, IDS.shape[1], want.logits.shape[-1])
    np.testing.assert_allclose(got.hidden, want.hidden[:, P:], atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(got.logits, want.logits[:, P:], atol=2e-5, rtol=2e-5)
    # init="text": the text's tokens, repeated to fill P; init="random": the table's scale.
    text = PromptConfig(num_tokens=5, init="text", init_text="a soft prompt")
    np.testing.assert_array_equal(initial_prompt(text, table, jax.random.key(0), _Words()),
                                  table[jnp.asarray([11, 14, 16, 11, 14])])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        add_peft(model, params, "prompt", text, jax.random.key(1))
    noise = initial_prompt(PromptConfig(num_tokens=99, init="random"), table, jax.random.key(0))
    assert abs(float(jnp.std(noise)) / float(jnp.std(table)) - 1) < 0.2


def test_fold_prefix_equals_the_reparameterized_forward():
    model = Model(preset("tiny-llama", scan_layers=True), HEADS["tiny-llama"])
    params = init_params(model, jax.random.key(0))
    cfg = PrefixConfig(num_tokens=P, projection=True, projection_hidden=11, init_scale=0.5)
    pmodel, pparams = add_peft(model, params, "prefix", cfg, jax.random.key(1))
    assert "prefix_encoder" in pparams["backbone"]
    folded_model, folded = fold_prefix(pmodel, pparams)
    assert not folded_model.config.prefix.projection and "prefix_encoder" not in folded["backbone"]
    _, leaves = split_leaves(folded, PEFT_LEAVES["prefix"])
    assert sum(x.size for x in jax.tree.leaves(leaves)) == _hand_count("prefix", model.config)
    assert all(float(jnp.std(x)) > 0.1 for x in jax.tree.leaves(leaves))  # real prefixes
    np.testing.assert_allclose(_apply(folded_model, folded).logits,
                               _apply(pmodel, pparams).logits, atol=2e-5, rtol=2e-5)
    # Folding per-layer params gives the same leaves, one per layer.
    per_layer = with_peft(pmodel, scan_layers=False)
    _, folded_per_layer = fold_prefix(per_layer, to_layout(pparams, False))
    for (p, x), (q, y) in zip(leaf_paths(to_layout(folded_per_layer, True)), leaf_paths(folded)):
        assert p == q
        np.testing.assert_allclose(x, y, atol=1e-6, err_msg=p)
    with pytest.raises(ValueError, match="projection=True"):
        fold_prefix(folded_model, folded)


def test_ia3_merge_equals_unmerged_and_unmergeable_methods_are_refused():
    # BERT: biased keys/values (the bias is scaled too); scanned: (L, in, out) kernels.
    model = Model(preset("tiny-bert", scan_layers=True), HEADS["tiny-bert"])
    params = init_params(model, jax.random.key(0))
    pmodel, pparams = add_peft(model, params, "ia3", None, jax.random.key(1))
    trained = _perturbed(pparams, "ia3")
    merged_model, merged = merge_peft(pmodel, trained)
    assert merged_model.config.ia3 is None
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    np.testing.assert_allclose(_apply(merged_model, merged).logits,
                               _apply(pmodel, trained).logits, atol=2e-5, rtol=2e-5)
    for method in ("houlsby", "prefix", "prompt"):
        other = with_peft(model, **{"adapter" if method == "houlsby" else method:
                                    SETTINGS[method]})
        with pytest.raises(ValueError, match="cannot be merged"):
            merge_peft(other, params)


def test_prefix_and_prompt_see_every_packed_segment():
    """Two documents packed in one row (segment ids, restarting positions) give the logits they
    give alone: prefix and prompt are visible to both, and to nothing else."""
    model = Model(preset("tiny-llama"), HEADS["tiny-llama"])
    params = init_params(model, jax.random.key(0))
    model, params = add_peft(model, params, "prefix", SETTINGS["prefix"], jax.random.key(1))
    model, params = add_peft(model, params, "prompt", SETTINGS["prompt"], jax.random.key(2))
    params = _perturbed(_perturbed(params, "prefix"), "prompt")
    a, b = [5, 9, 17, 3], [40, 2, 11]
    forward = jax.jit(lambda ids, mask, pos, seg: model.apply(
        {"params": params}, ids, attention_mask=mask, positions=pos, segment_ids=seg).logits)
    one = lambda x: jnp.asarray([x], jnp.int32)  # noqa: E731
    packed = forward(one(a + b), one([1] * 7), one([0, 1, 2, 3, 0, 1, 2]),
                     one([1] * 4 + [2] * 3))
    alone = [forward(one(d + [0] * (7 - len(d))), one([1] * len(d) + [0] * (7 - len(d))),
                     one(list(range(len(d))) + [0] * (7 - len(d))),
                     one([1] * len(d) + [0] * (7 - len(d))))[0, :len(d)] for d in (a, b)]
    np.testing.assert_allclose(packed[0], jnp.concatenate(alone), atol=2e-5, rtol=2e-5)


def test_cached_greedy_equals_recomputation():
    """generate_ids (prefill + KV cache) against greedy by full forward passes, on a scanned
    model with a soft prompt (its slots cached once by the prefill), a reparameterized prefix,
    Houlsby adapters and (IA)^3 scales, all acting at every step."""
    model = Model(preset("tiny-llama", scan_layers=True), HEADS["tiny-llama"])
    params = init_params(model, jax.random.key(0))
    settings = {**SETTINGS, "prefix": PrefixConfig(num_tokens=P, projection=True,
                                                   projection_hidden=7, init_scale=0.5)}
    for i, method in enumerate(("prompt", "prefix", "houlsby", "ia3")):
        model, params = add_peft(model, params, method, settings[method], jax.random.key(i))
        params = _perturbed(params, method, seed=i)
    got = generate_ids(model, params, PROMPTS, max_new_tokens=5,
                       sampling=SamplingConfig(greedy=True), eos_ids=[])
    assert [len(row) for row in got] == [5, 5, 5]
    for prompt, row in zip(PROMPTS, got):
        _full_forward_greedy(model, params, prompt, 5, against=row)
    with pytest.raises(ValueError, match="soft prompt"):  # its tokens count toward max_length
        generate_ids(model, params, [[5] * 40], max_new_tokens=22)


def _lm_batch(vocab, seed=0):
    """Two rows, each two packed documents; next-token labels inside each document."""
    ids = np.random.default_rng(seed).integers(3, vocab, (2, 12)).astype(np.int32)
    seg = np.array([[1] * 5 + [2] * 6 + [0], [1] * 7 + [2] * 5], np.int32)
    pos = np.array([list(range(5)) + list(range(6)) + [0], list(range(7)) + list(range(5))],
                   np.int32)
    loss_mask = ((seg == np.roll(seg, -1, axis=1)) & (seg > 0)).astype(np.float32)
    loss_mask[:, -1] = 0
    return {"input_ids": ids, "attention_mask": (seg > 0).astype(np.int32), "positions": pos,
            "segment_ids": seg, "labels": np.roll(ids, -1, axis=1), "loss_mask": loss_mask}


def _method_paths(method, paths):
    from ftjax.utils.tree import canonical_module_path

    return {p for p in paths if re.fullmatch(PEFT_LEAVES[method], canonical_module_path(p))}


def test_llama_train_step_trains_every_method_and_nothing_else():
    """The real train step on packed causal-LM rows through scanned layers (stacked leaves,
    rules resolved per layer), with every method's leaves in one model (each method alone
    trains through the real loop below): the loss drops, each method's leaves move, everything
    else (the pretrained LM head included) stays bit-identical."""
    model = Model(preset("tiny-llama", scan_layers=True), HEADS["tiny-llama"])
    params = init_params(model, jax.random.key(0))
    methods = ("pfeiffer", "ia3", "prefix", "prompt")
    for i, method in enumerate(methods):
        model, params = add_peft(model, params, method, SETTINGS[method], jax.random.key(i))
    spec = [(PEFT_LEAVES[m], TRAIN) for m in methods] + [(".*", FROZEN)]
    resolved = resolve(spec, params)
    mask = trainable_mask(resolved)
    trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
    tx = make_optimizer({"learning_rate": 3e-2, "schedule": "constant"}, resolved, trainable,
                        total_steps=10)
    before = dict(leaf_paths(jax.tree.map(np.array, params)))
    state = create_train_state(params, mask, tx, seed=0)
    step = jit_train_step(make_train_step(model, tx, loss_for_task("causal_lm")))
    batch = _lm_batch(model.config.vocab_size)
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 1e-3, losses
    after = dict(leaf_paths(state.params))
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    ours = {m: _method_paths(m, before) for m in methods}
    assert all(ours[m] and ours[m] <= moved for m in methods)
    assert moved == set().union(*ours.values())


# ---- the real loop, per method, on the tiny BERT checkpoint and its cue-word task ----

E2E = {  # one run scanned (the reparameterized prefix feeds the scan); the rest per layer
    "houlsby": ["adapter.size=4", "adapter.init_scale=0.1"],
    "pfeiffer": ["adapter.size=4", "adapter.init_scale=0.1", "adapter.activation=gelu"],
    "prefix": ["prefix.num_tokens=4", "prefix.projection=True", "prefix.projection_hidden=8",
               "model.scan_layers=True"],
    "prompt": ["prompt.num_tokens=4"],
    "ia3": [],
}


@pytest.mark.parametrize("method", NEW)
def test_train_loop_per_method_and_restore(method, tiny_config_file, tmp_path, capsys):
    from ftjax.cli import main
    from ftjax.io import load_pretrained
    from ftjax.io.checkpoint import Checkpointer
    from ftjax.train.experiment import build_experiment
    from ftjax.train.restore import restore_run
    from ftjax.train.loop import train

    # The same 8 sentences every step: the loss on them must come down within 8 steps.
    cfg = load_config(tiny_config_file, [
        f"method={method}", "steps=8", "eval_every=8", "checkpoint_every=8", "best_metric=",
        "eval_splits=()",
        "data.max_train_examples=8", "optimizer.learning_rate=3e-2", *E2E[method]])
    exp = build_experiment(cfg)
    # Host copies: the train step donates the state's trainable buffers.
    before = dict(leaf_paths(jax.tree.map(np.array, exp.state.params)))
    result = train(cfg, tmp_path, quiet=True, experiment=exp)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "split" not in r]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    after = dict(leaf_paths(result.state.params))
    ours = _method_paths(method, before)
    head = {p for p in before if p.startswith("head/")}
    norms = {p for p in before if "norm/" in p} if method == "houlsby" else set()
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert ours and moved == ours | head | norms, sorted(moved ^ (ours | head | norms))
    report = json.loads((tmp_path / "params_report.json").read_text())
    assert report["trainable"] == sum(before[p].size for p in ours | head | norms)

    # The checkpoint holds the method's leaves (and the head): restored onto a zeroed state.
    restored = Checkpointer(tmp_path).restore(jax.tree.map(jnp.zeros_like, result.state))
    assert restored.step == 8
    for path, value in leaf_paths(restored.state.params):
        if path in ours | head | norms:
            np.testing.assert_array_equal(value, after[path], err_msg=path)

    # Export to HF format rebuilds the run from its directory alone (restore_run): (IA)^3
    # merges into the base weights; adapters (and prefix / prompt, test_ia3_merge_... above)
    # cannot and are refused.
    if method not in ("ia3", "houlsby"):
        return
    out = tmp_path / "hf"
    code = main(["export", "--workdir", str(tmp_path), "--out", str(out), "--backbone-only"])
    if method == "ia3":
        assert code == 0
        exp2, restored = restore_run(tmp_path)
        assert exp2.model.config.peft_methods == ("ia3",)
        merged = merge_peft(exp2.model, restored.state.params)[1]["backbone"]
        exported = load_pretrained(out).params["backbone"]
        for path, value in leaf_paths(merged):
            np.testing.assert_array_equal(dict(leaf_paths(exported))[path], value, err_msg=path)
    else:
        assert code == 2 and not out.exists()
        assert "'houlsby' cannot be merged" in capsys.readouterr().err


def test_config_blocks_are_strict():
    from ftjax.train.config import base_config, validate

    for method in NEW:
        cfg = base_config()
        cfg.method = method
        validate(cfg)  # the defaults build every method's settings
    cfg = base_config()
    cfg.method, cfg.prompt.init = "prompt", "text"
    with pytest.raises(ConfigError, match="(?s)'prompt'.*init_text"):
        validate(cfg)
    cfg.method, cfg.adapter.activation = "houlsby", "tanh"
    with pytest.raises(ConfigError, match="unknown adapter activation 'tanh'"):
        validate(cfg)
    with pytest.raises(KeyError, match="did you mean 'num_tokens'"):
        PrefixConfig.from_config({"num_token": 4})
    with pytest.raises(ValueError, match="kind 'pfeiffer'"):
        add_peft(None, {}, "houlsby", AdapterConfig(kind="pfeiffer"), jax.random.key(0))


def test_specs_train_the_method_leaves_norms_and_head_as_documented():
    from ftjax.optim import report as param_report

    for method in NEW:
        field = "adapter" if method in ("houlsby", "pfeiffer") else method
        for head, head_trains in ((HeadConfig("lm"), False), (HeadConfig("sequence", 2), True)):
            model = with_peft(Model(preset("tiny-llama"), head), **{field: SETTINGS[method]})
            shapes = jax.eval_shape(lambda m=model: init_params(m, jax.random.key(0)))
            for norms in (None, True, False):
                args = {"train_norms": norms}
                rep = param_report(shapes, resolve(
                    method_spec(method, model.config, head_kind=head.kind, method_cfg=args),
                    shapes))
                trains_norms = norms if norms is not None else method == "houlsby"
                paths = dict(leaf_paths(shapes))
                want = _method_paths(method, paths)
                want |= {p for p in paths if p.startswith("head/")} if head_trains else set()
                if method in ("houlsby", "pfeiffer") and trains_norms:
                    want |= {p for p in paths if "norm/" in p}
                assert rep["trainable"] == sum(paths[p].size for p in want), (method, head, norms)
