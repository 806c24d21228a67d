"""Keyword speech from six independent synthesizers, as a bank of clean utterances.

Engines: espeak-ng (formant synthesis; the `espeakng-loader` wheel), flite (CMU Flite 2.2,
diphone and clustergen voices; Debian `flite`), festival (diphone and HTS voices; Debian
`festival`, `festvox-kallpc16k`, `festvox-kdlpc16k`, `festvox-us-slt-hts`, and the British
`festvox-rablpc16k`, `festvox-don` from contrib), MBROLA (diphones cut from recordings of 20
speakers: 4 native English, 16 speaking English with their own language's diphones; Debian
contrib/non-free `mbrola`, `mbrola-us1` ... driven by the `espeak-ng` program's English front
end), SVOX Pico (HMM synthesis, en-US and en-GB; Debian non-free `libttspico-utils`) and
RHVoice (statistical parametric synthesis with its own English front end; six voices: US, Scottish
and Russian-accented speakers; Debian non-free `rhvoice`, `rhvoice-english`); `make
speech-engines` installs the contrib / non-free packages). Each utterance is
rendered once, clean, with random speaking rate and pitch, resampled to 16 kHz, trimmed and
peak-normalised, and stored as 16-bit PCM in one FLAC per engine plus a JSON index
(`build_bank`). The augmentation (speed, rooms, noise, gain, placement) happens later, where
the training runs (`model.data.kws_mix`), so one small bank feeds any number of clips.

Splits are by voice, inside each engine: espeak-ng by the hash split of `kws.voice_split`,
flite: awb = val, rms = test, the rest train; festival: rab_diphone = val, ked_diphone = test,
the rest (kal_diphone, cmu_us_slt_arctic_hts, don_diphone) train; MBROLA by the table below;
Pico: en-US train, en-GB test; RHVoice: alan (Scottish) = val, clb = test, the rest train. Unknown words are split too: the last six of
`kws.UNKNOWN_WORDS` and a set of short phrases occur only in test material, so `unknown` is
measured on words the model never heard. Leave-one-engine-out uses every voice of the held-out
engine's one-pass plan.

More training voices (`plan(..., extra_voices=k)`, `EXTRA_VOICES`): nine more MBROLA speakers
(diphone sets of other languages speaking English through espeak-ng's phoneme tables, as
espeak-ng's own accented `mb-*-en` voices do) and festival's two MBROLA voices; training only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .kws import KEYWORDS, SAMPLE_RATE, UNKNOWN_WORDS
from .stream_bank import EXTRA_TRAIN_WORDS

ENGINES = ("espeak", "flite", "festival", "mbrola", "pico", "rhvoice")
ENGINE_NAMES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival",
                "mbrola": "MBROLA", "pico": "SVOX Pico", "rhvoice": "RHVoice"}  # as tables print
FLITE_VOICES = {"kal": "train", "kal16": "train", "slt": "train", "awb": "val", "rms": "test"}
FLITE_FEMALE = {"slt"}
# kal (US) and slt (US, HTS) from Debian main; rab (British, val) and don (British, the
# festival tutorial's small LPC voice, 10 kHz) from contrib; ked (US, main) test
FESTIVAL_VOICES = {"kal_diphone": "train", "cmu_us_slt_arctic_hts": "train",
                   "don_diphone": "train", "rab_diphone": "val", "ked_diphone": "test"}
FESTIVAL_DIR = Path("/usr/share/festival/voices")
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "cmu_us_slt_arctic_hts":
                     "festvox-us-slt-hts", "don_diphone": "festvox-don", "rab_diphone":
                     "festvox-rablpc16k", "ked_diphone": "festvox-kdlpc16k"}  # Debian packages
# espeak-ng voice names "mb-<db>"; native us1 (F) / us3 train, en1 (British) val, us2 test;
# the accented voices split across train / val / test with women and men in each
MBROLA_VOICES = {
    "mb-us1": "train", "mb-us3": "train", "mb-en1": "val", "mb-us2": "test",
    "mb-af1-en": "train", "mb-de1-en": "train", "mb-de2-en": "train", "mb-de4-en": "train",
    "mb-de5-en": "train", "mb-fr1-en": "train", "mb-gr2-en": "train", "mb-hu1-en": "train",
    "mb-ro1-en": "train", "mb-sw1-en": "train", "mb-nl2-en": "val", "mb-de3-en": "val",
    "mb-fr4-en": "test", "mb-de6-en": "test", "mb-pl1-en": "test", "mb-sw2-en": "test",
}  # fmt: skip
PICO_VOICES = {"en-US": "train", "en-GB": "test"}
# bdl (US, M), slt (US, F; the CMU Arctic speaker flite and festival also voice, here through
# another engine), evgeniy-eng (M) and lyubov (F) (Russian-accented English) train; alan
# (Scottish, M) val; clb (US, F) test
RHVOICE_VOICES = {"bdl": "train", "slt": "train", "evgeniy-eng": "train", "lyubov": "train",
                  "alan": "val", "clb": "test"}
RHVOICE_DIR = Path("/usr/share/RHVoice/voices")
#: the Debian program that renders each command-line engine
PROGRAMS = {"flite": "flite", "festival": "festival", "mbrola": "mbrola", "pico": "pico2wave",
            "rhvoice": "RHVoice-test"}
MBROLA_DIR = Path("/usr/share/mbrola")
#: more voices per engine, training only (`plan(..., extra_voices=k)`): the engines with the
#: fewest training speakers get recorded diphone sets of other speakers. MBROLA: every Debian
#: diphone database of another language that espeak-ng can drive (`mb-<db>-en`, written by
#: `mbrola_english_voices`) and that renders each keyword and each of `kws.UNKNOWN_WORDS`
#: without a missing diphone (`diphone_gaps`; the other 25 databases tried lack diphones for
#: 1-38 of those 40 words). Festival: its MBROLA voices on the us1 / us3 databases, which are
#: MBROLA training voices already, so no validation or test speaker is heard.
EXTRA_VOICES = {
    "mbrola": ("mb-es1-en", "mb-es2-en", "mb-fr2-en", "mb-fr3-en", "mb-fr5-en", "mb-fr6-en",
               "mb-fr7-en", "mb-id1-en", "mb-ir1-en"),
    "festival": ("us1_mbrola", "us3_mbrola"),
}
FESTIVAL_PACKAGES_EXTRA = {"us1_mbrola": "festvox-us1", "us3_mbrola": "festvox-us3"}
#: festival's MBROLA voices' own mean pitch (Hz; their festvox files), varied around it
FESTIVAL_MBROLA_F0 = {"us1_mbrola": 160.0, "us3_mbrola": 110.0}
UNKNOWN_TRAIN = UNKNOWN_WORDS[:24]
UNKNOWN_HELDOUT = UNKNOWN_WORDS[24:]
PHRASES = (
    "the weather is nice today", "please open the window", "what time is it",
    "my phone is ringing", "turn the music louder", "she sells sea shells",
    "a cup of coffee", "good morning everyone", "the train was late", "call me tomorrow",
    "how are you doing", "that sounds great", "close the door", "it is raining",
    "see you later",
)  # fmt: skip
#: a broad training vocabulary of non-keywords (`plan(..., vocabulary=k)`): the words the
#: keyword-event streams hear (confusables such as pup, dough, stock, bright among them), less
#: every word of the test phrases and the held-out unknown words, which stay unheard
MORE_UNKNOWN = tuple(w for w in EXTRA_TRAIN_WORDS
                     if w not in {t for p in PHRASES for t in p.split()} | set(UNKNOWN_HELDOUT))
#: non-keyword phrases the validation voices say (`plan(..., val_phrases=k)`), so that a decision
#: set sees what the test phrases measure (how often new words fire a keyword); no word of them
#: is a keyword, an unknown word (or its homophone), a vocabulary word or a content word of
#: the test phrases (they share function words only: VAL_PHRASE_SHARED)
VAL_PHRASES = (
    "we drove to the market", "the kettle is boiling", "pass the salt and pepper",
    "he forgot his umbrella", "the bus arrives at noon", "they painted the fence",
    "a basket of fresh eggs", "my keys are in the car", "the children laughed loudly",
    "we need more sugar", "the garage smells of paint", "her jacket was very warm",
    "the library shuts early", "fix the broken lamp", "the candle burned all night",
)  # fmt: skip
VAL_PHRASE_SHARED = frozenset({"the", "is", "a", "of", "my", "are", "was"})
# renditions per (split, kind, text) and engine
COUNTS = {("train", "keyword"): 36, ("train", "unknown"): 6, ("val", "keyword"): 4,
          ("val", "unknown"): 1, ("test", "keyword"): 8, ("test", "unknown"): 6,
          ("test", "phrase"): 1}
MAX_WORD = SAMPLE_RATE - 800
MAX_PHRASE = int(1.6 * SAMPLE_RATE)


def engine_voices(engine: str) -> dict[str, str]:
    """voice -> split for one engine."""
    if engine == "espeak":
        from . import espeak
        from .kws import voice_split

        return {v: voice_split(v) for v in espeak.all_voices()}
    return dict({"flite": FLITE_VOICES, "festival": FESTIVAL_VOICES, "mbrola": MBROLA_VOICES,
                 "pico": PICO_VOICES, "rhvoice": RHVOICE_VOICES}[engine])


def plan(engine: str, seed: int = 0, train_passes: int = 1, vocabulary: int = 0,
         val_passes: int = 1, val_phrases: int = 0, extra_voices: int = 0) -> list[dict]:
    """Every utterance of one engine: text, kind, split, voice, rate and pitch settings.
    `train_passes` > 1 appends that many - 1 more renditions of every training word (the
    training COUNTS again, new voices / rates / pitches drawn from their own random stream);
    `vocabulary` > 0 then appends that many training renditions of each `MORE_UNKNOWN` word;
    `val_passes` > 1 then that many - 1 more passes over the validation words (a decision set
    with more distinct utterances: clips of one utterance are not independent); `val_phrases`
    > 0 then that many renditions of each VAL_PHRASES phrase by the validation voices (what
    the test phrases measure, on validation); `extra_voices` > 0 then that many passes over the
    training words by the engine's `EXTRA_VOICES` (training only). The first pass
    (`first_pass`), and so every test utterance, stays as with none of them."""
    rng = np.random.default_rng([ENGINES.index(engine), seed])
    voices = engine_voices(engine)
    by_split = {s: sorted(v for v, sp in voices.items() if sp == s) for s in ("train", "val",
                                                                               "test")}
    jobs = []
    for split in ("train", "val", "test"):
        if by_split[split]:
            jobs += _split_jobs(engine, split, by_split[split], rng)
    for extra in range(1, train_passes):
        rng = np.random.default_rng([ENGINES.index(engine), seed, extra])
        jobs += [dict(j, train_pass=extra)
                 for j in _split_jobs(engine, "train", by_split["train"], rng)]
    if vocabulary:
        rng = np.random.default_rng([ENGINES.index(engine), seed, 1000])
        texts = [(w, "unknown") for w in MORE_UNKNOWN]
        jobs += [dict(j, vocabulary=True) for j in _split_jobs(
            engine, "train", by_split["train"], rng, texts, vocabulary)]
    for extra in range(1, val_passes if by_split["val"] else 1):
        rng = np.random.default_rng([ENGINES.index(engine), seed, 2000 + extra])
        jobs += [dict(j, val_pass=extra) for j in _split_jobs(engine, "val", by_split["val"], rng)]
    if val_phrases and by_split["val"]:
        rng = np.random.default_rng([ENGINES.index(engine), seed, 3000])
        texts = [(p, "phrase") for p in VAL_PHRASES]
        jobs += [dict(j, val_phrase=True) for j in _split_jobs(
            engine, "val", by_split["val"], rng, texts, val_phrases)]
    for extra in range(extra_voices if EXTRA_VOICES.get(engine) else 0):
        rng = np.random.default_rng([ENGINES.index(engine), seed, 4000 + extra])
        jobs += [dict(j, extra_voice=extra + 1) for j in _split_jobs(
            engine, "train", sorted(EXTRA_VOICES[engine]), rng)]
    return jobs


def composition(rows: list[dict]) -> dict:
    """What a loaded bank holds beyond the one-pass plan, read off its rows (the inverse of
    `plan`'s options): rendition passes over the training and validation words, the
    renditions of each vocabulary word per engine and (where any) of each validation phrase."""
    per_word: dict = {}
    per_phrase: dict = {}
    for r in rows:
        for flag, count in (("vocabulary", per_word), ("val_phrase", per_phrase)):
            if r.get(flag):
                key = (r["engine"], r["text"])
                count[key] = count.get(key, 0) + 1
    comp = dict(train_passes=1 + max((r.get("train_pass", 0) for r in rows), default=0),
                val_passes=1 + max((r.get("val_pass", 0) for r in rows), default=0),
                vocabulary=max(per_word.values(), default=0))
    if per_phrase:  # only then, so that earlier runs' records read the same
        comp["val_phrases"] = max(per_phrase.values())
    extra = max((r.get("extra_voice", 0) for r in rows), default=0)
    if extra:
        comp["extra_voices"] = extra
    return comp


def validate_on(rows: list[dict], voices: list[str]) -> list[dict]:
    """Rows with training voices ("engine:voice") made validation voices: their one-pass
    renditions become validation material and their extra passes / vocabulary are dropped, so
    that banks of different passes keep the same validation rows. Rotating which training voice
    validates (k-fold by voice) gives a decision set that varies voices, not renditions; test
    rows never move."""
    moved = set()
    for name in voices:
        engine, _, voice = name.partition(":")
        if engine not in ENGINES or engine_voices(engine).get(voice) != "train":
            raise ValueError(f"{name!r} is not a training voice (engine:voice, e.g. flite:slt)")
        moved.add((engine, voice))
    for engine in {e for e, _ in moved}:
        if all((engine, v) in moved for v, sp in engine_voices(engine).items() if sp == "train"):
            raise ValueError(f"{engine} would keep no training voice")
    out = []
    for r in rows:
        if (r["engine"], r["voice"]) not in moved:
            out.append(r)
        elif first_pass(r):
            out.append(dict(r, split="val"))
    return out


def first_pass(row: dict) -> bool:
    """Whether a bank row belongs to the one-pass plan (no extra pass, vocabulary, voice)."""
    return not (row.get("train_pass") or row.get("val_pass") or row.get("vocabulary")
                or row.get("val_phrase") or row.get("extra_voice"))


def _split_jobs(engine: str, split: str, voices: list[str], rng: np.random.Generator,
                texts: list[tuple[str, str]] | None = None, count: int | None = None):
    """One pass over a split's texts (default: its keywords, unknown words and phrases):
    `count` (default COUNTS) renditions each, voice / rate / pitch drawn."""
    if texts is None:
        texts = [(w, "keyword") for w in KEYWORDS]
        texts += [(w, "unknown")
                  for w in (UNKNOWN_HELDOUT if split == "test" else UNKNOWN_TRAIN)]
        if split == "test":
            texts += [(p, "phrase") for p in PHRASES]
    jobs = []
    for text, kind in texts:
        for _ in range(count or COUNTS[(split, kind)]):
            jobs.append(dict(engine=engine, split=split, kind=kind, text=text,
                             voice=voices[rng.integers(len(voices))],
                             stretch=round(float(rng.uniform(0.75, 1.35)), 3),
                             pitch=round(float(rng.uniform(0, 1)), 3),
                             seed=int(rng.integers(2**31))))
    return jobs


def _finish(wav: np.ndarray, rate: int, kind: str) -> np.ndarray:
    """16 kHz, trimmed of silence (2 % of peak, 10 ms margins), peak 1, length-limited, int16."""
    from scipy.signal import resample_poly

    wav = np.asarray(wav, dtype=np.float64).ravel()
    if rate != SAMPLE_RATE:
        g = np.gcd(int(rate), SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, int(rate) // g)
    peak = np.abs(wav).max(initial=0.0)
    if peak < 1e-4:
        return np.zeros(0, np.int16)
    active = np.flatnonzero(np.abs(wav) > 0.02 * peak)
    wav = wav[max(active[0] - 160, 0) : active[-1] + 160] / peak
    limit = MAX_PHRASE if kind == "phrase" else MAX_WORD
    if len(wav) > limit:
        wav = wav[:limit] * np.concatenate([np.ones(limit - 320), np.linspace(1, 0, 320)])
    return np.round(wav * 32000).astype(np.int16)


def _render_espeak(jobs: list[dict]) -> list[np.ndarray]:
    """Runs in a fresh process (espeak-ng output depends on what the process spoke before)."""
    from . import espeak

    out = []
    for j in jobs:
        wav, sr = espeak.synthesize(j["text"], j["voice"], rate=_words_per_minute(j["stretch"]),
                                    pitch=int(15 + 70 * j["pitch"]),
                                    pitch_range=int(20 + 70 * j["pitch"]), seed=j["seed"])
        out.append(_finish(wav, sr, j["kind"]))
    return out


def _words_per_minute(stretch: float) -> int:
    """espeak-ng's speaking rate for a duration stretch 0.75-1.35: 230-110 words per minute."""
    return int(230 - 120 * (stretch - 0.75) / 0.6)


def _render_by_command(jobs: list[dict], command, text_on_stdin: bool = False) -> list[np.ndarray]:
    """One synthesizer process per job: command(job, wav_path) -> argv that writes wav_path
    (reading the text from stdin where text_on_stdin)."""
    import soundfile as sf

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "u.wav")
        for j in jobs:
            subprocess.run(command(j, path), check=True, capture_output=True, timeout=60,
                           input=j["text"].encode() if text_on_stdin else None)
            wav, sr = sf.read(path, dtype="float64")
            out.append(_finish(wav, sr, j["kind"]))
    return out


