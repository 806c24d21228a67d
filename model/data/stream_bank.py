"""Source material for long training/evaluation streams (model/data/streams.py), made here
once and carried to a GPU box that has neither espeak-ng's wheel nor scipy / neurokit2:

- word renditions (clean, trimmed, 16 kHz int16) from `kws._speak`, by split (voices never
  cross splits), keywords and non-keywords;
- room impulse responses from pyroomacoustics (small shoebox rooms, as `kws._room`);
- ECG windows (10 s, 250 Hz, mV) by split, from one of `model/data/ecg.py`'s generators:
  `template` (Gaussian-wave beats, ecg-s4d's generator; the default), `ecgsyn` (neurokit2's
  ODE model, the first generator) or `shift` (ECGSYN beats with neurokit2's noise model, the
  held-out generator of ecg-s4d's card). The file records which (`generator`).

`python -m model.data.stream_bank OUT_DIR [words,rirs,ecg] [--ecg-generator G]` writes
words.npz, rirs.npz, ecg.npz (float16 / int16, compressed). Everything is seeded; the same
command gives the same files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

#: renditions per word and split (keywords, non-keywords); small: the bank is carried (MiB)
WORDS_PER_SPLIT = {"train": (60, 10), "val": (12, 3), "test": (20, 4)}
#: more non-keyword speech for training streams only: a detector that heard 30 non-keywords fired
#: on new voices saying them (kws-events-s4d's first stage: 44 false alarms per hour), so
#: training also hears 20 more renditions of each and a broad vocabulary (no homophone of a
#: keyword: know, write, ...). Rendered after the test split with their own random stream:
#: espeak-ng carries state from one call to the next, and this keeps the validation and test
#: words (and so their metrics) exactly as before.
MORE_UNKNOWN_RENDITIONS = 20
EXTRA_TRAIN_WORDS = (
    "apple", "baby", "table", "river", "music", "paper", "chair", "money", "people", "garden",
    "kitchen", "morning", "evening", "yesterday", "tomorrow", "city", "country", "little",
    "big", "small", "open", "close", "start", "begin", "finish", "turn", "move", "walk", "run",
    "jump", "sit", "stand", "light", "dark", "red", "green", "blue", "white", "black",
    "coffee", "tea", "milk", "bread", "cheese", "lemon", "orange", "banana", "phone",
    "computer", "letter", "question", "answer", "maybe", "never", "always", "often", "again",
    "after", "before", "under", "over", "around", "inside", "outside", "nothing", "something",
    "anything", "everyone", "station", "ticket", "doctor", "teacher", "student", "picture",
    "camera", "button", "sister", "brother", "mother", "father", "friend", "monday", "friday",
    "summer", "winter", "north", "south", "east", "west", "hundred", "thousand", "okay",
    "thanks", "please", "sorry", "lift", "stuff", "dough", "note", "gold", "bright", "less",
    "stock", "dawn", "pup", "yak",
)  # fmt: skip
EXTRA_RENDITIONS = 6
#: ECG windows per split (ECGSYN's ODE is slow, so its training split was small; the template
#: generator makes thousands a minute, and a monitor trained on 500 windows sees each one
#: hundreds of times)
ECG_PER_SPLIT = {"ecgsyn": {"train": 500, "val": 150, "test": 300},
                 "template": {"train": 4000, "val": 150, "test": 300},
                 "shift": {"val": 150, "test": 300}}
ECG_GENERATORS = tuple(ECG_PER_SPLIT)
#: what each generator is, for descriptions and cards
ECG_GENERATOR_TEXT = {
    "template": "template-generator ECG (`ecg.generate_template`, Gaussian-wave beats with "
                "premature beats, varied morphology and noise: ecg-s4d's generator)",
    "ecgsyn": "neurokit2 ECGSYN ECG (`ecg.generate`, the ODE model, the first generator)",
    "shift": "ECGSYN beats with neurokit2's noise model (`ecg.generate_shift`, the held-out "
             "generator of ecg-s4d's card)",
}
#: who simulated a bank's ECG, for a card's "labels come from generated data" line
ECG_GENERATOR_SOURCE = {"template": "the template generator of model/data/ecg.py",
                        "ecgsyn": "neurokit2", "shift": "neurokit2 (ECGSYN with its noise model)"}
ECG_SEED = 1  # not the seed of ecg-s4d's training data
N_RIRS = 120
SPLITS = ("train", "val", "test")


def _render(kws, rng, pool, plan) -> dict[str, np.ndarray]:
    waves, labels, words = [], [], []
    for word, label in plan:
        wav = np.zeros(0, np.float32)
        while len(wav) == 0:
            wav = kws._speak(rng, word, pool[rng.integers(len(pool))])
        waves.append(np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16))
        labels.append(label)
        words.append(word)
    return {"audio": np.concatenate(waves), "lengths": np.array([len(w) for w in waves], np.int64),
            "labels": np.array(labels, np.int64), "words": np.array(words)}


def build_words(out: Path) -> None:
    from . import kws

    code = {"train": 0, "val": 1, "test": 2}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        n_kw, n_unk = WORDS_PER_SPLIT[split]
        plan = [(w, i) for i, w in enumerate(kws.KEYWORDS) for _ in range(n_kw)]
        plan += [(w, 10) for w in kws.UNKNOWN_WORDS for _ in range(n_unk)]
        parts[split] = _render(kws, np.random.default_rng([7, code[split]]), kws.voices(split),
                               plan)
    plan = [(w, 10) for w in kws.UNKNOWN_WORDS for _ in range(MORE_UNKNOWN_RENDITIONS)]
    plan += [(w, 10) for w in EXTRA_TRAIN_WORDS for _ in range(EXTRA_RENDITIONS)]
    more = _render(kws, np.random.default_rng([7, 0, 1]), kws.voices("train"), plan)
    parts["train"] = {k: np.concatenate([parts["train"][k], more[k]]) for k in more}
    arrays = {f"{split}_{k}": v for split, part in parts.items() for k, v in part.items()}
    np.savez_compressed(out / "words.npz", **arrays)


def other_engines(data13_bank: str | Path) -> list[str]:
    """The keyword bank's engines other than espeak-ng (the stream bank's own voices) whose
    files it holds."""
    from .kws_bank import ENGINES

    return [e for e in ENGINES if e != "espeak" and (Path(data13_bank) / f"kws_{e}.json").exists()]


def engine_words(data13_bank: str | Path, engines=None,
                 split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words of other synthesizers for training streams: the `split` keyword and non-keyword
    renditions of the keyword utterance bank (`kws_bank`, made by
    scripts/build_data13_bank.py), as (int16 audio, lengths, labels) in this bank's layout.
    Their voices are split as in kws-s4d, so the espeak-ng stream test split stays unheard.
    engines None: every engine but espeak-ng whose files the bank holds."""
    from .kws import KEYWORDS
    from .kws_bank import load_bank

    if engines is None:
        engines = other_engines(data13_bank)

    rows = [r for r in load_bank(Path(data13_bank), engines)
            if r["split"] == split and r["kind"] in ("keyword", "unknown")]
    waves = [np.round(np.clip(r["wav"], -1, 1) * 32767).astype(np.int16) for r in rows]
    labels = [KEYWORDS.index(r["text"]) if r["kind"] == "keyword" else 10 for r in rows]
    return (np.concatenate(waves), np.array([len(w) for w in waves], np.int64),
            np.array(labels, np.int64))


