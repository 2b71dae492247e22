"""Sharding on a faked 8-device CPU mesh. Run by tests/test_parallel.py in a subprocess whose
XLA_FLAGS ask for 8 host devices (pytest does not collect this file itself; see there why).

Invariants: every mesh shape (data, FSDP, tensor, mixed) trains exactly like one device (up to
float reassociation), for full fine-tuning and LoRA, decoder and encoder; parameters and optimizer
state are really split as the rules table says; the step compiles once and never touches the
host; a checkpoint moves between mesh shapes; `train(cfg)` runs end to end on a 2 x 4 mesh.

The models here have widths that divide 8 (hidden 24, heads 4 x 8, kv 2 x 8, MLP 40, vocab 104)
so that nothing falls back to replication; the prime-width presets check the fallback itself.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax.io.checkpoint import Checkpointer
from ftjax.models import (
    BertConfig,
    HeadConfig,
    LlamaConfig,
    Model,
    init_params,
    plan_for_model,
    preset,
)
from ftjax.models.layout import to_layout
from ftjax.objectives import loss_for_task
from ftjax.optim import make_optimizer, trainability
from ftjax.parallel import (
    MeshError,
    make_mesh,
    mesh_shape,
    param_shardings,
    place_batch,
)
from ftjax.peft import LoraConfig, add_lora, presets, with_slots
from ftjax.train.config import ConfigError, load_config
from ftjax.train.step import (
    create_train_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
    state_shardings,
)

# One block: sharding is the same in every block, and compile time grows with their number.
LLAMA = LlamaConfig(vocab_size=104, hidden_size=24, intermediate_size=40, num_layers=1,
                    num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
BERT = BertConfig(vocab_size=104, hidden_size=24, intermediate_size=40, num_layers=1,
                  num_heads=4, max_position_embeddings=32, hidden_dropout=0.0,
                  attention_dropout=0.0)
ALL_LORA = r".*/(self_attn/.*_proj|mlp/.*_proj|attention/.*|intermediate|output)"

if jax.device_count() != 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_parallel.py "
                "runs this file so)", allow_module_level=True)


def _model(arch: str, method: str, scan: bool = False):
    if arch == "llama":
        model = Model(LLAMA.with_policy(scan_layers=scan), HeadConfig("lm"))
    else:
        model = Model(BERT.with_policy(scan_layers=scan), HeadConfig("sequence", 3, "cls"))
    params = init_params(model, jax.random.key(0))
    if method == "lora":
        model, params = add_lora(model, params, LoraConfig(rank=4, targets=ALL_LORA),
                                 jax.random.key(1))
        # B = 0 at init would make the first steps see no adapter effect at all.
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.05 if str(p[-1].key) == "lora_b" else x, params)
    return model, params


def _batches(arch: str, n: int, B: int = 16, T: int = 12):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        lengths = rng.integers(3, T + 1, B)
        mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask, rng.integers(5, 104, (B, T)), 0).astype(np.int32)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "positions": np.where(mask, np.arange(T)[None], 0).astype(np.int32)}
        if arch == "llama":
            batch["segment_ids"] = mask.copy()
            batch["labels"] = np.roll(ids, -1, axis=1)
            batch["loss_mask"] = (mask * np.roll(mask, -1, axis=1)).astype(np.float32)
            batch["loss_mask"][:, -1] = 0
        else:
            batch["token_type_ids"] = np.zeros_like(ids)
            batch["labels"] = rng.integers(0, 3, B).astype(np.int32)
            batch["example_mask"] = np.ones(B, np.float32)
        out.append(batch)
    return out


def _setup(model, params, method, mesh=None, optimizer=None, frozen_dtype=None):
    """(state, jitted step, plan) as build_experiment makes them, on `mesh` (None: one device)."""
    spec = presets.method_spec(method, model.config, head_kind=model.head_config.kind)
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    trainable, _ = trainability.partition(params, mask)
    opt = optimizer or {"name": "sgd", "momentum": 0.9, "learning_rate": 0.05,
                        "schedule": "constant"}
    tx = make_optimizer(opt, resolved, trainable, total_steps=100)
    task = "causal_lm" if model.config.arch == "llama" else "classification"
    step_fn = make_train_step(model, tx, loss_for_task(task))
    plan = None if mesh is None else plan_for_model(model, params, mesh)
    # Copies: the donating step would otherwise delete the caller's arrays on one device.
    params = jax.tree.map(jnp.copy, params)
    state = create_train_state(params, mask, tx, 0, plan=plan, frozen_dtype=frozen_dtype)
    if plan is None:
        return state, jit_train_step(step_fn), None, tx
    return state, jit_train_step(step_fn, state_shardings(state), plan.batch), plan, tx


def _train(model, params, method, mesh, batches, **kw):
    state, step, plan, _ = _setup(model, params, method, mesh, **kw)
    losses = []
    for batch in batches:
        if plan is not None:
            batch = place_batch(batch, plan.batch)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state.params), state


@pytest.mark.parametrize("arch,method,meshes", [
    ("llama", "full", [(8, 1, 1), (1, 8, 1), (1, 1, 8)]),
    ("llama", "lora", [(2, 2, 2)]),
    ("bert", "full", [(2, 1, 4)]),
    ("bert", "lora", [(1, 4, 2)]),
])
def test_every_mesh_trains_like_one_device(arch, method, meshes):
    model, params = _model(arch, method)
    batches = _batches(arch, 2)
    batches.append(batches[0])  # the first batch again: its loss must have dropped
    ref_losses, ref_params, _ = _train(model, params, method, None, batches)
    for shape in meshes:
        mesh = make_mesh(*shape)
        assert not plan_for_model(model, params, mesh).fallbacks  # really sharded, all of it
        losses, out, _ = _train(model, params, method, mesh, batches)
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, err_msg=str(shape))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                             err_msg=str(shape)), out, ref_params)
    assert ref_losses[-1] < ref_losses[0]  # they did train


def test_adapter_slots_train_like_one_device_with_the_slot_axis_whole():
    """Three LoRA adapters side by side, each row routed to its own (adapter_per_task's
    model): a 2 x 2 x 2 mesh trains like one device, and every slot leaf keeps its slot axis
    unsharded."""
    model, params = _model("llama", "lora")
    model, params = with_slots(model, params, ("a", "b", "c"), r".*/lora_(?:a|b)")
    batches = _batches("llama", 2)
    for i, batch in enumerate(batches):
        batch["task_id"] = (np.arange(16) + i) % 3
    ref_losses, ref_params, _ = _train(model, params, "lora", None, batches)
    mesh = make_mesh(2, 2, 2)
    assert not plan_for_model(model, params, mesh).fallbacks
    losses, out, state = _train(model, params, "lora", mesh, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), out,
                 ref_params)
    lora_a = state.trainable["backbone"]["layers_0"]["self_attn"]["q_proj"]["lora_a"]
    assert lora_a.shape[0] == 3 and _spec(lora_a)[0] is None


def _spec(x):
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def test_params_and_adam_state_are_sharded_as_the_rules_say():
    model, params = _model("llama", "lora")
    mesh = make_mesh(1, 2, 4)
    opt = {"name": "adamw", "learning_rate": 1e-3, "schedule": "constant"}
    spec = presets.method_spec("full", model.config)  # everything trains: Adam state for all
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    tx = make_optimizer(opt, resolved, params, total_steps=10)
    plan = plan_for_model(model, params, mesh)
    state = create_train_state(jax.tree.map(jnp.copy, params), mask, tx, 0, plan=plan)

    layer = state.trainable["backbone"]["layers_0"]
    expected = {  # Megatron column / row parallel, FSDP on embed, LoRA like its kernel
        ("self_attn", "q_proj", "kernel"): ("fsdp", "tensor"),
        ("self_attn", "k_proj", "kernel"): ("fsdp", "tensor"),
        ("self_attn", "o_proj", "kernel"): ("tensor", "fsdp"),
        ("mlp", "gate_proj", "kernel"): ("fsdp", "tensor"),
        ("mlp", "down_proj", "kernel"): ("tensor", "fsdp"),
        ("self_attn", "q_proj", "lora_a"): ("fsdp", None),
        ("self_attn", "q_proj", "lora_b"): (None, "tensor"),
        ("mlp", "down_proj", "lora_a"): ("tensor", None),
        ("mlp", "down_proj", "lora_b"): (None, "fsdp"),
        ("input_layernorm", "scale"): (None,),
    }
    for (*mods, leaf), want in expected.items():
        node = layer
        for m in mods:
            node = node[m]
        assert _spec(node[leaf]) == want, (mods, leaf)
    assert _spec(state.trainable["backbone"]["embed_tokens"]["embedding"]) == ("tensor", "fsdp")
    assert _spec(state.trainable["head"]["kernel"]) == ("fsdp", "tensor")
    # Each device really holds only its block: q_proj (24, 32) over fsdp=2 x tensor=4.
    q = layer["self_attn"]["q_proj"]["kernel"]
    assert {s.data.shape for s in q.addressable_shards} == {(12, 8)}

    mu = optax.tree_utils.tree_get(state.opt_state, "mu")
    nu = optax.tree_utils.tree_get(state.opt_state, "nu")
    for moments in (mu, nu):
        same = jax.tree.map(lambda m, p: m.sharding == p.sharding, moments, state.trainable)
        assert all(jax.tree.leaves(same))
    counts = [x for x in jax.tree.leaves(state.opt_state) if x.ndim == 0]
    assert counts and all(_spec(c) == () and c.sharding.is_fully_replicated for c in counts)


def test_scan_axis_stays_whole_and_unknown_names_are_replicated():
    model, params = _model("llama", "full", scan=True)
    plan = plan_for_model(model, params, make_mesh(1, 2, 4))
    q = plan.params["backbone"]["layers"]["block"]["self_attn"]["q_proj"]["kernel"]
    assert tuple(q.spec) == (None, "fsdp", "tensor")
    # A name the table does not know (a new PEFT method's axis) is replicated, its other axes
    # still follow the table.
    logical = {"adapter": {"down": jax.sharding.PartitionSpec("embed", "adapter")}}
    shapes = {"adapter": {"down": jax.ShapeDtypeStruct((24, 8), jnp.float32)}}
    shardings, fallbacks = param_shardings(logical, shapes, make_mesh(1, 2, 4))
    assert tuple(shardings["adapter"]["down"].spec) == ("fsdp", None) and not fallbacks


def test_indivisible_dims_are_replicated_reported_and_still_train_right():
    """tiny-llama's prime widths (hidden 31, MLP 37, vocab 97) cannot split 4 ways."""
    model = Model(preset("tiny-llama"), HeadConfig("lm"))
    params = init_params(model, jax.random.key(0))
    plan = plan_for_model(model, params, make_mesh(1, 2, 4))
    fell = {(f.path, f.logical) for f in plan.fallbacks}
    assert ("backbone/layers_0/mlp/gate_proj/kernel", "mlp") in fell
    assert ("backbone/layers_0/mlp/gate_proj/kernel", "embed") in fell
    assert ("backbone/embed_tokens/embedding", "vocab") in fell
    # heads: 6 x 10 = 60 splits 4 ways, so q_proj keeps its tensor split.
    q = plan.params["backbone"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert tuple(q.spec) == (None, "tensor")
    assert "replicated along it" in str(plan.fallbacks[0])
    assert plan.describe()["replicated_for_divisibility"]
    batches = _batches("llama", 2)
    for b in batches:
        b["input_ids"] = b["input_ids"] % 97
        b["labels"] = b["labels"] % 97
    ref, _, _ = _train(model, params, "full", None, batches)
    got, _, _ = _train(model, params, "full", make_mesh(1, 2, 4), batches)
    np.testing.assert_allclose(got, ref, rtol=2e-5)


def test_mesh_shapes_fill_and_fail_clearly():
    assert mesh_shape(num_devices=8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert mesh_shape(2, -1, 2, num_devices=8) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(MeshError, match="3 slots but there are 8 devices"):
        mesh_shape(3, 1, 1, num_devices=8)
    with pytest.raises(MeshError, match="does not divide the 8 devices"):
        mesh_shape(-1, 3, 1, num_devices=8)
    with pytest.raises(MeshError, match="only one mesh axis may be -1"):
        mesh_shape(-1, -1, 1, num_devices=8)
    with pytest.raises(MeshError, match="mesh.tensor must be a positive int"):
        mesh_shape(1, 1, 0, num_devices=8)
    assert dict(make_mesh(2, 1, -1).shape) == {"data": 2, "fsdp": 1, "tensor": 4}


def test_step_compiles_once_and_never_touches_the_host():
    model, params = _model("llama", "lora")
    state, _, plan, tx = _setup(model, params, "lora", make_mesh(2, 2, 2))
    task_loss = loss_for_task("causal_lm")
    inner = make_train_step(model, tx, task_loss)
    traces = []

    def counted(state, batch):
        traces.append(1)  # runs only while tracing
        return inner(state, batch)

    step = jit_train_step(counted, state_shardings(state), plan.batch)
    eval_step = jit_eval_step(make_eval_step(model, task_loss), state_shardings(state),
                              plan.batch)
    for batch in _batches("llama", 4):
        placed = place_batch(batch, plan.batch)
        previous = state
        with jax.transfer_guard("disallow"):  # any implicit host <-> device copy raises
            state, metrics = step(state, placed)
            sums = eval_step(state.trainable, state.frozen, placed)
        # Donation kept: the old trainable buffers were reused; frozen ones were not donated.
        assert all(x.is_deleted() for x in jax.tree.leaves(previous.trainable))
        assert not any(x.is_deleted() for x in jax.tree.leaves(state.frozen))
    assert len(traces) == 1
    assert np.isfinite(float(metrics["loss"])) and float(sums["weight"]) > 0
    assert metrics["loss"].sharding.is_fully_replicated


def test_checkpoint_moves_between_mesh_shapes(tmp_path):
    model, params = _model("bert", "lora")
    batches = _batches("bert", 4)
    opt = {"name": "adamw", "learning_rate": 1e-2, "schedule": "constant"}
    # Uninterrupted on mesh A (data 2 x tensor 4).
    state, step, plan_a, _ = _setup(model, params, "lora", make_mesh(2, 1, 4), optimizer=opt)
    losses_a = []
    ckpt = Checkpointer(tmp_path)
    for i, batch in enumerate(batches):
        state, metrics = step(state, place_batch(batch, plan_a.batch))
        losses_a.append(float(metrics["loss"]))
        if i == 1:
            ckpt.save(state, meta={})
            ckpt.wait()
            saved = jax.tree.map(np.asarray, (state.trainable, state.opt_state))
    # Restored onto mesh B (fsdp 4 x tensor 2) and continued there.
    template, step_b, plan_b, _ = _setup(model, params, "lora", make_mesh(1, 4, 2), optimizer=opt)
    restored = ckpt.restore(template).state
    ckpt.close()
    assert int(restored.step) == 2
    same = jax.tree.map(np.array_equal, saved, (restored.trainable, restored.opt_state))
    assert all(jax.tree.leaves(same))  # exactly the saved values ...
    lora_a = restored.trainable["backbone"]["layers_0"]["attention"]["query"]["lora_a"]
    assert lora_a.sharding == plan_b.params["backbone"]["layers_0"]["attention"]["query"][
        "lora_a"]  # ... laid out for mesh B
    losses_b = []
    for batch in batches[2:]:
        restored, metrics = step_b(restored, place_batch(batch, plan_b.batch))
        losses_b.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses_b, losses_a[2:], rtol=2e-5)


def test_scanned_top_layers_hold_and_checkpoint_only_the_trained_layers(tmp_path):
    """top_layers on a scanned model: the stacked leaves are split along the layer axis, so the
    trainable tree, the momentum and the checkpoint hold the top 2 of 3 blocks only, sharded
    like the stack; training matches the per-layer model on one device and on a mesh, and a
    checkpoint restores onto another mesh shape and continues identically."""
    per_layer = Model(dataclasses.replace(LLAMA, num_layers=3), HeadConfig("lm"))
    params = init_params(per_layer, jax.random.key(0))
    scanned = Model(per_layer.config.with_policy(scan_layers=True), per_layer.head_config)
    stacked = to_layout(params, scan_layers=True)
    batches = _batches("llama", 4)
    ref_losses, ref_params, _ = _train(per_layer, params, "top_layers", None, batches)
    for mesh in (None, make_mesh(1, 2, 4)):
        losses, out, state = _train(scanned, stacked, "top_layers", mesh, batches)
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     to_layout(out, scan_layers=False), ref_params)
        q = ("self_attn", "q_proj", "kernel")
        trained = state.trainable["backbone"]["layers"]["block"]
        frozen = state.frozen["backbone"]["layers"]["block"]
        assert trained[q[0]][q[1]][q[2]].shape == (2, 24, 32)
        assert [x.shape for x in frozen[q[0]][q[1]][q[2]].runs] == [(1, 24, 32)]
        trace = optax.tree_utils.tree_get(state.opt_state, "trace")
        assert jax.tree.map(jnp.shape, trace) == jax.tree.map(jnp.shape, state.trainable)
        if mesh is not None:
            assert _spec(trained[q[0]][q[1]][q[2]]) == (None, "fsdp", "tensor")
            assert _spec(frozen[q[0]][q[1]][q[2]].runs[0]) == (None, "fsdp", "tensor")

    state, step, plan_a, _ = _setup(scanned, stacked, "top_layers", make_mesh(2, 1, 4))
    ckpt = Checkpointer(tmp_path)
    for i, batch in enumerate(batches[:2]):
        state, _ = step(state, place_batch(batch, plan_a.batch))
    ckpt.save(state, meta={})
    ckpt.wait()
    template, step_b, plan_b, _ = _setup(scanned, stacked, "top_layers", make_mesh(1, 4, 2))
    restored = ckpt.restore(template).state
    ckpt.close()
    losses_b = []
    for batch in batches[2:]:
        restored, metrics = step_b(restored, place_batch(batch, plan_b.batch))
        losses_b.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses_b, ref_losses[2:], rtol=2e-5)


