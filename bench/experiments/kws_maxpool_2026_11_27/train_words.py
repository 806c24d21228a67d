"""The extra training words of kws-events-s4d's stage 4 (B4) in a smaller carry: the
keyword / non-keyword rows of the training split of every engine but espeak-ng in
.cache/data13, written back (lossless FLAC) in the bank's own layout.

    python bench/experiments/kws_maxpool_2026_11_27/train_words.py .cache/data13 .cache/d13t5

Checks that `engine_words` returns identical arrays from both."""

import json
import sys
from pathlib import Path

import numpy as np

from model.data.kws_bank import SAMPLE_RATE, load_bank
from model.data.stream_bank import engine_words, other_engines


def main(src: Path, dst: Path) -> None:
    import soundfile as sf

    dst.mkdir(parents=True, exist_ok=True)
    for engine in other_engines(src):
        rows = [r for r in load_bank(src, [engine])
                if r["split"] == "train" and r["kind"] in ("keyword", "unknown")]
        meta, pos = [], 0
        for r in rows:
            meta.append({k: v for k, v in r.items() if k != "wav"} | {"offset": pos})
            pos += r["length"]
        sf.write(dst / f"kws_{engine}.flac", np.concatenate([r["wav"] for r in rows]),
                 SAMPLE_RATE, subtype="PCM_16", compression_level=1.0)
        (dst / f"kws_{engine}.json").write_text(json.dumps(
            dict(engine=engine, sample_rate=SAMPLE_RATE, utterances=meta)) + "\n")
    a, b = engine_words(src), engine_words(dst)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), "arrays differ"
    print(f"{len(a[1])} words, identical; {sum(f.stat().st_size for f in dst.iterdir())} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
