#!/usr/bin/env bash
# S3 and S2 (weight averages, .cache/soup) scored with --rechoose at once on one GPU.
set -u
python -m pip install -q --no-deps --no-index .whl/ev/*.whl
mkdir -p /root/soup
for s in S3 S2; do
  python -m model.train_streams kws-events --rechoose ".cache/soup/$s" --bank .cache/s15k \
    --device cuda --out "/root/soup/$s" > "/root/soup/$s.log" 2>&1 &
done
wait
grep -h "validation chose" /root/soup/S3.log /root/soup/S2.log
tar -C /root/soup -czf "$OUT/soup.tgz" --exclude=model.safetensors .