def test_frozen_bf16_storage_changes_nothing_under_bf16_compute():
    """Frozen kernels are cast to the compute dtype before use anyway: storing them in it
    gives the same losses and updates, with half their bytes."""
    model, params = _model("llama", "lora")
    model = Model(model.config.with_policy(dtype="bfloat16"), model.head_config)
    batches = _batches("llama", 3)
    ref_losses, _, ref_state = _train(model, params, "lora", None, batches)
    losses, _, state = _train(model, params, "lora", None, batches, frozen_dtype="bfloat16")
    assert losses == ref_losses
    trainable_same = jax.tree.map(np.array_equal, jax.tree.map(np.asarray, state.trainable),
                                  jax.tree.map(np.asarray, ref_state.trainable))
    assert all(jax.tree.leaves(trainable_same))
    frozen = state.frozen["backbone"]
    assert frozen["layers_0"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
    assert frozen["embed_tokens"]["embedding"].dtype == jnp.bfloat16
    assert frozen["norm"]["scale"].dtype == jnp.float32  # fp32 statistics: kept
    assert state.trainable["backbone"]["layers_0"]["self_attn"]["q_proj"]["lora_a"].dtype == \
        jnp.float32

    def nbytes(tree):
        return sum(x.nbytes for x in jax.tree.leaves(tree))

    assert nbytes(state.frozen) < 0.55 * nbytes(ref_state.frozen)


def test_train_end_to_end_on_a_data2_tensor4_mesh(tiny_config_file, tiny_llama_dir, tmp_path):
    """`ftjax train CONFIG --set mesh.data=2 --set mesh.tensor=4`, in process: tiny Llama,
    LoRA on a bf16-stored frozen base, causal LM on packed documents."""
    from ftjax.train.loop import train

    overrides = ["mesh.data=2", "mesh.tensor=4", "steps=4", "eval_every=4",
                 "checkpoint_every=4", "best_metric=", f"model.name={tiny_llama_dir}",
                 "head.kind=lm", "task.kind=causal_lm", "task.max_length=24", "method=lora",
                 "model.frozen_dtype=bfloat16", "optimizer.learning_rate=1e-2"]
    result = train(load_config(tiny_config_file, overrides), tmp_path, quiet=True)
    assert result.final_step == 4 and np.isfinite(result.eval["validation"]["loss"])
    sharding = json.loads((tmp_path / "sharding.json").read_text())
    assert sharding["mesh"] == {"data": 2, "fsdp": 1, "tensor": 4}
    # tiny-llama: 6 heads x 10 = 60 split 4 ways; MLP 37 cannot, and is reported.
    assert "'tensor'" in sharding["params"]["backbone/layers_0/self_attn/q_proj/lora_b"]
    assert "'tensor'" not in sharding["params"]["backbone/layers_0/mlp/up_proj/kernel"]
    assert any("mlp/up_proj/kernel" in f for f in sharding["replicated_for_divisibility"])
    q = result.state.params["backbone"]["layers_0"]["self_attn"]["q_proj"]
    assert dict(q["lora_b"].sharding.mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert q["kernel"].dtype == jnp.bfloat16 and q["lora_b"].dtype == jnp.float32
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "split" not in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # Export / generate rebuild the frozen base at its stored precision, adapters restored.
    from ftjax.train.restore import restore_run

    _, restored = restore_run(tmp_path, full_precision=True)
    q_full = restored.state.params["backbone"]["layers_0"]["self_attn"]["q_proj"]
    assert q_full["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(q_full["lora_b"], q["lora_b"])

    with pytest.raises(ConfigError, match="3 slots but there are 8 devices"):
        train(load_config(tiny_config_file, ["mesh.data=3"]), tmp_path / "bad", quiet=True)
    with pytest.raises(ConfigError, match="eval_batch_size=12 does not split"):
        train(load_config(tiny_config_file, ["eval_batch_size=12"]), tmp_path / "bad2",
              quiet=True)
