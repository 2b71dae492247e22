"""The device mesh: three named axes, `data`, `fsdp` and `tensor`, from the `mesh` config block.

    mesh.data    pure data parallelism: the batch is split, parameters are replicated
    mesh.fsdp    fully sharded data parallelism: the batch is split AND parameters / optimizer
                 state are sharded along their `embed` axis (gathered for use inside the step)
    mesh.tensor  Megatron tensor parallelism: attention heads, MLP columns and the vocabulary split

Their product is the number of devices (all processes together); one of them may be -1 to take
what the others leave. The default (data=-1) puts every device on `data`: on one device that is
exactly the unsharded program. Which parameter axis goes to which mesh axis is the rules table in
ftjax.parallel.rules.

Multi-host: call `jax.distributed.initialize()` before anything touches a device
(`ftjax train --distributed`, or FTJAX_DISTRIBUTED=1, or any of --coordinator-address /
--num-processes / --process-id); `jax.devices()` then lists every host's devices and the mesh
spans them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from ftjax.settings import setting

AXES = ("data", "fsdp", "tensor")
# The batch is split over every axis that does not split a parameter's model dimension.
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
    """A mesh shape that does not fit the devices; the message says what to change."""


def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1,
               num_devices: int | None = None) -> dict[str, int]:
    """{"data": d, "fsdp": f, "tensor": t} with d * f * t == num_devices (default: all)."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise MeshError(f"mesh.{name} must be a positive int or -1 (fill), got {size!r}")
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise MeshError(f"only one mesh axis may be -1 (fill), got {fill}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if n % fixed:
            raise MeshError(
                f"mesh {_describe(sizes)}: the fixed axes multiply to {fixed}, which does not "
                f"divide the {n} devices, so mesh.{fill[0]}=-1 cannot fill the rest")
        sizes[fill[0]] = n // fixed
    elif fixed != n:
        raise MeshError(f"mesh {_describe(sizes)} has {fixed} slots but there are {n} devices; "
                        f"the product must equal the device count (set one axis to -1 to fill)")
    return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, devices=None) -> Mesh:
    """A jax Mesh with axes ("data", "fsdp", "tensor").

    Axes are Auto (GSPMD propagates shardings through the step from the inputs' and outputs'
    shardings we give), not jax's Explicit sharding-in-types mode, which the model code does not
    annotate for.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = mesh_shape(data, fsdp, tensor, num_devices=len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES,
                         axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh of a run (the `mesh` config block). The product of the sizes is the
    device count of all processes together; one size may be -1 to take the rest."""

    data: int = setting(-1, "batch split, params replicated")
    fsdp: int = setting(1, "batch split, params and optimizer state sharded")
    tensor: int = setting(1, "Megatron tensor parallelism over heads, MLP and vocabulary")

    def __post_init__(self):
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for axis, size in sizes.items():
            if size < 1 and size != -1:
                raise ValueError(f"mesh.{axis} must be >= 1 or -1 (fill), got {size}")
        if list(sizes.values()).count(-1) > 1:
            raise ValueError("only one of mesh.data / mesh.fsdp / mesh.tensor may be -1")


def mesh_from_config(cfg: Any, devices=None) -> Mesh:
    """The mesh of a run config's `mesh` block (or any object with data / fsdp / tensor)."""
    return make_mesh(cfg.data, cfg.fsdp, cfg.tensor, devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split: a global batch must be a multiple of this."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def distributed_requested(flag: bool = False) -> bool:
    """--distributed, or FTJAX_DISTRIBUTED set to 1 / true."""
    return flag or os.environ.get("FTJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """jax.distributed.initialize(): what is not given, jax detects itself (SLURM, Open MPI,
    Kubernetes, TPU pods; the coordinator also from JAX_COORDINATOR_ADDRESS).

    Outside a cluster jax reads no variable for the process count or index (jax 0.10 raises
    "Number of processes must be defined"), so a hand-launched run passes all three. Must run
    before any device is used; one process per host (or per GPU, as the cluster sets up).
    """
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise MeshError(f"process id {process_id} is not in [0, {num_processes}) "
                        f"(--process-id counts from 0 up to --num-processes - 1)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def _describe(sizes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())
