#!/usr/bin/env bash
# One call on a lent GPU machine, from the repository's root: install the carried wheels (.whl:
# the nvidia-pytriton wheel without the stubs of other Pythons, numpy 1.26, biopython,
# tritonclient, fair-esm for VirNucPro's own way) and this checkout into the machine's Python,
# then run the steps named:
#   bench:  make bench's 300-bp run (VirNucPro's own way, in-process, served; batch invariance:
#           rows moved between identical served runs and by one chunk per request, the first
#           differing module, the batch-invariant mode served and its cost; FP8 as export
#           --fp8 auto verifies it for these weights), --duplicate-fraction ${DUP:-0.3}
#           -> $OUT/bench.json (kept in docs/measurements/ when docs/performance.md quotes it).
#           BENCH_ARGS adds options: --no-invariance, --no-fp8 leave those parts out.
#   cost:   what each part of the batch-invariant mode costs, the embedders alone
#           (benchmarks/invariance_cost.py) -> $OUT/invariance_cost.json
#   gpu:    pytest -m gpu (the gpu tier), for ${GPU_S:-330} s or until the epoch second $UNTIL
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
python3 -c "import numpy, torch; print('numpy', numpy.__version__, 'torch', torch.__version__)"
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv
nproc
for step in "$@"; do
    echo "== $step $(date -u +%T)"
    case $step in
        bench)
            python3 -m benchmarks.bench --chunk-size 300 --frames "${FRAMES:-15000}" \
                --duplicate-fraction "${DUP:-0.3}" ${BENCH_ARGS:-} --work-dir /tmp/bench --json-out "$OUT/bench.json" \
                2>&1 | tee "$OUT/bench.log" | grep -v "^W\|^I" ;;
        cost)
            python3 -m benchmarks.invariance_cost --frames "${FRAMES:-4000}" --work-dir /tmp/bench \
                --json-out "$OUT/invariance_cost.json" 2>&1 | grep -v "^W\|^I" ;;
        gpu) # UNTIL: the epoch second by which the step must end (what a call has left)
            limit=${GPU_S:-330}; [ -n "${UNTIL:-}" ] && limit=$((UNTIL - $(date +%s)))
            timeout "$limit" python3 -m pytest -m gpu -rA -p no:cacheprovider tests/gpu/test_gpu.py > "$OUT/gpu.log" 2>&1; tail -40 "$OUT/gpu.log" ;;
        *) echo "unknown step $step (bench, cost, gpu)"; exit 2 ;;
    esac
done
echo "== done $(date -u +%T)"
