"""Arithmetic questions from DeepMind's mathematics_dataset generator, as chat conversations.

The generator needs old sympy and numpy (1.4 and 1.23.5; newer ones crash it), so it runs in a
virtual environment of its own inside the staging directory, removed afterwards; it is never
installed into, or imported by, the running environment. Module `arithmetic__add_or_sub`:
2,000 training questions (the first 1,800 become train.jsonl, the last 200 validation.jsonl)
and 100 from its interpolation test set (test.jsonl). The generator takes no seed, so a fresh
fetch draws other questions; the cached files are what every later run reads.

Each line: {"question", "answer", "messages": [user question, assistant answer]}.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

MODULE = "arithmetic__add_or_sub"
REQUIREMENTS = ("mathematics-dataset==1.0.1", "sympy==1.4", "numpy==1.23.5")
NUM_VALIDATION = 200


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """The generator's file: question and answer lines alternating."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 2:
        raise ValueError(f"{path}: an odd number of lines ({len(lines)}): not question/answer "
                         f"pairs")
    return list(zip(lines[0::2], lines[1::2]))


def _write(path: Path, pairs) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for question, answer in pairs:
            out.write(json.dumps({"question": question, "answer": answer, "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer}]}) + "\n")


def build_math(tree: Path) -> None:
    """Generate the questions and write train / validation / test .jsonl files into `tree`."""
    env = tree / "_generator"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", *REQUIREMENTS])
    out = tree / "_generated"
    _run([python, "-m", "mathematics_dataset.generate_to_file", f"--output_dir={out}",
          f"--filter={MODULE}", "--per_train_module=2000", "--per_test_module=100",
          "--train_split=false"])
    train = read_pairs(out / "train" / f"{MODULE}.txt")
    _write(tree / "train.jsonl", train[:-NUM_VALIDATION])
    _write(tree / "validation.jsonl", train[-NUM_VALIDATION:])
    _write(tree / "test.jsonl", read_pairs(out / "interpolate" / f"{MODULE}.txt"))
    shutil.rmtree(env)
    shutil.rmtree(out)


__all__ = ["build_math", "read_pairs"]
