"""Real recorded speech for the keyword models' checks (`model/data/real_speech.py`,
`bench/real_speech.py`): transcripts say which prompts hold a keyword, as whole words; G.722
decodes to 16 kHz full scale; the cards' sections come from the measured JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import real_speech
from model.data.kws import KEYWORDS

ROOT = Path(__file__).resolve().parent.parent


def test_transcripts_parse_and_keywords_are_whole_words():
    text = real_speech.parse_transcripts([
        "; Core Asterisk Sounds in English\n", "\n",
        "agent-alreadyon: That agent is already logged on.  Please enter your number.\n",
        "digits/1: One.\n", "vm-nomore: No more messages.\n",
        "call-fwd-no-ans: Call-Forward on No Answer.\n", "dir-first: first name: Smith\n"])
    assert text == {"agent-alreadyon": "That agent is already logged on.  Please enter your number.",
                    "digits/1": "One.", "vm-nomore": "No more messages.",
                    "call-fwd-no-ans": "Call-Forward on No Answer.",
                    "dir-first": "first name: Smith"}
    assert real_speech.keywords_in(text["agent-alreadyon"], KEYWORDS) == ["on"]
    assert real_speech.keywords_in(text["digits/1"], KEYWORDS) == []  # "one" is not "on"
    assert real_speech.keywords_in(text["call-fwd-no-ans"], KEYWORDS) == ["on", "no"]
    assert real_speech.keywords_in("Nobody has gone upstairs; stopping.", KEYWORDS) == []
    assert real_speech.keywords_in("Go, go! Stop.", KEYWORDS) == ["go", "stop"]
    # other languages' transcripts: words of any script; a Spanish "no" is the keyword's word
    assert real_speech.words("Composez votre numéro d'agent") == [
        "composez", "votre", "numéro", "d'agent"]
    assert real_speech.keywords_in("No hay mensajes. Número no válido", KEYWORDS) == ["no"]
    assert real_speech.keywords_in("Этот оператор уже зарегистрирован", KEYWORDS) == []


def test_g722_round_trip_keeps_a_tone():
    pytest.importorskip("G722")
    import G722

    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    coded = bytes(G722.G722(16000, 64000).encode(tone))
    assert len(coded) == len(tone) // 2  # 64 kbit/s: 4 bits per sample at 16 kHz
    back = real_speech.decode_g722(coded)
    assert back.dtype == np.float32 and len(back) == len(tone)
    ref = tone.astype(np.float32) / 32768
    lag = int(np.argmax(np.correlate(back[:2000], ref[:2000], "full"))) - 1999  # codec delay
    a, b = back[max(lag, 0):], ref[: len(ref) - max(lag, 0)]
    assert np.corrcoef(a[1000:], b[1000:])[0, 1] > 0.99


def test_prompts_from_the_debian_packages(tmp_path):
    reason = real_speech.unavailable_reason("en")
    if reason:
        pytest.skip(reason)
    assert real_speech.packages("fr") == ("asterisk-core-sounds-fr", "asterisk-core-sounds-fr-g722")
    prompts = real_speech.prompts(KEYWORDS, "en")
    assert len(prompts) == 568
    by_name = {p["name"]: p for p in prompts}
    assert by_name["vm-nomore"]["keywords"] == ["no"] and by_name["digits/1"]["keywords"] == []
    assert 25 <= sum(1 for p in prompts if p["keywords"]) <= 30
    w = by_name["auth-thankyou"]["wav"]
    assert 0.5 < len(w) / real_speech.SAMPLE_RATE < 2 and 0.05 < np.abs(w).max() <= 1
    for lang in ("fr", "it", "ru", "es"):
        if real_speech.unavailable_reason(lang):
            continue
        other = {p["name"]: p for p in real_speech.prompts(KEYWORDS, lang)}
        assert len(other) > 400 and "auth-thankyou" in other
        assert other["auth-thankyou"]["text"] != by_name["auth-thankyou"]["text"]


def test_card_sections_come_from_the_measured_json(tmp_path):
    from bench.real_speech import BEGIN, END, clips_section, events_section, poisson_ci
    from scripts.eval_data13 import write_card

    r = json.loads((ROOT / "bench" / "model_eval" / "real_speech.json").read_text())
    e = r["events"]
    default = e["by_threshold"][f"{e['default_threshold']:g}"]
    section = events_section(r)
    assert f"| {e['default_threshold']:g} (default) | {default['per_hour']} (" in section
    assert f"({e['keywords'] - default['keywords_found']} of {e['keywords']})" in section
    rows = [ln for ln in section.splitlines() if ln.startswith("| 0.")]
    assert [float(ln.split("|")[1].split()[0]) for ln in rows] == sorted(
        float(t) for t in e["by_threshold"])
    assert f"**{r['clips']['keyword_pct']} % fire a keyword**" in clips_section(r)
    for lang, o in r["events"].get("other_languages", {}).items():
        v = o["by_threshold"][f"{e['default_threshold']:g}"]
        assert f"| {v['per_hour']} ({v['per_hour_ci95'][0]}-" in section
        assert f"| {r['clips']['other_languages'][lang]['keyword_pct']} % |" in clips_section(r)
    card = tmp_path / "CARD.md"
    card.write_text("# card\n")
    for _ in range(2):  # a second write replaces the first
        write_card(card, section, BEGIN, END)
    assert card.read_text().count(BEGIN) == 1
    # the exact Poisson interval: 0 events in 1 h -> [0, 3.69]; 6 in 0.4614 h as measured
    assert poisson_ci(0, 1.0) == [0.0, 3.69]
    assert poisson_ci(6, 0.4614) == [4.77, 28.3]
