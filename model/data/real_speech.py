"""Real recorded speech, to measure what the synthesized sets cannot: the Asterisk PBX prompts.

Allison Smith's recordings of Asterisk's 568 core prompts ("Please enter your password
followed by the pound key.", digits, letters, ...): one US English speaker, about 25 minutes,
CC-BY-SA-3.0, from Debian `asterisk-core-sounds-en-g722` (G.722 wideband, 16 kHz; decoded by
the `G722` wheel, a bit-exact ITU G.722 codec) with their transcripts from
`asterisk-core-sounds-en` (`make speech-engines` installs both). Nothing is trained or tuned on
them; the transcripts say which prompts hold a keyword ("No more messages.", "...has left the
conference."), so the rest is real non-keyword speech (`bench/real_speech.py`).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
PACKAGES = ("asterisk-core-sounds-en", "asterisk-core-sounds-en-g722")


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
    """Lower-case word tokens ("Call-Forward on Busy." -> call, forward, on, busy)."""
    return re.findall(r"[a-z']+", text.lower())


def keywords_in(text: str, keywords) -> list[str]:
    """The keywords a transcript says, as whole words, each once, in order ("logged on" holds
    "on"; "one", "gone" and "nobody" hold none)."""
    return list(dict.fromkeys(w for w in words(text) if w in set(keywords)))


def decode_g722(data: bytes) -> np.ndarray:
    """G.722 at 64 kbit/s -> float32 samples at 16 kHz in full-scale units."""
    import G722

    pcm = np.asarray(G722.G722(SAMPLE_RATE, 64000).decode(data), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def unavailable_reason() -> str | None:
    """Why the prompts cannot be read here (None when they can)."""
    if importlib.util.find_spec("G722") is None:
        return "the G722 wheel is not installed (pip install G722)"
    if not TRANSCRIPTS.is_file() or not SOUNDS.is_dir():
        return f"Debian {' and '.join(PACKAGES)} are not installed (make speech-engines)"
    return None


def prompts(keywords, sounds: Path = SOUNDS, transcripts: Path = TRANSCRIPTS) -> list[dict]:
    """Every prompt with a transcript: name, text, the keywords it says, samples (16 kHz)."""
    with gzip.open(transcripts, "rt", errors="replace") as f:
        texts = parse_transcripts(f)
    out = []
    for path in sorted(Path(sounds).rglob("*.g722")):
        name = path.relative_to(sounds).with_suffix("").as_posix()
        if name in texts:
            out.append(dict(name=name, text=texts[name], keywords=keywords_in(texts[name], keywords),
                            wav=decode_g722(path.read_bytes())))
    return out
