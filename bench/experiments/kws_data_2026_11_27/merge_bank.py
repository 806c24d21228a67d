"""Carry a keyword bank to the GPU machine in parts: one carry holds 64 MiB with the tree and
the wheels, a two-pass bank is 57 MB, so banks travel as a base plus extra rows and are put
back together there.

    python merge_bank.py split SRC DST KEY      # DST: SRC's rows that have KEY (their audio only)
    python merge_bank.py merge A B DST          # DST: per engine A's rows, then B's
    python merge_bank.py first-pass SRC DST     # DST: SRC's one-pass rows (same audio file)

`load_bank` of a merged bank gives the rows and samples of the bank built in one go
(`kws_bank.plan` puts the first pass, then the extra passes, the vocabulary and the validation
passes, in that order).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import ENGINES, SAMPLE_RATE, first_pass  # noqa: E402


def _read(bank: Path, engine: str) -> tuple[dict, np.ndarray]:
    import soundfile as sf

    meta = json.loads((bank / f"kws_{engine}.json").read_text())
    audio, _ = sf.read(bank / f"kws_{engine}.flac", dtype="int16")
    return meta, audio


def _write(bank: Path, engine: str, meta: dict, rows: list[dict], audio: np.ndarray) -> None:
    import soundfile as sf

    bank.mkdir(parents=True, exist_ok=True)
    sf.write(bank / f"kws_{engine}.flac", audio, SAMPLE_RATE, subtype="PCM_16",
             compression_level=1.0)
    (bank / f"kws_{engine}.json").write_text(json.dumps(dict(meta, utterances=rows)) + "\n")


def split(src: Path, dst: Path, key: str) -> None:
    """Rows of `src` whose `key` is set, with just their audio; engines without any are left
    out (an empty FLAC cannot be read back)."""
    for engine in ENGINES:
        meta, audio = _read(src, engine)
        rows, parts, pos = [], [], 0
        for r in meta["utterances"]:
            if r.get(key):
                parts.append(audio[r["offset"] : r["offset"] + r["length"]])
                rows.append(dict(r, offset=pos))
                pos += r["length"]
        if parts:
            _write(dst, engine, meta, rows, np.concatenate(parts))


def merge(a: Path, b: Path, dst: Path) -> None:
    """Per engine, `a`'s rows then `b`'s (offsets moved past `a`'s audio); an engine `b` lacks
    is `a`'s alone."""
    for engine in ENGINES:
        meta, audio = _read(a, engine)
        rows = list(meta["utterances"])
        if (b / f"kws_{engine}.json").exists():
            meta_b, audio_b = _read(b, engine)
            rows += [dict(r, offset=r["offset"] + len(audio)) for r in meta_b["utterances"]]
            audio = np.concatenate([audio, audio_b])
        _write(dst, engine, meta, rows, audio)


def one_pass(src: Path, dst: Path) -> None:
    """`src`'s one-pass rows (`kws_bank.first_pass`), pointing into a copy of its audio."""
    dst.mkdir(parents=True, exist_ok=True)
    for engine in ENGINES:
        meta = json.loads((src / f"kws_{engine}.json").read_text())
        rows = [r for r in meta["utterances"] if first_pass(r)]
        shutil.copy(src / f"kws_{engine}.flac", dst / f"kws_{engine}.flac")
        (dst / f"kws_{engine}.json").write_text(json.dumps(dict(meta, utterances=rows)) + "\n")


def main() -> None:
    cmd, *paths = sys.argv[1:]
    if cmd == "split":
        split(Path(paths[0]), Path(paths[1]), paths[2])
    elif cmd == "merge":
        merge(Path(paths[0]), Path(paths[1]), Path(paths[2]))
    elif cmd == "first-pass":
        one_pass(Path(paths[0]), Path(paths[1]))
    else:
        raise SystemExit(__doc__)
    print(cmd, "done", flush=True)


if __name__ == "__main__":
    main()
