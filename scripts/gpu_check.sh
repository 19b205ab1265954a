#!/usr/bin/env bash
# The GPU proof in one call: CUDA tests, GPU against CPU, GPU and CPU step times.
#
#   bash scripts/gpu_check.sh                          # on a machine with a CUDA GPU
#   NUMBA_ENABLE_CUDASIM=1 bash scripts/gpu_check.sh --smoke   # the plumbing, no GPU, seconds
#
# Uses the machine's own python3 (or $PYTHON) with the repository on PYTHONPATH:
# nothing is installed or downloaded. The parts (benchmarks/gpu_report.py) run one
# after another, each in its own process with its own time cap, so a failing test,
# a case that does not fit in memory or a part killed at its cap loses nothing of
# the others. The whole run stays within --budget seconds (default 460: under 8
# minutes); time a part leaves unused goes to the parts after it.
#
# Writes ONE markdown file: $OUT/gpu_check.md when OUT is set (and the log beside
# it, $OUT/gpu_check.log), else prints it to stdout (the log stays in a temporary
# folder, named on stderr). Exit status: 0 when every part passed, 1 when one
# failed, was killed at its cap or did not run, 2 for bad arguments, 3 when there
# is no GPU.
#
# Options:
#   --smoke          tiny sizes; under NUMBA_ENABLE_CUDASIM=1 no GPU is needed
#   --budget SECONDS the whole run's wall time (default 460; --smoke: 200)
# Environment: PYTHON (default python3), OUT, GPU_CHECK_THREADS (CPU part's numba and
# torch threads, default min(16, cores)), GPU_CHECK_WORKERS (pytest-xdist workers of the
# CUDA suite, default 4 when xdist is there; 0 runs it in one process).

set -u

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

SMOKE=0
BUDGET=
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --budget)
            [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] ||
                { echo "gpu_check: --budget needs seconds" >&2; exit 2; }
            BUDGET=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)

# -- is there a GPU? (answered within a second when there is none) --------------------
if [[ ${NUMBA_ENABLE_CUDASIM:-0} == 1 ]]; then
    if ((!SMOKE)); then
        echo "gpu_check: NUMBA_ENABLE_CUDASIM=1 is set: the simulator proves nothing about a" \
             "GPU. Unset it, or add --smoke to check the script's plumbing." >&2
        exit 2
    fi
    MODE="smoke, numba's CUDA simulator"
else
    unset NUMBA_ENABLE_CUDASIM
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu_check: no GPU here: nvidia-smi is not on PATH. Run this on a machine with" \
             "a CUDA GPU, or check the plumbing with NUMBA_ENABLE_CUDASIM=1 $0 --smoke." >&2
        exit 3
    fi
    if ! timeout 20 nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check: no GPU here: nvidia-smi -L fails (no device, or no driver)." >&2
        exit 3
    fi
    if ! PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout 60 "$PY" -c \
            "import sys; from numba import cuda; sys.exit(0 if cuda.is_available() else 1)"; then
        echo "gpu_check: nvidia-smi sees a GPU but numba does not (numba.cuda.is_available()" \
             "is False, or numba-cuda is missing for $PY)." >&2
        exit 3
    fi
    MODE=$( ((SMOKE)) && echo "smoke, GPU" || echo "GPU")
fi

# -- set-up -----------------------------------------------------------------------------
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
CORES=$(nproc 2>/dev/null || echo 1)
THREADS=${GPU_CHECK_THREADS:-$((CORES < 16 ? CORES : 16))}
((SMOKE)) && THREADS=${GPU_CHECK_THREADS:-1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT" || exit 2
    REPORT=$OUT/gpu_check.md
    LOG=$OUT/gpu_check.log
else
    REPORT=$WORK/gpu_check.md
    LOG=$WORK/gpu_check.log
fi
: >"$LOG"
: >"$WORK/status.tsv"
FLAGS=()
((SMOKE)) && FLAGS=(--smoke)

# Seconds each part may use; a part also gets what the parts before it left unused.
PARTS=(machine tests parity bench cpu)
if ((SMOKE)); then
    BUDGETS=(15 45 60 40 40)
else
    BUDGETS=(20 150 70 150 70)
fi
TOTAL=0
for b in "${BUDGETS[@]}"; do TOTAL=$((TOTAL + b)); done
if [[ -n $BUDGET ]]; then   # the same shares of another whole
    for i in "${!BUDGETS[@]}"; do BUDGETS[i]=$((BUDGETS[i] * BUDGET / TOTAL)); done
else
    BUDGET=$TOTAL
fi
DEADLINE=$((START + BUDGET))
echo "gpu_check: $MODE; budget ${BUDGET} s; log $LOG" >&2

run_part() {   # run_part INDEX [extra arguments]: one part, capped, its exit status recorded
    local i=$1 name=${PARTS[$1]} later=0 j
    shift
    for ((j = i + 1; j < ${#PARTS[@]}; j++)); do later=$((later + BUDGETS[j])); done
    local t0 cap rc
    t0=$(date +%s)
    cap=$((DEADLINE - t0 - later))
    if ((cap < 5)); then
        printf '%s\tskip\t0\t%s\n' "$name" "$cap" >>"$WORK/status.tsv"
        return
    fi
    echo "gpu_check: $name (cap ${cap} s)" >&2
    echo "=== $name: cap ${cap} s, $(date '+%H:%M:%S')" >>"$LOG"
    # the part stops starting new work 8 s before its cap; timeout is the backstop
    timeout --kill-after=5 "$cap" "$PY" -m benchmarks.gpu_report "$name" \
        --out "$WORK/$name.md" --deadline $((t0 + cap - 8)) "${FLAGS[@]}" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$cap" >>"$WORK/status.tsv"
    echo "gpu_check: $name exit $rc after $(($(date +%s) - t0)) s" >&2
}

run_part 0
run_part 1
run_part 2
run_part 3
NUMBA_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS run_part 4 --threads "$THREADS"

# -- one markdown file --------------------------------------------------------------------
if ! "$PY" -m benchmarks.gpu_report assemble --work "$WORK" --out "$REPORT" "${FLAGS[@]}" \
        >>"$LOG" 2>&1; then
    if ! grep -q '^Result:' "$REPORT" 2>/dev/null; then
        # assembling failed: keep the parts' files as they are
        { echo "# numbaopt GPU check (assembling the report failed; see the log)"; echo
          echo '```'; cat "$WORK/status.tsv"; echo '```'
          for p in "${PARTS[@]}"; do [[ -f $WORK/$p.md ]] && { echo; cat "$WORK/$p.md"; }; done
        } >"$REPORT"
    fi
fi

FAILED=$(awk -F'\t' '$2 != "0"' "$WORK/status.tsv" | wc -l)
[[ -z ${OUT:-} ]] && cat "$REPORT"
echo "gpu_check: done in $(($(date +%s) - START)) s; report $REPORT;" \
     "$( ((FAILED)) && echo "$FAILED part(s) failed" || echo "all parts passed")" >&2
[[ -n ${OUT:-} ]] || echo "gpu_check: log $LOG" >&2
((FAILED == 0))
