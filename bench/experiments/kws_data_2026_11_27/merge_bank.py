"""Carry a keyword bank to the GPU machine in parts: one carry holds 64 MiB with the tree and
the wheels, a two-pass bank is 57 MB, so banks travel as a base plus extra rows and are put
back together there.

    python merge_bank.py split SRC DST KEY [VALUE]  # DST: SRC's rows that have KEY (= VALUE)
    python merge_bank.py merge A B DST          # DST: per engine A's rows, then B's
    python merge_bank.py first-pass SRC DST     # DST: SRC's one-pass rows (their audio only)

`load_bank` of a merged bank gives the rows and samples of the bank built in one go
(`kws_bank.plan` puts the first pass, then the extra passes, the vocabulary and the validation
passes, in that order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import ENGINES, first_pass, write_engine  # noqa: E402


def _utterances(bank: Path, engine: str) -> tuple[list[dict], list[np.ndarray]]:
    """One engine's rows and each row's int16 samples (what `write_engine` takes back)."""
    import soundfile as sf

    meta = json.loads((bank / f"kws_{engine}.json").read_text())
    audio, _ = sf.read(bank / f"kws_{engine}.flac", dtype="int16")
    rows = meta["utterances"]
    return rows, [audio[r["offset"] : r["offset"] + r["length"]] for r in rows]


def _keep(src: Path, dst: Path, want) -> None:
    """dst: per engine, the rows of src that `want`; engines without any are left out (an
    empty FLAC cannot be read back)."""
    for engine in ENGINES:
        rows, wavs = _utterances(src, engine)
        kept = [(r, w) for r, w in zip(rows, wavs, strict=True) if want(r)]
        if kept:
            write_engine(dst, engine, *map(list, zip(*kept, strict=True)))


def split(src: Path, dst: Path, key: str, value: int | None = None) -> None:
    """Rows of `src` whose `key` is set (equals `value`, if given: e.g. one rendition pass)."""
    _keep(src, dst, lambda r: r.get(key) if value is None else r.get(key) == value)


def one_pass(src: Path, dst: Path) -> None:
    """`src`'s one-pass rows (`kws_bank.first_pass`)."""
    _keep(src, dst, first_pass)


def merge(a: Path, b: Path, dst: Path) -> None:
    """Per engine, `a`'s rows then `b`'s; an engine `b` lacks is `a`'s alone."""
    for engine in ENGINES:
        rows, wavs = _utterances(a, engine)
        if (b / f"kws_{engine}.json").exists():
            rows_b, wavs_b = _utterances(b, engine)
            rows, wavs = rows + rows_b, wavs + wavs_b
        write_engine(dst, engine, rows, wavs)


def main() -> None:
    cmd, *paths = sys.argv[1:]
    if cmd == "split":
        split(Path(paths[0]), Path(paths[1]), paths[2], int(paths[3]) if paths[3:] else None)
    elif cmd == "merge":
        merge(Path(paths[0]), Path(paths[1]), Path(paths[2]))
    elif cmd == "first-pass":
        one_pass(Path(paths[0]), Path(paths[1]))
    else:
        raise SystemExit(__doc__)
    print(cmd, "done", flush=True)


if __name__ == "__main__":
    main()
