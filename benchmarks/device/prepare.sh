#!/usr/bin/env bash
# Run HERE (the CPU machine) before a session's device calls; see benchmarks/device/README.md.
#
# The device image has jax (CUDA), flax, optax, orbax, torch, transformers and peft, but not
# grain, ml_collections, gguf, tensorboardX (and two of their needs): those travel as wheels for
# its Python 3.12. SmolLM2's GGUF (98 MB) is over one call's 64 MiB with the working tree, so it
# travels in two halves, one per call (.device/a, .device/b; both folders are git-ignored).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}

rm -rf .whl .device
mkdir -p .whl .device/a .device/b
# Pinned to the versions the test suite runs with here (pip show in .venv).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 portpicker==1.6.0 \
    ml_collections==1.1.0 gguf==0.19.0 tensorboardX==2.6.5

gguf=$("$PY" -m ftjax.assets fetch smollm2-135m-instruct | sed 's/^[^:]*: //')
size=$(stat -c %s "$gguf")
half=$(( (size + 1) / 2 ))
head -c "$half" "$gguf" > .device/a/smollm2.gguf.part
tail -c +"$(( half + 1 ))" "$gguf" > .device/b/smollm2.gguf.part
sha256sum "$gguf" | cut -d' ' -f1 > .device/b/smollm2.gguf.sha256
basename "$gguf" > .device/b/smollm2.gguf.name
du -sh .whl .device/a .device/b
