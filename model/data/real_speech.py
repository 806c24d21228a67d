"""Real recorded speech, to measure what the synthesized sets cannot: the Asterisk PBX prompts.

The recordings of Asterisk's core prompts ("Please enter your password followed by the pound
key.", digits, letters, ...), 500-600 per language and 20-30 minutes each, CC-BY-SA-3.0, from
Debian `asterisk-core-sounds-<language>-g722` (G.722 wideband, 16 kHz; decoded by the `G722`
wheel, a bit-exact ITU G.722 codec) with their transcripts from `asterisk-core-sounds-<language>`
(`make speech-engines` installs them): English by Allison Smith (US), and as non-English speech
Canadian French by June Wallack, Italian by Carlo Flora, Russian by a fourth speaker and Mexican
Spanish by Allison Smith again. Nothing is trained or tuned on them; the transcripts say which
prompts hold a keyword as a whole word ("No more messages.", Spanish "no"), so the rest is real
non-keyword speech (`bench/real_speech.py`).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")
DOC_ROOT = Path("/usr/share/doc")
#: language -> the folder of its speaker's prompts (language_REGION_sex_name, as Asterisk names it)
SPEAKERS = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June", "it": "it_IT_m_Carlo",
            "ru": "ru_RU_f_IvrvoiceRU", "es": "es_MX_f_Allison"}


def packages(language: str) -> tuple[str, str]:
    """The Debian packages of one language's transcripts and G.722 audio."""
    return f"asterisk-core-sounds-{language}", f"asterisk-core-sounds-{language}-g722"


def sounds(language: str) -> Path:
    return SOUNDS_ROOT / SPEAKERS[language]


def transcripts_file(language: str) -> Path:
    return DOC_ROOT / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"


def parse_transcripts(lines) -> dict[str, str]:
    """`name: text` lines (a `;` starts a comment) -> {name: text}; names may hold a folder
    ("digits/1")."""
    out = {}
    for line in lines:
        if line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        out[name.strip()] = text.strip()
    return out


def words(text: str) -> list[str]:
    """Lower-case word tokens of letters in any script ("Call-Forward on Busy." -> call,
    forward, on, busy; "numéro" stays one word)."""
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text.lower())


def keywords_in(text: str, keywords) -> list[str]:
    """The keywords a transcript says, as whole words, each once, in order ("logged on" holds
    "on"; "one", "gone" and "nobody" hold none)."""
    wanted = set(keywords)
    return list(dict.fromkeys(w for w in words(text) if w in wanted))


def decode_g722(data: bytes) -> np.ndarray:
    """G.722 at 64 kbit/s -> float32 samples at 16 kHz in full-scale units."""
    import G722

    pcm = np.asarray(G722.G722(SAMPLE_RATE, 64000).decode(data), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def unavailable_reason(language: str = "en") -> str | None:
    """Why one language's prompts cannot be read here (None when they can)."""
    if importlib.util.find_spec("G722") is None:
        return "the G722 wheel is not installed (pip install G722)"
    if not transcripts_file(language).is_file() or not sounds(language).is_dir():
        return (f"Debian {' and '.join(packages(language))} are not installed "
                "(make speech-engines)")
    return None


def prompts(keywords, language: str = "en") -> list[dict]:
    """Every prompt of a language with a transcript: name, text, the keywords it says (as whole
    words), samples (16 kHz)."""
    with gzip.open(transcripts_file(language), "rt", errors="replace") as f:
        texts = parse_transcripts(f)
    folder = sounds(language)
    out = []
    for path in sorted(folder.rglob("*.g722")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in texts:
            out.append(dict(name=name, text=texts[name], keywords=keywords_in(texts[name], keywords),
                            wav=decode_g722(path.read_bytes())))
    return out