def _flite_command(j: dict, path: str) -> list[str]:
    lo, hi = (150, 240) if j["voice"] in FLITE_FEMALE else (85, 150)
    f0 = lo + (hi - lo) * j["pitch"]
    return ["flite", "-voice", j["voice"], "--setf", f"duration_stretch={j['stretch']}",
            "--setf", f"int_f0_target_mean={f0:.0f}", "-t", j["text"], "-o", path]


def _festival_f0(voice: str, pitch: float) -> float | None:
    """Mean pitch (Hz) for a festival voice with LR intonation (diphone voices: a male range;
    the MBROLA voices: around their own), None for the others (HTS keeps its own)."""
    if voice.endswith("_diphone"):
        return 85 + 65 * pitch
    if voice in FESTIVAL_MBROLA_F0:
        return FESTIVAL_MBROLA_F0[voice] * (0.75 + 0.5 * pitch)
    return None


def _render_festival(jobs: list[dict]) -> list[np.ndarray]:
    """One festival process for all jobs (a Scheme script), then read the WAVs back."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for k, j in enumerate(jobs):
            text = j["text"].replace('"', "")
            lines.append(f"(voice_{j['voice']})")
            lines.append(f"(Parameter.set 'Duration_Stretch {j['stretch']})")
            f0 = _festival_f0(j["voice"], j["pitch"])
            if f0 is not None:  # the voice's linear-regression intonation, re-centred
                lines.append(f"(set! int_lr_params '((target_f0_mean {f0:.0f}) (target_f0_std "
                             f"{10 + 25 * j['pitch']:.0f}) (model_f0_mean 170) "
                             "(model_f0_std 34)))")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) '
                         f'"{tmp}/{k}.wav" \'riff)')
        script = Path(tmp) / "jobs.scm"
        script.write_text("\n".join(lines) + "\n")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True,
                       timeout=3600)
        out = []
        for k, j in enumerate(jobs):
            wav, sr = sf.read(f"{tmp}/{k}.wav", dtype="float64")
            out.append(_finish(wav, sr, j["kind"]))
    return out


def _mbrola_database(voice: str) -> str:
    """mb-de1-en -> de1: the MBROLA diphone database the espeak-ng voice speaks with."""
    return voice.split("-")[1]


def _mbrola_command(j: dict, path: str) -> list[str]:
    """espeak-ng's English front end (phonemes, durations, pitch) + MBROLA's recorded diphones
    (an `EXTRA_VOICES` speaker through the voice files of `mbrola_english_voices`)."""
    return ["espeak-ng", *_espeak_path(j["voice"]), "-v", j["voice"],
            "-s", str(_words_per_minute(j["stretch"])), "-p", str(int(15 + 70 * j["pitch"])),
            "-w", path, j["text"]]


def espeak_data_dir() -> Path:
    """Where the espeak-ng program keeps its data (it says so in `--version`)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                         check=True).stdout
    return Path(out.split("Data at:")[1].strip())


