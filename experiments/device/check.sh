#!/usr/bin/env bash
# The CUDA path on one GPU, in at most 8 minutes: run from the repository root as
#     bash experiments/device/check.sh
# on a machine with the project installed (`pip install -e '.[test]'`). Each stage has its own time limit:
#   1. the tests that need CUDA (AMP, channels-last, SyncBatchNorm under torch.distributed on one GPU, export of a
#      GPU-trained model run on CUDA): tests/test_cuda.py, plus the channels-last and checkpoint-state tests  (150 s)
#   2. 300-iteration runs of supervised and cac on P2 (CamVid; P1's synthetic data when CamVid is absent)     (200 s)
#   3. each method's training step time against supervised (experiments/benchmarks/step_time.py --device cuda,
#      needs CamVid 96x128 under ../shared/data)                                                              (100 s)
# Writes experiments/benchmarks/results/device_check-<UTC time>.md (and .json of stage 2); without CUDA it says
# so in that file and exits 0.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
PYTHON=${PYTHON:-python}
RESULTS=experiments/benchmarks/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$RESULTS/device_check-$STAMP.md
mkdir -p "$RESULTS"
started=$(date +%s)

section() { printf '\n## %s\n\n' "$1" >> "$REPORT"; }
fenced() { printf '```\n' >> "$REPORT"; cat >> "$REPORT"; printf '```\n' >> "$REPORT"; }

{
  echo "# Device check $STAMP"
  echo
  echo "Script: \`experiments/device/check.sh\`; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "|",
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'
} > "$REPORT" 2>&1

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "skipped: no CUDA device on this machine; nothing of the GPU path ran" | tee -a "$REPORT"
  exit 0
fi

section "1. Tests that need CUDA"
timeout 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_channels_last.py \
  tests/test_checkpoint_state.py 2>&1 | tail -n 25 | fenced
tests_status=${PIPESTATUS[0]}
echo "exit status: $tests_status" >> "$REPORT"

section "2. 300-iteration runs (AMP, CUDA, no Ray)"
timeout 200 "$PYTHON" experiments/device/short_runs.py --steps 300 --out "$RESULTS/device_check-$STAMP.json" \
  2>&1 | grep -v '^\[raysemi\] step' | tail -n 20 | fenced
echo "exit status: ${PIPESTATUS[0]}; numbers in \`device_check-$STAMP.json\`" >> "$REPORT"

section "3. Step time against supervised"
timeout 100 "$PYTHON" experiments/benchmarks/step_time.py --device cuda --steps 20 --warmup 5 --rounds 2 \
  --tag "device-$STAMP" 2>&1 | tail -n 20 | fenced
echo "exit status: ${PIPESTATUS[0]}; table in \`step_time-device-$STAMP.md\` when CamVid was there" >> "$REPORT"

echo "wall time: $(( $(date +%s) - started )) s" >> "$REPORT"
echo "written: $REPORT"
exit "$tests_status"
