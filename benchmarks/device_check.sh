#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see the device tool's README): distributed training
# throughput (issue 18, about 2 min), the compiled training step (issue 20, about 3 min), the
# extract speed benchmark (issues 8 and 20), then long self-supervised training runs (issue 7), one
# process per pool preset, in parallel on the one GPU. Results land under $OUT (at most 6 files).
#
# The shared data must be at ../shared/data; when only a carried copy at .devdata exists
# (the device machine gets the repository alone), it is linked there.
#
# Timing seen on an H100 (2026-11-26): extract 1 min; one 3000 x 512 training alone about
# 2 min, three sharing the card 287 s each; evaluation about 20 s per run. Give the call 9-10
# minutes, or lower STEPS.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:-/tmp/descbal-device-out}
STEPS=${STEPS:-3000}
CLASSES=${CLASSES:-512}
mkdir -p "$OUT"
if [ ! -d ../shared/data ] && [ -d .devdata ]; then mkdir -p ../shared && ln -sfn "$PWD/.devdata" ../shared/data; fi
nvidia-smi -L || true
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"

echo "== distributed training (issue 18): single process against the distributed path on every GPU here"
OMP_NUM_THREADS=4 timeout 240 python3 benchmarks/distributed.py --device cuda --classes 2560 --steps 10 \
    --json "$OUT/distributed.json" 2>&1 | grep -v Warning

echo "== training step (issue 20): plain loop, descbal eager, compiled (+ prefetch) at 2560 x 3, projected self-tnet time"
OMP_NUM_THREADS=16 timeout 300 python3 benchmarks/train_step.py --device cuda --classes 2560 --steps 20 \
    --json "$OUT/train_step.json" 2>&1 | grep -v Warning

echo "== extract speed (eager and --compile; compiling costs about a minute per model)"
OMP_NUM_THREADS=16 timeout 300 python3 benchmarks/extract.py --repeats 5 --json "$OUT/extract.json" 2>&1
OMP_NUM_THREADS=16 timeout 300 python3 benchmarks/extract.py --model hynet --repeats 5 --json "$OUT/extract-hynet.json" 2>&1

echo "== self-supervised training: $STEPS steps x $CLASSES classes per pool"
W=/tmp/descbal-selfsup-gpu
pids=()
for pool in ${POOLS:-default hard}; do
    extra="--no-baselines --loss balance"
    [ "$pool" = default ] && extra="--loss balance --loss triplet"
    timeout "${TRAIN_TIMEOUT:-480}" python3 benchmarks/selfsup.py --device cuda --steps "$STEPS" --classes "$CLASSES" \
        --pool "$pool" $extra --work "$W-$pool" --json "$OUT/selfsup-$pool.json" > "$W-$pool.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for pool in ${POOLS:-default hard}; do grep -v Warning "$W-$pool.log" | tail -n 12; done
cat "$W"-*.log > "$OUT/selfsup-logs.txt"
ls "$OUT"/selfsup-*.json >/dev/null 2>&1 && python3 benchmarks/selfsup.py --merge "$OUT"/selfsup-*.json
