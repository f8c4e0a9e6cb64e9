#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md#gpu in one go, on a machine with an NVIDIA GPU (or a TPU):
#   bench/gpu_check.sh OUT_DIR [DATA_ROOT] [TEACHER]
# 1. the fused-attention tests (cuDNN's kernel against XLA's attention: logits and gradients);
# 2. bench/accelerator.py: the BERT-base bfloat16 train step at batch 512 and 256 (MFU, ours / PyTorch),
#    inference at batch 128, the data-parallel cases where JAX sees several devices, the no-dropout
#    diagnostic, then the teacher labelling all of SST-2 train, ours and PyTorch's.
# DATA_ROOT holds glue/SST-2 (default ../shared/data); TEACHER is minilm by default, or a directory with
# the teacher's config and tokenizer (random weights are made where it has none: the speed is the same).
# About 6 minutes on one H100 or H200. Writes OUT_DIR/{fused-attention.log,accelerator.json,accelerator.log};
# exits non-zero if either step failed.
set -uo pipefail
usage="usage: bench/gpu_check.sh OUT_DIR [DATA_ROOT] [TEACHER]"
out=$(realpath -m "${1:?$usage}")
root=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath -m "${2:-$root/../shared/data}")
teacher=${3:-minilm}
[ "$teacher" = minilm ] || teacher=$(realpath -m "$teacher")
mkdir -p "$out"
cd "$root"
export PYTHONUNBUFFERED=1
status=0
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$out/accelerator.log"
python3 -m pytest -q -p no:cacheprovider tests/distill/model/test_fused_attention.py 2>&1 \
    | tee "$out/fused-attention.log" || status=1
python3 bench/accelerator.py --dtypes bfloat16 --train-batches 512 256 --infer-batches 128 \
    --variants no-dropout --budget-s 240 --data-root "$data" --label-teacher "$teacher" \
    --out "$out/accelerator.json" 2>&1 | tee -a "$out/accelerator.log" || status=1
exit $status
