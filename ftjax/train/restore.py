"""A finished or interrupted run, rebuilt from its directory (for eval, export, generation)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from ftjax.data import ROLES
from ftjax.io.checkpoint import Checkpointer
from ftjax.peft import merge_peft
from ftjax.settings import ConfigError
from ftjax.train.config import config_from_dict
from ftjax.train.experiment import build_experiment, in_dtype, load_model

# What a run saved about its data (ftjax.data.data_facts), beside config.json.
DATA_FACTS = "data.json"


def restore_run(workdir, *, best: bool = False, cfg=None, full_precision: bool = False,
                roles=None):
    """(experiment, Restored) of an `ftjax train` run directory: the experiment rebuilt from
    `cfg` (default: the run's saved config.json) and its latest (or best) checkpoint.

    The saved config's `mesh` block is not reused: the run may have been trained on another
    machine's devices, and the checkpoint restores onto any mesh. Without `cfg` the default mesh
    (data parallel over this machine's devices) is used; pass a cfg to choose one.
    full_precision: rebuild the frozen leaves at the run's param_dtype even if it trained with a
    lower model.frozen_dtype (they are the pretrained weights; checkpoints never hold them), for
    export and generation.
    roles: the splits to load (default: validation and test when the run saved its data
    facts, which is all evaluation needs; a teacher's targets may want the train split).
    A newer checkpoint that is corrupt or incomplete is skipped with a warning (see
    Checkpointer.restore and Restored.skipped); one that does not fit the rebuilt state raises
    IncompatibleCheckpointError.
    """
    workdir = Path(workdir)
    if cfg is None:
        config_file = workdir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{workdir} has no config.json: is it an `ftjax train` workdir?")
        values = json.loads(config_file.read_text())
        values.pop("mesh", None)  # the schema's default mesh: whatever devices are here
        cfg = config_from_dict(values, str(config_file))
    if full_precision and cfg.model.frozen_dtype is not None:
        cfg = config_from_dict({**cfg.to_dict(), "model": {**cfg.model.to_dict(),
                                                           "frozen_dtype": None}}, str(workdir))
    facts_file = workdir / DATA_FACTS
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else None
    # With the saved facts (label names, train sizes) the train split need not be read.
    if roles is None:
        roles = ("validation", "test") if facts is not None else ROLES
    exp = build_run_experiment(cfg, roles=roles, data_facts=facts)
    # Read only: a run directory may be read-only (shared, archived); nothing is written to it.
    ckpt = Checkpointer(workdir, keep=cfg.keep_checkpoints, read_only=True)
    try:
        restored = ckpt.restore(exp.state, best=best)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in {workdir}")
    return exp, restored


def build_run_experiment(cfg, **kwargs):
    """`build_experiment(cfg, ...)` with the weights `cfg.init_from` names, when it names a run:
    what `ftjax train`, eval, export and generate build (a stage-two run is rebuilt from its
    stage one's weights every time: its checkpoints hold only what it trains)."""
    base = final_weights(cfg.init_from) if cfg.init_from else None
    return build_experiment(cfg, base_params=base, load_model=load_run_model, **kwargs)


def load_run_model(spec: str, dtype: str = "float32") -> tuple:
    """(model, params) for a loss term (a teacher): a finished run's workdir (the checkpoint
    its results report, with whatever method it trained), else as
    ftjax.train.experiment.load_model (a pretrained model or an adapter directory)."""
    workdir = Path(spec)
    if not (workdir / "results.json").is_file():
        return load_model(spec, dtype)
    best = json.loads((workdir / "results.json").read_text()).get("best_step") is not None
    exp, restored = restore_run(workdir, best=best, full_precision=True)
    return in_dtype(exp.model, jax.device_get(restored.state.params), dtype)


def final_weights(workdir) -> dict:
    """A finished run's final parameters (the checkpoint its results report: the best one when
    it kept one), LoRA and (IA)^3 merged into the pretrained architecture, as host arrays."""
    workdir = Path(workdir)
    results_file = workdir / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"init_from {workdir}: no results.json there; start from a finished "
                          f"`ftjax train` run")
    best = json.loads(results_file.read_text()).get("best_step") is not None
    exp, restored = restore_run(workdir, best=best, full_precision=True)
    try:
        _, params = merge_peft(exp.model, restored.state.params)
    except ValueError as err:  # adapters, prefix / prompt tuning: no weights to fold into
        raise ConfigError(f"init_from {workdir}: {err}") from None
    return jax.device_get(params)
