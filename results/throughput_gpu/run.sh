#!/bin/bash
# The next H100/H200 run, prepared on the CPU (docs/throughput.md): first the throughput table that
# says how far the train step is from the GPU's bf16 peak, then the budgeted job with the photos on
# the device and 10 steps per call, carrying every unit's state out for the run after it.
#
#   .venv/bin/python results/recipe_h200/prepare_carry.py .gpu      # here: VGG f16, photos, styles, Set5
#   (device) bash results/throughput_gpu/run.sh 9 [CARRY_IN]         # 9 = the job's budget in minutes
#
# Everything it writes lies under $OUT: throughput.{json,md}, the job's report, models and cards
# (models.tgz) and carry/ (at most 8 files of 16 MiB: the next run's CARRY_IN).
set -u
BUDGET=${1:-9}; CARRY_IN=${2:-}; OUT=${OUT:-/tmp/out}; PY=${PY:-python3}; mkdir -p "$OUT"
export FASTNST_VGG_WEIGHTS=$PWD/.gpu/vgg16_f16.npz FASTNST_CACHE_DIR=/tmp/fastnst_cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
timeout 240 $PY bin/bench --train --precision=bfloat16 --batches=4,16,64 --steps-per-call=10 --repeats=5 \
    --out="$OUT" > "$OUT/bench.log" 2>&1
timeout $(( BUDGET * 60 + 120 )) $PY bin/recipe --budget-minutes="$BUDGET" --out=/tmp/job --photos=.gpu/photos \
    --styles="$(ls .gpu/styles/*.jpg | paste -sd, -)" --sr-root=.gpu/sr --sr-sets=Set5 \
    ${CARRY_IN:+--carry-in=$CARRY_IN} > "$OUT/recipe.log" 2>&1
# What comes back is at most 8 files: carry_*.npz (at most 6, 56 MiB: `carry.Limits`), one tarball of
# everything small (bench table, logs, plan, report, cards, Fig. 5/Table 2, gallery) and, where they
# fit in what is left, the model files; else rebuild them here: bin/recipe --models-from-carry=DIR.
cp /tmp/job/carry/carry_*.npz "$OUT/" 2>/dev/null
mkdir -p /tmp/small && cp "$OUT"/*.txt "$OUT"/*.log "$OUT"/throughput.* /tmp/job/*.md /tmp/small/ 2>/dev/null
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/throughput.*
tar czf "$OUT/results.tgz" -C /tmp small -C /tmp/job --exclude="*.msgpack" models eval gallery.jpg 2>/dev/null
tar czf /tmp/models.tgz -C /tmp/job --wildcards "models/*.msgpack" 2>/dev/null
[ $(( $(du -cb "$OUT"/* | tail -1 | cut -f1) + $(stat -c %s /tmp/models.tgz) )) -lt 66000000 ] \
    && [ $(stat -c %s /tmp/models.tgz) -lt 16700000 ] && cp /tmp/models.tgz "$OUT/"
ls -la "$OUT"
