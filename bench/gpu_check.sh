#!/usr/bin/env bash
# Everything torchmoo needs a CUDA GPU for, in one call (about 10 minutes on one GPU):
#   1. build with the CUDA kernels (TORCHMOO_CUDA=ON) against the installed torch (no download),
#   2. the `cuda`-marked tests (gram, combine, Stein, MINRES, QP operators against their CPU twins),
#   3. the GPU benchmarks: MINRES overhead over the HVPs (batch 64 / 256 / 1024, k = 4), the PNG step
#      against a linear-scalarization step, and the pytest-benchmark groups marked `cuda`.
# Logs and markdown tables go to the folder given as $1 (default: $OUT, else ./gpu_results); a short
# summary is printed last. Usage, from the repository root:  bash bench/gpu_check.sh [OUTDIR]
set -uo pipefail

out=${1:-${OUT:-gpu_results}}
mkdir -p "$out"
py=${PYTHON:-python3}
status=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, keep the log, remember a failure, go on
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || status=1
    return $rc
}

: > "$out/summary.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee -a "$out/summary.txt"

if [ "${SKIP_BUILD:-0}" = 1 ]; then echo "build: skipped (SKIP_BUILD=1)" | tee -a "$out/summary.txt"
elif ! step build 900 "$py" -m pip install --no-build-isolation --no-deps -v -C cmake.define.TORCHMOO_CUDA=ON .; then
    tail -40 "$out/build.log"
    exit 1
fi
step import 60 "$py" -c "import torch, torchmoo; assert torchmoo.cuda_built, 'built without CUDA'; \
assert torch.cuda.is_available(); print('cuda_built', torchmoo.cuda_built)"

step cuda_tests 900 "$py" -m pytest -m cuda tests -q -p no:cacheprovider -rs
step minres_bench 900 "$py" bench/test_bench_minres.py --device cuda --batches 64 256 1024
step png_bench 600 "$py" bench/test_bench_png.py --device cuda
step cuda_pytest_bench 600 "$py" -m pytest -m cuda bench -q -p no:cacheprovider

{
    echo
    echo "## cuda tests"; tail -5 "$out/cuda_tests.log"
    echo; echo "## MINRES (ratio = solve / 50 HVPs)"; grep -E "^\*\*|^\| torchmoo|^\| 50 HVPs|^\| scipy" "$out/minres_bench.log"
    echo; echo "## PNG"; grep -E "^\*\*|^\| |fastest" "$out/png_bench.log"
} > "$out/tables.md" 2>&1
cat "$out/summary.txt" "$out/tables.md"
exit $status
