#!/bin/bash
# One lent-GPU slot for issue 26: the recipe's units as parallel bin/recipe processes on one GPU
# (each small network alone leaves most of an H200 idle), then results packed into $OUT.
# Usage (device machine): bash .gpu/slot.sh BUDGET_MIN HARD_STOP_S
set -u
BUDGET=${1:-8.4}; HARD=${2:-570}; T0=$(date +%s)
PY=${PY:-python3}
R=/tmp/recipe; mkdir -p $R; OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if [ -d .gpu/whl ] && ! $PY -c "import ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export FASTNST_VGG_WEIGHTS=$PWD/.gpu/vgg16_f16.npz FASTNST_CACHE_DIR=/tmp/fastnst_cache
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
{ nvidia-smi -L; $PY -c "import jax, flax, optax, orbax.checkpoint as o; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"; } > $R/env.txt 2>&1
cat $R/env.txt
S=.gpu/styles
ARGS="--photos=.gpu/photos --sr-root=.gpu/sr --sr-sets=Set5 --budget-minutes=$BUDGET ${EXTRA:-}"
declare -A FRAC=([styles]=0.30 [sr_x4_feature]=0.12 [sr_x4_pixel]=0.12 [sr_x8_feature]=0.12 [sr_x8_pixel]=0.12 [sr_x4_bicubic]=0.12)
for u in styles sr_x4_feature sr_x4_pixel sr_x8_feature sr_x8_pixel sr_x4_bicubic; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=${FRAC[$u]} $PY bin/recipe $ARGS --units=$u --out=$R/$u \
    --styles=$S/the_scream.jpg,$S/starry_night.jpg,$S/candy.jpg,$S/mosaic.jpg > $R/$u.log 2>&1 &
done
while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - T0 )) -lt $HARD ]; do
  sleep 5
  if [ $(( ($(date +%s) - T0) % 60 )) -lt 5 ]; then nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $R/gpu_util.txt 2>&1; fi
done
[ -n "$(jobs -rp)" ] && { echo "hard stop at $(( $(date +%s) - T0 )) s: killing $(jobs -rp | wc -l) jobs"; kill $(jobs -rp); sleep 2; }
echo "jobs ended at $(( $(date +%s) - T0 )) s"
tail -n 3 $R/*.log
# pack: everything but checkpoints and the compilation caches; 15 MB parts ($OUT takes files <= 16 MiB)
cd /tmp && tar czf $OUT/recipe.tgz --exclude='checkpoints' --exclude='jax_cache' --exclude='ckpt*' --exclude='recipe/*/runs/*/model*.msgpack' recipe
cd $OUT && if [ $(stat -c %s recipe.tgz) -gt 15000000 ]; then split -b 15000000 -d recipe.tgz recipe.tgz.part && rm recipe.tgz; fi
ls -la $OUT; echo "done at $(( $(date +%s) - T0 )) s"
