"""The races of `python -m benchmarks.race accuracy`: one task each, the same data, model and
recipe on both sides, and the validation target fixed before measuring.

    polarity_full / polarity_lora   all-MiniLM-L6-v2, sentence polarity (accuracy)
    ner_full                        all-MiniLM-L6-v2, WNUT-16 tweets NER (seqeval entity F1)
    clm_lora                        SmolLM2-135M-Instruct + LoRA, packed causal-LM text of the
                                    State of the Union addresses (perplexity)

Each race writes its data once as jsonl files that the HF script reads; ftjax reads the same
files (polarity, clm) or the asset they were written from, split the same way (ner: ftjax's
CoNLL reader of the `wnut16` asset, its seeded 0.8 / 0.1 / 0.1 split). A race's `ftjax_sets`
are `--set` overrides of its experiment file; `hf_args` the HF script's arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
GROUP_WINDOW = 50  # batches per length-sorting window (HF's megabatches are 50 batches)


@dataclasses.dataclass(frozen=True)
class Race:
    name: str
    experiment: Path  # ftjax's experiment file
    hf_script: str  # the module HF's side runs (python -m ...)
    model: str  # the ftjax asset both sides start from
    metric: str  # the validation metric the target is on (also the test figure)
    higher_is_better: bool
    target: float  # the validation figure to reach (relative: x the run's step-0 figure),
    # fixed before measuring
    steps: int
    eval_every: int
    batch_size: int
    max_length: int
    lr: float
    warmup: int
    ftjax_sets: dict
    hf_args: tuple[str, ...]
    write_data: Callable[[Path], dict]  # directory -> facts (real tokens per example, ...)
    relative: bool = False  # the target is a factor of the run's step-0 figure (evaluated)

    def threshold(self, start: float | None) -> float:
        """The figure to reach, given the run's step-0 validation figure (relative targets)."""
        if not self.relative:
            return self.target
        if start is None:
            raise ValueError(f"race {self.name}: a relative target needs the step-0 evaluation")
        return self.target * start

    def reached(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.higher_is_better else value <= threshold


# ------------------------------------------------------------------------------------------
# Data


def _write_jsonl(path: Path, rows) -> int:
    with open(path, "w") as f:
        n = 0
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def _tokenizer(model: str):
    from ftjax import assets
    from ftjax.io.tokenizer import load_tokenizer

    return load_tokenizer(assets.resolve(model))


def write_polarity(directory: Path, max_length: int = 64) -> dict:
    """The polarity splits ftjax trains on, as {"text", "label"} rows."""
    from ftjax.data import polarity_splits

    directory.mkdir(parents=True, exist_ok=True)
    splits = polarity_splits()
    for split, rows in splits.items():
        _write_jsonl(directory / f"{split}.jsonl",
                     ({"text": r["text"], "label": int(r["label"])} for r in rows))
    tokenizer = _tokenizer("all-minilm-l6-v2")
    lengths = [min(len(tokenizer.encode(r["text"])), max_length) for r in splits["train"]]
    return {"real_tokens_per_example": sum(lengths) / len(lengths)}


NER_EXPERIMENT = ROOT / "experiments" / "ner_wnut16_minilm.py"


def write_ner(directory: Path, max_length: int = 48) -> dict:
    """ftjax's split of the wnut16 asset as {"tokens", "tags"} rows (tag names) and tags.json
    (the tag set, in ftjax's order)."""
    from ftjax.data.token_classification import load_tagged_source
    from ftjax.train.config import load_config, typed

    directory.mkdir(parents=True, exist_ok=True)
    run = typed(load_config(NER_EXPERIMENT))
    loaded = load_tagged_source("wnut16", run.sources["wnut16"])
    names = list(loaded.label_names)
    for role, records in loaded.splits.items():
        _write_jsonl(directory / f"{role}.jsonl",
                     ({"tokens": r["tokens"], "tags": [names[t] for t in r["tags"]]}
                      for r in records))
    (directory / "tags.json").write_text(json.dumps(names))
    # Real tokens per sentence: each word tokenized on its own (as both sides do), [CLS] and
    # [SEP] added, cut to max_length.
    tokenizer = _tokenizer("all-minilm-l6-v2")
    lengths = [min(2 + sum(len(tokenizer.encode(w, add_special_tokens=False))
                           for w in r["tokens"]), max_length)
               for r in loaded.splits["train"]]
    return {"real_tokens_per_example": sum(lengths) / len(lengths),
            "sentences": {role: len(r) for role, r in loaded.splits.items()}}


CLM_SOURCE = {"kind": "local", "format": "txt", "txt_unit": "document", "label_column": None,
              "split_fractions": (0.9, 0.05, 0.05), "split_seed": 0, "max_eval_examples": 4}


def write_clm(directory: Path, max_length: int = 256) -> dict:
    """The State of the Union speeches split by speech as experiments/dapt_clm_smollm2.py
    splits them (0.9 / 0.05 / 0.05, seed 0, 4 held-out speeches evaluated per split), as
    {"text"} rows, one speech each."""
    from ftjax import assets
    from ftjax.data.config import SourceConfig
    from ftjax.data.loading import load_source

    directory.mkdir(parents=True, exist_ok=True)
    config = SourceConfig(path=str(assets.resolve("sotu") / "*.txt"), **CLM_SOURCE)
    loaded = load_source("sotu", config, needs_labels=False)
    for role, records in loaded.splits.items():
        _write_jsonl(directory / f"{role}.jsonl", ({"text": r["text"]} for r in records))
    return {"real_tokens_per_example": float(max_length),  # packed rows are full
            "speeches": {role: len(r) for role, r in loaded.splits.items()}}


# ------------------------------------------------------------------------------------------
# The races


def _polarity(mode: str, lr: float, target: float) -> Race:
    steps, batch, length = 400, 32, 64
    return Race(
        name=f"polarity_{mode}", experiment=ROOT / "experiments" / "polarity_minilm.py",
        hf_script="benchmarks.hf_polarity", model="all-minilm-l6-v2", metric="accuracy",
        higher_is_better=True, target=target, steps=steps, eval_every=50, batch_size=batch,
        max_length=length, lr=lr, warmup=40,
        ftjax_sets={"data.source": "local", "data.path": "{data}/{{split}}.jsonl",
                    "head.pooling": "pooler", "head.dropout": 0.1, "method": mode,
                    "data.buckets": (16, 32, 48, 64)},
        hf_args=("--mode", mode), write_data=write_polarity)


def _ner() -> Race:
    steps = 480
    return Race(
        name="ner_full", experiment=NER_EXPERIMENT, hf_script="benchmarks.hf_ner",
        model="all-minilm-l6-v2", metric="f1", higher_is_better=True, target=0.40,
        steps=steps, eval_every=80, batch_size=16, max_length=48, lr=5e-4, warmup=steps // 10,
        ftjax_sets={"head.dropout": 0.1, "data.buckets": (16, 32, 48)},
        hf_args=("--schedule", "linear"), write_data=write_ner)


def _clm() -> Race:
    steps = 40
    return Race(
        name="clm_lora", experiment=ROOT / "benchmarks" / "race_clm_smollm2.py",
        hf_script="benchmarks.hf_clm", model="smollm2-135m-instruct", metric="perplexity",
        higher_is_better=False,
        # 10% below the untrained model's validation perplexity: the experiment's 80-step run
        # of this recipe went from 30.24 to 25.50 (16% lower).
        target=0.9, relative=True, steps=steps, eval_every=20, batch_size=4, max_length=256, lr=5e-4,
        warmup=4, ftjax_sets={"data.path": "{data}/{{split}}.jsonl"},
        hf_args=("--schedule", "cosine", "--eval-batch-size", "8"), write_data=write_clm)


RACES = {race.name: race for race in (
    _polarity("full", 5e-5, 0.82), _polarity("lora", 1e-3, 0.80), _ner(), _clm())}