def mbrola_english_voices(root: Path | None = None) -> Path:
    """A copy of espeak-ng's data with an English voice `mb/mb-<db>-en` for every extra MBROLA
    database: `language en` plus the database's own phoneme table (from espeak-ng's native
    `mb/mb-<db>` voice), the recipe of espeak-ng's own accented voices such as mb-fr1-en. Returns
    the folder to pass as `espeak-ng --path` (made once; under the user cache by default)."""
    if root is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        root = cache / "s4d-espeak-mbrola-en"
    voices = root / "espeak-ng-data" / "voices" / "mb"
    if not all((voices / v).is_file() for v in EXTRA_VOICES["mbrola"]):
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent))
        shutil.copytree(espeak_data_dir(), tmp / "espeak-ng-data")
        for voice in EXTRA_VOICES["mbrola"]:
            db = _mbrola_database(voice)
            native = (tmp / "espeak-ng-data" / "voices" / "mb" / f"mb-{db}").read_text()
            table = next(ln for ln in native.splitlines() if ln.startswith("mbrola "))
            gender = next((ln for ln in native.splitlines() if ln.startswith("gender")), "")
            (tmp / "espeak-ng-data" / "voices" / "mb" / voice).write_text(
                f"name en-{db}\nlanguage en 20\n{gender}\n{table}\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


@functools.cache
def _english_voices_dir() -> Path:
    return mbrola_english_voices()


def _espeak_path(voice: str) -> list[str]:
    """espeak-ng's `--path` to the voice files of an EXTRA_VOICES speaker (checked once per
    process, not once per utterance), none for espeak-ng's own voices."""
    return [f"--path={_english_voices_dir()}"] if voice in EXTRA_VOICES["mbrola"] else []


def diphone_gaps(voice: str, words) -> list[str]:
    """The words an MBROLA voice (espeak-ng name) renders with a missing diphone (MBROLA warns
    `... unknown, replaced with _-_` and speaks silence there): how EXTRA_VOICES were chosen."""
    where = _espeak_path(voice)
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in words:
            run = subprocess.run(["espeak-ng", *where, "-v", voice, "-w", f"{tmp}/g.wav", w],
                                 capture_output=True, text=True, timeout=60)
            if "unknown" in run.stderr:
                gaps.append(w)
    return gaps


def _pico_command(j: dict, path: str) -> list[str]:
    """pico2wave with SVOX markup for speaking rate and pitch (levels in %, 100 = voice default)."""
    speed, pitch = int(round(100 / j["stretch"])), int(round(80 + 45 * j["pitch"]))
    text = f"<speed level='{speed}'><pitch level='{pitch}'>{j['text']}</pitch></speed>"
    return ["pico2wave", "-l", j["voice"], "-w", path, text]


def _rhvoice_command(j: dict, path: str) -> list[str]:
    """RHVoice-test reads the text on stdin; rate and pitch in % of the voice's own (100)."""
    speed, pitch = int(round(100 / j["stretch"])), int(round(80 + 45 * j["pitch"]))
    return ["RHVoice-test", "-p", j["voice"], "-r", str(speed), "-t", str(pitch), "-o", path]


def festival_voice_installed(voice: str) -> bool:
    """Whether festival's voice directory (/usr/share/festival/voices/<language>/<voice>) exists."""
    return any(FESTIVAL_DIR.glob(f"*/{voice}/festvox"))


def _voice_installed(engine: str, voice: str) -> bool:
    """Whether one voice's files are here (festival, MBROLA and RHVoice install them one by one;
    the other engines' voices come with the program)."""
    if engine == "festival":
        return festival_voice_installed(voice)
    if engine == "mbrola":
        return (MBROLA_DIR / _mbrola_database(voice)).is_dir()
    if engine == "rhvoice":
        return (RHVOICE_DIR / voice).is_dir()
    return True


def missing_voices(engine: str) -> list[str]:
    """The engine's voices this machine lacks."""
    voices = {"festival": FESTIVAL_VOICES, "mbrola": MBROLA_VOICES,
              "rhvoice": RHVOICE_VOICES}.get(engine, {})
    return [v for v in voices if not _voice_installed(engine, v)]


def missing_extra_voices(engine: str) -> list[str]:
    """The engine's EXTRA_VOICES this machine lacks."""
    return [v for v in EXTRA_VOICES.get(engine, ()) if not _voice_installed(engine, v)]


def engine_available(engine: str) -> bool:
    """Whether this machine can render an engine and all its voices (all but espeak-ng are
    Debian programs)."""
    if engine == "espeak":
        try:
            import espeakng_loader  # noqa: F401
        except ImportError:
            return False
        return True
    if engine == "mbrola" and shutil.which("espeak-ng") is None:
        return False
    return shutil.which(PROGRAMS[engine]) is not None and not missing_voices(engine)


def _voice_package(engine: str, voice: str) -> str:
    """The Debian package that holds one voice of an engine."""
    if engine == "festival":
        return {**FESTIVAL_PACKAGES, **FESTIVAL_PACKAGES_EXTRA}[voice]
    return "rhvoice-english" if engine == "rhvoice" else f"mbrola-{_mbrola_database(voice)}"


def unavailable_reason(engine: str) -> str:
    """What build_bank says when an engine can't render: which voices lack, where that's all."""
    missing = missing_voices(engine)
    if not missing or shutil.which(PROGRAMS.get(engine, engine)) is None:
        return f"{engine} is not installed here"
    return _lacking(engine, missing, "voices")


def _lacking(engine: str, voices: list[str], what: str) -> str:
    """'<engine> lacks <what> a, b (Debian <packages>; `make speech-engines` installs them)'."""
    packages = dict.fromkeys(_voice_package(engine, v) for v in voices)
    return (f"{engine} lacks {what} {', '.join(voices)} (Debian {', '.join(packages)}; "
            "`make speech-engines` installs them)")


def render(jobs: list[dict]) -> list[np.ndarray]:
    """Clean int16 utterances for jobs of one engine (espeak-ng in a fresh process)."""
    if not jobs:
        return []
    engine = jobs[0]["engine"]
    if engine == "espeak":
        with get_context("spawn").Pool(1) as pool:
            return pool.apply(_render_espeak, (jobs,))
    if engine == "festival":
        return _render_festival(jobs)
    if engine == "rhvoice":
        return _render_by_command(jobs, _rhvoice_command, text_on_stdin=True)
    command = {"flite": _flite_command, "mbrola": _mbrola_command, "pico": _pico_command}[engine]
    return _render_by_command(jobs, command)


def write_engine(bank: Path, engine: str, jobs: list[dict], wavs: list[np.ndarray]) -> dict:
    """<engine>.flac (all utterances back to back) + <engine>.json (one row per utterance)."""
    import soundfile as sf

    rows, pos = [], 0
    for j, w in zip(jobs, wavs, strict=True):
        if len(w) == 0:
            continue
        rows.append(dict(j, offset=pos, length=len(w)))
        pos += len(w)
    audio = np.concatenate([w for w in wavs if len(w)])
    bank.mkdir(parents=True, exist_ok=True)
    sf.write(bank / f"kws_{engine}.flac", audio, SAMPLE_RATE, subtype="PCM_16",
             compression_level=1.0)  # lossless; the smallest file (banks travel to the GPU)
    (bank / f"kws_{engine}.json").write_text(json.dumps(dict(engine=engine, sample_rate=SAMPLE_RATE,
                                                             utterances=rows)) + "\n")
    return dict(engine=engine, utterances=len(rows), seconds=round(pos / SAMPLE_RATE, 1),
                bytes=(bank / f"kws_{engine}.flac").stat().st_size)


def build_bank(bank: Path, engines=ENGINES, workers: int = 2, seed: int = 0,
               train_passes: int = 1, vocabulary: int = 0, val_passes: int = 1,
               val_phrases: int = 0, extra_voices: int = 0) -> list[dict]:
    """Render and store every engine's plan (`train_passes`, `vocabulary`, `val_passes`,
    `val_phrases`, `extra_voices`: see `plan`); returns a summary per engine."""
    summary = []
    for engine in engines:
        if not engine_available(engine):
            raise RuntimeError(unavailable_reason(engine))
        lacking = missing_extra_voices(engine) if extra_voices else []
        if lacking:
            raise RuntimeError(_lacking(engine, lacking, "extra voices"))
        jobs = plan(engine, seed, train_passes, vocabulary, val_passes, val_phrases,
                    extra_voices)
        summary.append(write_engine(Path(bank), engine, jobs, render(jobs)))
        print(summary[-1], flush=True)
    return summary


def load_bank(bank: Path, engines=ENGINES) -> list[dict]:
    """Utterance rows of the given engines, each with its float32 samples under 'wav'."""
    import soundfile as sf

    rows = []
    for engine in engines:
        meta = json.loads((Path(bank) / f"kws_{engine}.json").read_text())
        audio, _ = sf.read(Path(bank) / f"kws_{engine}.flac", dtype="float32")
        for r in meta["utterances"]:
            rows.append(dict(r, wav=audio[r["offset"] : r["offset"] + r["length"]]))
    return rows
