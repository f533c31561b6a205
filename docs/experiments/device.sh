#!/usr/bin/env bash
# One call on the lent H200 (issue 17/18 measurements): install the carried wheels (.whl: the
# nvidia-pytriton wheel without the stubs of other Pythons, numpy 1.26, biopython,
# tritonclient) and this checkout into the machine's Python, then run the steps named.
#   bench:  make bench's 300-bp run (FP8 as export --fp8 auto verifies it for these weights),
#           --duplicate-fraction ${DUP:-0.3} -> $OUT/bench.json
#   fc1:    docs/experiments/fc1_gelu.py -> $OUT/fc1_gelu.json
#   lever2: docs/experiments/lever2.py (packed attention, CUDA graphs, two streams) -> $OUT/lever2.json
#   flight: docs/experiments/in_flight.py (served at more work in flight) -> $OUT/in_flight.json
#   gaps:   docs/experiments/gaps.py (recompilations, request size, esm2 instances) -> $OUT/gaps.json
#   step:   docs/experiments/esm2_step.py (one esm2 execute: rotary once, fused qkv, batch size) -> $OUT/esm2_step.json
#   cpu:    docs/experiments/stub_cpu.py (the esm2 stub's CPU: syncs, top host ops) -> $OUT/stub_cpu.json
#   dna:    docs/experiments/dna_step.py (DNABERT-S on fresh frames) -> $OUT/dna_step.json
#   gpu:    pytest -m gpu
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
            python3 -m virnucpro_triton.bench --chunk-size 300 --frames "${FRAMES:-15000}" \
                --duplicate-fraction "${DUP:-0.3}" ${BENCH_ARGS:-} --work-dir /tmp/bench --json-out "$OUT/bench.json" \
                2>&1 | tee "$OUT/bench.log" | grep -v "^W\|^I" ;;
        fc1) python3 docs/experiments/fc1_gelu.py "$OUT/fc1_gelu.json" 2>&1 | tail -60 ;;
        lever2) timeout "${LEVER2_S:-330}" python3 docs/experiments/lever2.py "$OUT/lever2.json" \
                2>&1 | tee "$OUT/lever2.log" | grep -v "^W\|^I" | tail -80 ;;
        flight) python3 docs/experiments/in_flight.py "$OUT/in_flight.json" 2>&1 | grep "^{" ;;
        gaps) timeout "${GAPS_S:-540}" python3 docs/experiments/gaps.py "$OUT/gaps.json" ${GAPS_ARGS:-} \
                2>&1 | tee "$OUT/gaps.log" | grep -v "^W\|^I" | grep -v "^\[" | tail -60 ;;
        step) python3 docs/experiments/esm2_step.py "$OUT/esm2_step.json" 2>&1 | grep -v "^W\|^I" | tail -70 ;;
        cpu) python3 docs/experiments/stub_cpu.py "$OUT/stub_cpu.json" 2>&1 | grep -v "^W\|^I" | tail -120 ;;
        dna) python3 docs/experiments/dna_step.py "$OUT/dna_step.json" 2>&1 | grep -v "^W\|^I" | tail -20 ;;
        gpu) timeout "${GPU_S:-330}" python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 ;;
    esac
done
echo "== done $(date -u +%T)"
