#!/usr/bin/env bash
# 20 ms log-mel patches vs the shipped 10 ms ones, one GPU call: prep, three trainings at once,
# then the refit of the better patch-320 run if it passes the go rule
# (bench/experiments/kws_data_2026_11_27/RULES.md).
set -u
OUT=${OUT:-/tmp/p3}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; W=2; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-300}
else
  DEV=cuda; W=14; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-445}
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
python -c "import pydantic, safetensors, pyroomacoustics, soundfile; print('deps ok')" || exit 1
DEADLINE=$((START + TRAIN_END))
taskset -c 0-15 python scripts/data13_train.py prep-kws --work /tmp/d13 --workers $W $SM \
  --n-train ${N_TRAIN:-12000} --train-noise=-5,30,0.9 > "$OUT/r/prep.log" 2>&1 || { tail -20 "$OUT/r/prep.log"; exit 1; }
echo "prep done at $(( $(date +%s) - START )) s"
COMMON="--device $DEV --work /tmp/d13 --out $OUT/r --threads 2 $SM"
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2"
# name:patch:mels:time mask:channel mask:cores
for spec in "kws-l160:160:40:10:8:0-4" "kws-p320m40:320:40:5:8:5-9" "kws-p320m64:320:64:5:13:10-15"; do
  IFS=: read name patch mels tm cm cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name $name $BASE $COMMON \
    --patch-size $patch --n-mels $mels --time-mask $tm --channel-mask $cm \
    --deadline $DEADLINE > "$OUT/r/$name.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
PICK=$(python - "$OUT/r" <<'PY'
import json, os, sys
r = sys.argv[1]
names = ("kws-l160", "kws-p320m40", "kws-p320m64")
val = {n: json.load(open(f"{r}/{n}/metrics.json"))["val_accuracy"] for n in names}
best = max(names[1:], key=lambda n: val[n])
go = val[best] >= val["kws-l160"] + float(os.environ.get("GO_MARGIN", "0.01"))
print(json.dumps(val), "pick", best, "go", go, file=sys.stderr)
print({"kws-p320m40": "kws-p320m40:5:8", "kws-p320m64": "kws-p320m64:5:13"}[best] if go else "")
PY
)
if [ -n "$PICK" ]; then
  IFS=: read name tm cm <<< "$PICK"
  echo "refit $name from $(( $(date +%s) - START )) s"
  taskset -c $([ "$SMOKE" = 1 ] && echo 0-1 || echo 0-15) python scripts/data13_train.py kws --run all --run-name "$name-refit" $COMMON \
    --init-from "$OUT/r/$name" --refit-on-val --epochs 2 --lr 0.001 --time-mask $tm --channel-mask $cm \
    > "$OUT/r/$name-refit.log" 2>&1
fi
for f in "$OUT"/r/*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
rm -rf "$OUT"/r/*/last
tar czf "$OUT/p3.tgz" -C "$OUT" r && rm -rf "$OUT/r"
echo "done at $(( $(date +%s) - START )) s"
