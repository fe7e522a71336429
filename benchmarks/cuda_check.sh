#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (about 13 minutes on one H200: the tests 5.5, the
# benchmark about 1 minute per model):
#   1. the GPU: nvidia-smi's summary and what torch sees;
#   2. python -m pytest -m cuda (tests/test_cuda.py: AMP resume, --deterministic, -predict and
#      -export from a GPU checkpoint, torchrun over NCCL, every model in channels_last);
#   3. tests/test_distributed.py (two processes over NCCL, with two GPUs or more; with fewer they
#      are skipped, since two ranks cannot share one GPU under NCCL and CI runs them on the CPU over
#      gloo; CUDA_CHECK_DISTRIBUTED=1 runs them here on the CPU anyway);
#   4. benchmarks/cuda_throughput.py --quick: one markdown table, a row per model: training img/s with
#      AMP none / bf16 / fp16 and with --deterministic 1's switches, inference img/s, peak memory.
# Output goes to the terminal and to $OUT/cuda_check-<time>.log (OUT defaults to /tmp). The
# table is printed even when tests fail; the exit status is non-zero if any test failed or the
# benchmark could not run.
#
#   bash benchmarks/cuda_check.sh                   # PYTHON=.venv/bin/python bash ... for a venv
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python}"
# without a CUDA GPU every step below would skip or fail: say so at once and stop
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "cuda_check.sh: error: $PYTHON cannot import torch (PYTHON=.venv/bin/python bash $0 for a venv)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "cuda_check.sh: error: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
OUT_DIR="${OUT:-/tmp}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/cuda_check-$(date +%Y%m%d-%H%M%S).log"
: >"$LOG"
BENCH_BUDGET="${BENCH_BUDGET:-600}" # seconds of models started by the benchmark; it then skips the rest

section() { printf '\n===== %s =====\n' "$*" | tee -a "$LOG"; }
failures=()

section "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu \
        --format=csv 2>&1 | tee -a "$LOG" || true
else
    echo "nvidia-smi not found" | tee -a "$LOG"
fi
"$PYTHON" - <<'PY' 2>&1 | tee -a "$LOG" || true
import torch
try:
    nccl = torch.cuda.nccl.version()
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
except Exception:  # a CPU-only build
    nccl = "-"
cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else "-"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, NCCL {nccl}")
print(f"CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for index in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(index)
    print(f"  cuda:{index} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
PY
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$gpus" -eq 0 ]; then
    echo "warning: torch sees no CUDA device: the cuda tests will all be skipped" | tee -a "$LOG"
fi

section "pytest -m cuda"
started=$SECONDS
if ! "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider 2>&1 | tee -a "$LOG"; then
    failures+=("pytest -m cuda")
fi
echo "($((SECONDS - started)) s)" | tee -a "$LOG"

section "tests/test_distributed.py"
started=$SECONDS
distributed_env=()
if [ "$gpus" -ge 2 ]; then
    echo "two processes on two GPUs (NCCL)" | tee -a "$LOG"
elif [ "${CUDA_CHECK_DISTRIBUTED:-0}" = 1 ]; then
    distributed_env=(CUDA_VISIBLE_DEVICES=)
    echo "$gpus GPU(s): two processes need a GPU each under NCCL, so these run on the CPU (gloo)" | tee -a "$LOG"
else
    # two ranks cannot share one GPU under NCCL; on the CPU these are the CI suite's gloo runs
    echo "skipped: $gpus GPU(s), and two processes need a GPU each under NCCL; on the CPU (gloo) CI runs" \
        "them (CUDA_CHECK_DISTRIBUTED=1 runs them here on the CPU)" | tee -a "$LOG"
    distributed_env=(skip)
fi
if [ "${distributed_env[*]-}" != skip ] && ! env ${distributed_env[@]+"${distributed_env[@]}"} \
    "$PYTHON" -m pytest tests/test_distributed.py -q -rs -p no:cacheprovider 2>&1 | tee -a "$LOG"; then
    failures+=("tests/test_distributed.py")
fi
echo "($((SECONDS - started)) s)" | tee -a "$LOG"

section "benchmarks/cuda_throughput.py --quick"
started=$SECONDS
if ! "$PYTHON" benchmarks/cuda_throughput.py --quick --budget "$BENCH_BUDGET" 2>&1 | tee -a "$LOG"; then
    failures+=("benchmarks/cuda_throughput.py")
fi
echo "($((SECONDS - started)) s)" | tee -a "$LOG"

section "summary"
if [ "${#failures[@]}" -eq 0 ]; then
    echo "all passed; log: $LOG" | tee -a "$LOG"
else
    echo "FAILED: ${failures[*]}; log: $LOG" | tee -a "$LOG"
    exit 1
fi
