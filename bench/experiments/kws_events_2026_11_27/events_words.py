"""The extra training words of a keyword-event run as a bank of their own (what
`stream_bank.engine_words` reads, and nothing it would not): per synthesizer other than
espeak-ng, the training keyword / unknown rows of every SRC bank, in order. A two-pass bank
plus the vocabulary rows is 71 MB, too much for one carry with the stream bank; these rows are
all that `--extra-words` uses. Written in two parts (engines split between them) so that each
fits a carry; `merge_bank.py merge`-free: the parts hold disjoint engines, so one directory
holding both parts' files is the bank.

    python events_words.py DST_A DST_B SRC [SRC ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "experiments" / "kws_data_2026_11_27"))

from merge_bank import _utterances  # noqa: E402

from model.data.kws_bank import write_engine  # noqa: E402
from model.data.stream_bank import other_engines  # noqa: E402

PART_A = ("flite", "festival", "mbrola")  # the rest (pico, rhvoice) go to part B


def main() -> None:
    dst_a, dst_b, *srcs = (Path(p) for p in sys.argv[1:])
    for engine in other_engines(srcs[0]):
        rows, wavs = [], []
        for src in srcs:
            if not (src / f"kws_{engine}.json").exists():
                continue
            for r, w in zip(*_utterances(src, engine), strict=True):
                if r["split"] == "train" and r["kind"] in ("keyword", "unknown"):
                    rows.append(r)
                    wavs.append(w)
        write_engine(dst_a if engine in PART_A else dst_b, engine, rows, wavs)
        print(engine, len(rows), "rows", flush=True)


if __name__ == "__main__":
    main()
