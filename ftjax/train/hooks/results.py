"""The end of a finished (or early-stopped) run: its reported numbers and its adapter.

Evaluates the kept parameters (the best checkpoint's, when one was restored) on every result
split (the eval splits, then test), reusing an evaluation of the same step; writes the
trainable delta as an adapter-only checkpoint (WORKDIR/adapter, skipped when everything trains:
the delta is the whole model, which the checkpoint and `ftjax export` hold); writes
WORKDIR/results.json and a final metrics row.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from ftjax.io.adapter import save_adapter, save_task_adapters
from ftjax.train.hooks.base import Hook
from ftjax.utils.jsonio import write_json


class FinalReport(Hook):
    def __init__(self, save_adapter: bool = True):
        self.save_adapter = save_adapter

    def on_end(self, trainer, outcome):
        if outcome not in ("finished", "stopped"):
            return
        trainer.checkpoints.wait()
        exp, state, summary = trainer.exp, trainer.state, trainer.summary
        last = summary.get("last_eval", {})
        # An evaluation of these very parameters is reused (with its per-source entries).
        reused = last if last.get("step") == int(state.step) else {}
        missing = [split for split in exp.result_splits if split not in reused]
        every = {**reused, **(trainer.evaluate(missing) if missing else {})}
        result = {key: every[key] for key in every
                  if key != "step" and key.split("/")[0] in exp.result_splits}
        summary["eval"] = result
        adapters = self._adapters(trainer)
        if adapters:
            described = {name: {"path": str(a.path), "params": a.num_params,
                                "bytes": a.num_bytes} for name, a in adapters.items()}
            summary["adapter"] = described.get("", described)
            for name, a in adapters.items():
                trainer.say(f"adapter-only checkpoint{f' of {name}' if name else ''}: "
                            f"{a.num_params:,} parameters, {a.num_bytes / 2**20:.2f} MiB in "
                            f"{a.path}")
        summary["wall_s"] = time.perf_counter() - trainer.started
        if not trainer.primary:
            return
        write_json(trainer.workdir / "results.json", {
            "final_step": summary["final_step"], "best_step": summary.get("best_step"),
            "eval": result, "stopped_early": outcome == "stopped",
            "nonfinite_steps": int(state.nonfinite_steps),
            "train_tokens_per_s": summary.get("train_tokens_per_s", 0.0),
            "wall_s": summary["wall_s"], **summary["params"],
            "adapter": summary.get("adapter"), "step_time_s": summary.get("step_time_s"),
            "step_memory": summary.get("step_memory")})
        trainer.log.write({"step": summary["final_step"], "split": "final", **{
            f"{s}_{k}": v for s, r in result.items() for k, v in r.items()}})

    def _adapters(self, trainer) -> dict:
        """{"": AdapterInfo} of the run's adapter, or {task: AdapterInfo} with an adapter per
        task; {} when none is written (or on a process other than 0)."""
        exp = trainer.exp
        if not self.save_adapter or all(bool(np.all(m)) for m in jax.tree.leaves(exp.mask)):
            return {}
        # The run owns WORKDIR/adapter(s): resuming or re-running it replaces the directory.
        common = dict(base_name=exp.cfg.model.name, method=exp.cfg.method,
                      step=int(trainer.state.step), overwrite=True)
        if exp.model.adapter_slots is not None:
            return save_task_adapters(trainer.workdir / "adapters", exp.model,
                                      trainer.state.params, exp.mask, **common) or {}
        info = save_adapter(trainer.workdir / "adapter", exp.model, trainer.state.params,
                            exp.mask, **common)
        return {} if info is None else {"": info}
