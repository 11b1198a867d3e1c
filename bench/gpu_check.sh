#!/usr/bin/env bash
# Everything torchmoo needs a CUDA GPU for, in one call that fits in ten minutes on one GPU:
#   1. build with the CUDA kernels (TORCHMOO_CUDA=ON, this GPU's architecture only) against the
#      installed torch (nothing is downloaded),
#   2. the `cuda`-marked tests (every CUDA kernel against its CPU twin, sync-free paths, devices),
#   3. the GPU benchmarks, most wanted first: the PNG step against a linear-scalarization step, the MINRES
#      overhead over the HVPs (batch 64 / 256 / 1024, k = 4), the pytest-benchmark groups marked `cuda`.
# Each step has its own time limit (together 585 s) and the whole script a deadline (GPU_CHECK_BUDGET_S,
# default 585 s: no step runs past it), and the tables are rewritten after each benchmark, so a run
# stopped from outside still leaves what it measured. Files go to the folder given as $1 (default: $OUT,
# else ./gpu_results; a relative path is taken from the directory the script is started in):
# summary.txt, tables.md and one log per step (build, import, cuda_tests, png_bench, minres_bench,
# cuda_pytest_bench).
# Environment: PYTHON (default python3); WHEELS, a folder of wheels installed first (for a machine
# without network: e.g. moocore); CUDA_ARCH (default native); SKIP_BUILD=1 to test an installed build.
# Usage:  bash bench/gpu_check.sh [OUTDIR]
set -uo pipefail

out=${1:-${OUT:-gpu_results}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1  # absolute: the steps run from another directory
wheels=${WHEELS:-}
[ -z "$wheels" ] || wheels=$(cd "$wheels" && pwd) || exit 1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1  # the repository root, wherever the script is started
py=${PYTHON:-python3}
status=0
export PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-585}))

step() {  # step NAME TIMEOUT_S COMMAND...: run, keep the log, remember a failure, go on
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS left=$((deadline - SECONDS - 5))  # 5 s: timeout's grace before SIGKILL
    [ "$left" -ge "$limit" ] || limit=$left
    if [ "$limit" -lt 5 ]; then
        echo "$name: not run, the script's time is up" | tee -a "$out/summary.txt"
        status=1
        return 1
    fi
    timeout -k 5 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || status=1
    return $rc
}

tables() {  # the markdown tables of the benchmarks run so far
    {
        echo "## cuda tests"; tail -5 "$out/cuda_tests.log" 2>/dev/null
        echo; echo "## PNG"; grep -E "^\*\*|^\| |fastest|floor|second-order" "$out/png_bench.log" 2>/dev/null
        echo; echo "## MINRES (ratio = time / time of the reference named above each table)"
        grep -E "^\*\*|^\| " "$out/minres_bench.log" 2>/dev/null
        echo; echo "## pytest-benchmark groups marked cuda"
        sed -n '/torchmoo benchmark ratios/,$p' "$out/cuda_pytest_bench.log" 2>/dev/null
    } > "$out/tables.md"
}

: > "$out/summary.txt"
timeout -k 5 30 nvidia-smi >> "$out/summary.txt" 2>&1 || true
if [ -n "$wheels" ]; then
    timeout -k 5 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site "$wheels"/*.whl >> "$out/summary.txt" 2>&1 \
        && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout -k 5 60 "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0))" 2>&1 | tee -a "$out/summary.txt"

if [ "${SKIP_BUILD:-0}" = 1 ]; then echo "build: skipped (SKIP_BUILD=1)" | tee -a "$out/summary.txt"
elif ! step build 260 "$py" -m pip install --no-build-isolation --no-deps -v \
        -C cmake.define.TORCHMOO_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-native}" .; then
    tail -40 "$out/build.log"
    exit 1
fi
src=$PWD
cd "$(mktemp -d)" || exit 1  # run from outside the source tree: the installed package is the one tested
if ! step import 30 "$py" -c "import torch, torchmoo; assert torchmoo.cuda_built, 'built without CUDA'; \
assert torch.cuda.is_available(); print('torchmoo', torchmoo.__version__, 'cuda_built', torchmoo.cuda_built)"; then
    tail -20 "$out/import.log"
    exit 1
fi

per_test=()  # a hanging kernel must not eat the other steps' time
"$py" -c "import pytest_timeout" 2> /dev/null && per_test=(--timeout 60)
step cuda_tests 120 "$py" -m pytest -m cuda "$src/tests" -q -p no:cacheprovider -rs ${per_test[@]+"${per_test[@]}"}
tables
step png_bench 60 "$py" "$src/bench/test_bench_png.py" --device cuda --second-order 3
tables
step minres_bench 70 "$py" "$src/bench/test_bench_minres.py" --device cuda --batches 64 256 1024
tables
step cuda_pytest_bench 45 "$py" -m pytest -m cuda "$src/bench" -q -p no:cacheprovider -rs
tables
cat "$out/summary.txt" "$out/tables.md"
exit $status