def build_rirs(out: Path) -> None:
    from .kws import shoebox_rir

    rng = np.random.default_rng(11)
    rirs = np.zeros((N_RIRS, 4000), np.float32)  # 250 ms at 16 kHz
    for i in range(N_RIRS):
        rir = shoebox_rir(rng)[:4000]
        rirs[i, : len(rir)] = rir / max(np.abs(rir).max(), 1e-9)
    np.savez_compressed(out / "rirs.npz", rirs=rirs.astype(np.float16))


def ecg_windows(generator: str, split: str, n: int, workers: int = 2):
    """(x [n, 2500] mV, y [n]) of one split from one of the ECG generators."""
    from . import ecg

    if generator == "template":
        return ecg.generate_template(split, n, ECG_SEED, workers=workers)
    if generator == "shift":  # one seed per split: generate_shift draws test-coded windows
        return ecg.generate_shift(n, ECG_SEED + ("val", "test").index(split), workers=workers)
    return ecg.generate(split, n, ECG_SEED, workers=workers)


def build_ecg(out: Path, workers: int = 2, generator: str = "template") -> None:
    arrays = {"generator": np.array(generator)}
    for split, n in ECG_PER_SPLIT[generator].items():
        x, y = ecg_windows(generator, split, n, workers)
        arrays[f"{split}_x"] = x.astype(np.float16)
        arrays[f"{split}_y"] = y
    np.savez_compressed(out / "ecg.npz", **arrays)


def ecg_generator(directory: str | Path) -> str:
    """Which generator made a bank's ECG windows (banks made before it was recorded: ECGSYN)."""
    with np.load(Path(directory) / "ecg.npz") as d:
        return str(d["generator"]) if "generator" in d.files else "ecgsyn"


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build a stream bank (see the module docstring).")
    ap.add_argument("out", nargs="?", default=".cache/stream15")
    ap.add_argument("parts", nargs="?", default="words,rirs,ecg")
    ap.add_argument("--ecg-generator", choices=ECG_GENERATORS, default="template")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {"words": build_words, "rirs": build_rirs,
                "ecg": lambda o: build_ecg(o, generator=args.ecg_generator)}
    for part in args.parts.split(","):
        t = time.time()
        builders[part](out)
        print(f"{part}: {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
