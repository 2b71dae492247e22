"""Domain-adaptive continued pretraining: a short real run of experiments/dapt_clm_smollm2.py
(State of the Union speeches, packed; movie reviews evaluated only) reports the perplexity of
both sources before and after, and the general text never trains."""

import json
import math
from pathlib import Path

from ftjax import assets
from ftjax.data.readers import read_rows
from ftjax.train.config import load_config
from ftjax.train.loop import train

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "dapt_clm_smollm2.py"


def test_every_speech_file_is_one_document_named_by_its_file():
    rows = read_rows(assets.resolve("sotu") / "179*.txt", txt_unit="document")
    assert [r.fields["file"] for r in rows] == sorted(r.fields["file"] for r in rows)
    assert len(rows) == 10 and rows[0].fields["file"] == "1790_george_washington_n.txt"
    assert rows[0].fields["text"].startswith("Fellow-Citizens of the Senate")


def test_short_real_run_reports_domain_and_general_perplexity(tmp_path):
    speeches = assets.resolve("sotu") / "18[01]*.txt"  # 1800-1819: 20 shorter speeches
    # Scanned layers: one compiled block instead of 30 (compilation is most of this test's
    # time); the layout computes the same model (tests/test_models.py).
    cfg = load_config(EXPERIMENT, [
        f"sources.sotu.path={str(speeches)!r}", "sources.general.max_eval_examples=24",
        "task.max_length=128", "model.scan_layers=True", "steps=2", "eval_every=2", "checkpoint_every=2", "log_every=1"])
    result = train(cfg, tmp_path, quiet=True)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evaluated = {(line["step"], line["split"]): line for line in lines if "split" in line}
    for step in (0, 2):
        for split in ("validation/sotu", "validation/general", "test/sotu", "test/general"):
            metrics = evaluated[(step, split)]
            assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]), rel_tol=1e-6)
    # The split's own entry (what selection follows) is the trained source's alone.
    assert result.eval["validation"]["perplexity"] == result.eval["validation/sotu"]["perplexity"]
    trained_rows = [line for line in lines if "split" not in line]
    assert trained_rows and not any("general" in key for row in trained_rows for key in row)
