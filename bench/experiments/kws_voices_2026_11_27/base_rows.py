"""Write a bank's engines without the `extra_voice` rows (the bank as it was before
`--extra-voices`): on the GPU machine, X's mbrola / festival files from M's.

    python base_rows.py SRC DST ENGINE...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import load_bank, write_engine  # noqa: E402

if __name__ == "__main__":
    src, dst, engines = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    for engine in engines:
        rows = [r for r in load_bank(src, (engine,)) if not r.get("extra_voice")]
        jobs = [{k: v for k, v in r.items() if k not in ("wav", "offset", "length")} for r in rows]
        wavs = [np.round(r["wav"] * 32768).astype(np.int16) for r in rows]
        print(write_engine(dst, engine, jobs, wavs))
