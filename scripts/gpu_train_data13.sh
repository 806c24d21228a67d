#!/usr/bin/env bash
# Issue 13 training on the lent GPU machine (GPU 0, cores 0-15, <= 6 min wall), from the repo root:
#   OUT=/some/dir bash scripts/gpu_train_data13.sh        # SMOKE=1: tiny CPU dry run
# Needs (carried, git-ignored): .cache/data13 (utterance bank + ECG bank, made here by
# scripts/build_data13_bank.py), .whl/server and .whl/data13 (cp312 wheels: pyroomacoustics,
# safetensors, tqdm; the same files are in .whl/train, which also holds a 255 MB onnxruntime).
# Runs the trainings at once on GPU 0: ecg, kws-all, kws-loeo-<engine> for the five engines of
# model.data.kws_bank; every run stops by a shared deadline and still evaluates its
# best-on-validation checkpoint.
# Writes $OUT/data13/<run>/{config.json,model.safetensors,metrics.json,extra_metrics.json} + logs.
# Knobs (env): RUNS (default "all loeo-espeak loeo-flite loeo-festival"), RUN_ECG (1), N_TRAIN
# (augmented clips per engine), FORMANTS (LO,HI: formant shift of the training clips), EPOCHS,
# LR, and KWS_INIT (then KWS_INIT_LOEO): checkpoint folders the kws runs may fine-tune; a
# leave-one-engine-out run takes the first of them that never heard its held-out engine (the
# engines in its config's training.engines), else it starts from scratch;
# REFIT=1: the validation clips join training and the last epoch is kept; FRONT_END=logmel and
# PATCH=160: the log-mel patch front end (model/frontend.py), from scratch, N_MELS its bands
# (default 40); DROPOUT, TIME_MASK,
# CHANNEL_MASK: regularisation (SpecAugment on the log-mel features); D_MODEL, N_LAYERS: a
# wider / deeper network (from scratch); BATCH: clips per step (the step is launch-bound, so
# larger batches buy epochs; scale LR with it); SILENCE_TOP_DB: loudest noise-only training
# clip (default -40 dBFS; the noise test set goes to -20).
set -u
OUT=${OUT:-/tmp/s4d-gpu-out}
D="$OUT/data13"
mkdir -p "$D"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu; WORKERS=2; THREADS=1; FLAG=--smoke; BUDGET=${BUDGET:-600}
    PIN=""
else
    DEVICE=cuda; WORKERS=8; THREADS=2; FLAG=""; BUDGET=${BUDGET:-300}
    export CUDA_VISIBLE_DEVICES=0
    PIN=""; command -v taskset >/dev/null && PIN="taskset -c 0-15"
    # wheels only for what the image lacks (torch, numpy, scipy are expected there)
    wheels=""
    for spec in "safetensors:safetensors" "tqdm:tqdm" "pyroomacoustics:pyroomacoustics" \
                "soundfile:soundfile cffi pycparser" \
                "pydantic:pydantic pydantic_core annotated_types typing_inspection"; do
        mod=${spec%%:*}
        python3 -c "import $mod" 2>/dev/null && continue
        for w in ${spec#*:}; do wheels="$wheels $(ls .whl/server/$w-*.whl .whl/data13/$w-*.whl .whl/train/$w-*.whl 2>/dev/null | head -1)"; done
    done
    if [ -n "${wheels// /}" ]; then
        echo "installing:$wheels"
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-data13 $wheels 2>&1 | tail -3
    fi
fi
export PYTHONPATH=/tmp/site-data13:$PWD PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PY="$PIN $PYTHON"
$PY -c "import numpy, scipy, torch, safetensors, soundfile, pyroomacoustics, pydantic; print('imports ok', torch.__version__)" \
    > "$D/env.log" 2>&1 || { cat "$D/env.log"; echo "missing a module"; exit 1; }
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$D/env.log"
# training stops so that evaluation ends by START + BUDGET + ~40 s
DEADLINE=$((START + BUDGET - 45))
echo "== prep-kws ($(($(date +%s) - START)) s)"
ECG=""
if [ "${RUN_ECG:-1}" = 1 ]; then
    $PY scripts/data13_train.py ecg --device "$DEVICE" --out "$D" --workers $WORKERS \
        --threads $THREADS --deadline $DEADLINE $FLAG > "$D/ecg.log" 2>&1 &
    ECG=$!
fi
KWS_ARGS=()
[ -n "${EPOCHS:-}" ] && KWS_ARGS+=(--epochs "$EPOCHS")
[ -n "${LR:-}" ] && KWS_ARGS+=(--lr "$LR")
[ "${REFIT:-0}" = 1 ] && KWS_ARGS+=(--refit-on-val)
[ -n "${FRONT_END:-}" ] && KWS_ARGS+=(--front-end "$FRONT_END")   # a new architecture: no KWS_INIT
[ -n "${PATCH:-}" ] && KWS_ARGS+=(--patch-size "$PATCH")
[ -n "${N_MELS:-}" ] && KWS_ARGS+=(--n-mels "$N_MELS")
[ -n "${DROPOUT:-}" ] && KWS_ARGS+=(--dropout "$DROPOUT")
[ -n "${TIME_MASK:-}" ] && KWS_ARGS+=(--time-mask "$TIME_MASK")
[ -n "${CHANNEL_MASK:-}" ] && KWS_ARGS+=(--channel-mask "$CHANNEL_MASK")
[ -n "${D_MODEL:-}" ] && KWS_ARGS+=(--d-model "$D_MODEL")
[ -n "${N_LAYERS:-}" ] && KWS_ARGS+=(--n-layers "$N_LAYERS")
[ -n "${BATCH:-}" ] && KWS_ARGS+=(--batch-size "$BATCH")
$PY scripts/data13_train.py prep-kws --work /tmp/data13 --workers $WORKERS $FLAG \
    ${N_TRAIN:+--n-train $N_TRAIN} ${FORMANTS:+--formants $FORMANTS} \
    ${SILENCE_TOP_DB:+--silence-top-db $SILENCE_TOP_DB} \
    > "$D/prep_kws.log" 2>&1 || { tail -20 "$D/prep_kws.log"; exit 1; }
tail -1 "$D/prep_kws.log"
echo "== kws runs ($(($(date +%s) - START)) s)"
PIDS=""
INIT=()
[ -n "${KWS_INIT:-}${KWS_INIT_LOEO:-}" ] && INIT=(--init-from ${KWS_INIT:-} ${KWS_INIT_LOEO:-})
for run in ${RUNS:-all loeo-espeak loeo-flite loeo-festival loeo-mbrola loeo-pico}; do
    $PY scripts/data13_train.py kws --run $run --device "$DEVICE" --out "$D" --work /tmp/data13 \
        --threads $THREADS --deadline $DEADLINE $FLAG "${KWS_ARGS[@]}" "${INIT[@]}" \
        > "$D/kws-$run.log" 2>&1 &
    PIDS="$PIDS $!"
done
status=0
for p in $PIDS $ECG; do wait $p || status=1; done
for f in "$D"/*.log; do echo "-- $f"; tail -3 "$f"; done
rm -f "$D"/*/last/training_state.safetensors   # optimizer moments: not needed back
echo "== done in $(($(date +%s) - START)) s (status $status)"
exit $status
