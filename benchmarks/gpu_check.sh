#!/usr/bin/env bash
# GPU readiness in one prepared run (under 8 minutes on one GPU):
#   1. python / torch / CUDA versions and the device names (exit 3 without CUDA);
#   2. the CUDA tests (`pytest -m cuda`; a skipped CUDA test counts as a failure);
#   3. the quick benchmark suite on CUDA (benchmarks/run_all.py --device cuda --quick).
# Usage: benchmarks/gpu_check.sh [DEST]   (DEST default: $OUT, else ./gpu_check_out)
# Writes to DEST: device.txt, cuda_tests.txt, cuda_tests.xml, suite_<net>.txt and
# suite_<net>.json per network, gpu_check.log (everything) and summary.txt (one line per step).
# Exit status: 0 when every step passed, 3 without CUDA, else 1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DEST="${1:-${OUT:-$PWD/gpu_check_out}}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not an installed copy
export DNNBRAIN_OFFLINE=1 TQDM_DISABLE=1
LOG="$DEST/gpu_check.log"
SUMMARY="$DEST/summary.txt"
: > "$LOG"
: > "$SUMMARY"

# Per-step limits (seconds); with 15 s to stop each step they sum to 7.75 min at most.
LIMIT_DEVICE=30
LIMIT_TESTS=90
LIMIT_SUITE_NET=90
# The quick suite, one network per step (a step that times out loses only its own
# figures): the one-pass methods, IG, SmoothGrad, occlusion and Score-CAM on 4 images
# (on CUDA), the PAIR methods on 1; ViT-B/16 only in the full suite.
SUITE_NETS=(shapenet resnet18 alexnet)
SUITE_ARGS=(--device cuda --quick --pair-batch 1)
FAILED=0

step() {  # step NAME LIMIT OUTFILE CMD...: run CMD with a time limit, log and record it
    local name=$1 limit=$2 outfile=$3 rc start=$SECONDS
    shift 3
    local cmd="$*"
    echo "== $name (limit ${limit} s): ${cmd:0:160}" | tee -a "$LOG"
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$outfile" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    local what="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then what="TIMED OUT"; elif [ "$rc" -ne 0 ]; then what="FAILED"; fi
    echo "$name: $what (exit $rc, $((SECONDS - start)) s)" | tee -a "$SUMMARY" "$LOG"
    return "$rc"
}

# 1. versions and devices; nothing else makes sense without CUDA
if ! step device "$LIMIT_DEVICE" "$DEST/device.txt" "$PY" -c '
import sys, torch
print(f"python {sys.version.split()[0]}; torch {torch.__version__}; CUDA build "
      f"{torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available (torch.cuda.is_available() is False)")
print(f"CUDA runtime devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
          f"{p.major}.{p.minor}")
x = torch.randn(256, 256, device="cuda")
print(f"matmul on cuda:0 ok: {float((x @ x).sum()):.3f}")
'; then
    echo "gpu_check: no usable CUDA device: stopping (see $DEST/device.txt)" | tee -a "$LOG"
    exit 3
fi
if command -v nvidia-smi > /dev/null; then
    timeout 20 nvidia-smi >> "$DEST/device.txt" 2>&1 || true
fi

# 2. the CUDA tests (marked `cuda` in tests/, registered in pytest.ini)
cd "$REPO"
if step cuda-tests "$LIMIT_TESTS" "$DEST/cuda_tests.txt" "$PY" -m pytest -q -m cuda -rs \
        -p no:cacheprovider --junitxml "$DEST/cuda_tests.xml" tests; then
    # a CUDA test that skipped did not check anything on this GPU
    if ! "$PY" -c '
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s[0]
n, skipped = int(s.get("tests")), int(s.get("skipped"))
print(f"cuda tests: {n} run, {skipped} skipped")
sys.exit(1 if skipped or n == 0 else 0)' "$DEST/cuda_tests.xml" | tee -a "$SUMMARY" "$LOG"; then
        echo "cuda-tests: FAILED (a CUDA test skipped, or none ran)" | tee -a "$SUMMARY" "$LOG"
        FAILED=1
    fi
else
    FAILED=1
fi

# 3. the quick benchmark suite on CUDA (figures: suite_<net>.txt and .json)
cd "$HERE"
for net in "${SUITE_NETS[@]}"; do
    step "suite-$net" "$LIMIT_SUITE_NET" "$DEST/suite_$net.txt" "$PY" run_all.py \
        "${SUITE_ARGS[@]}" --nets "$net" --json "$DEST/suite_$net.json" || FAILED=1
done

echo "gpu_check: $( [ "$FAILED" -eq 0 ] && echo passed || echo FAILED ); figures and logs in $DEST/" \
    | tee -a "$SUMMARY" "$LOG"
exit "$FAILED"
