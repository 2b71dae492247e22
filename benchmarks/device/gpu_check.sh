#!/usr/bin/env bash
# Run THERE (the device machine), from the repo root, in two calls of one warm machine:
#   stage 1 (carry .whl and .device/a): GPU tests, the 1.1B LoRA benchmark vs torch.compile
#   stage 2 (carry .device/b), within 30 s of stage 1: SmolLM2 generation on GPU (bf16, cuDNN
#     attention), the 1.1B full fine-tuning benchmark
# Everything lands in $OUT. See benchmarks/device/README.md for the device-time budget.
set -uo pipefail
stage=${1:?usage: gpu_check.sh 1|2}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ftjax

if [ ! -d /tmp/site/grain ]; then
    if ! ls .whl/*.whl > /dev/null 2>&1; then
        echo "no wheels here: stage 2 must follow stage 1 on the same warm machine (carry .whl)"
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD

step() { echo "=== $* ($(date +%T))" | tee -a "$OUT/steps.txt"; }
# GPU_CHECK_SMOKE=1: tiny benchmark shapes, to try this script on a CPU machine first.
shapes=(--parts grid --sizes 1.1B)
[ -n "${GPU_CHECK_SMOKE:-}" ] && shapes=(--smoke)

if [ "$stage" = 1 ]; then
    cp .device/a/smollm2.gguf.part /tmp/ftjax/part-a
    step "devices"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
    step "tests on the GPU backend (fp32 matmuls at full precision for the parity tolerances)"
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 python3 -m pytest -q -p no:cacheprovider \
        -W ignore::DeprecationWarning tests/test_models.py tests/test_train_step.py \
        tests/test_generate.py > "$OUT/pytest_gpu.txt" 2>&1
    echo "pytest exit $?" | tee -a "$OUT/steps.txt"; tail -5 "$OUT/pytest_gpu.txt"
    step "1.1B LoRA: ftjax vs torch.compile + peft"
    timeout 330 python3 -m benchmarks.run --suite gpu "${shapes[@]}" --modes lora \
        --impls ftjax,torch.compile --timeout 300 --run-id "gpu-lora-$(date +%Y%m%d-%H%M%S)" \
        --out "$OUT" 2>&1 | tail -20
elif [ "$stage" = 2 ]; then
    if [ ! -f /tmp/ftjax/part-a ]; then
        echo "the GGUF's first half is gone: the machine was given back after stage 1; run"
        echo "stage 1 again (or carry .device/a and copy it to /tmp/ftjax/part-a) first"
        exit 1
    fi
    name=$(cat .device/b/smollm2.gguf.name)
    cat /tmp/ftjax/part-a .device/b/smollm2.gguf.part > "/tmp/ftjax/$name"
    echo "$(cat .device/b/smollm2.gguf.sha256)  /tmp/ftjax/$name" | sha256sum -c - || exit 1
    step "ftjax generate on GPU (default: bf16 compute, attention as ftjax picks it)"
    timeout 180 python3 -m ftjax.cli generate --model "/tmp/ftjax/$name" \
        --prompt "The capital of France is" --greedy --max-new-tokens 8 --stats \
        2>&1 | tee "$OUT/generate_gpu.txt"
    step "1.1B full fine-tuning: ftjax vs torch.compile"
    timeout 330 python3 -m benchmarks.run --suite gpu "${shapes[@]}" --modes full \
        --impls ftjax,torch.compile --timeout 300 --run-id "gpu-full-$(date +%Y%m%d-%H%M%S)" \
        --out "$OUT" 2>&1 | tail -20
fi
step "done"
