"""Is a clean held-out test utterance a fair question? An independent recogniser, trained on
human speech, against the shipped kws-s4d on the same clean test utterances (issue 13).

The recogniser: CMU PocketSphinx 5 (PyPI `pocketsphinx`, its bundled US English acoustic model
and CMU dictionary), restricted by a JSGF grammar to the 40 words the bank renders (10
keywords + `kws.UNKNOWN_WORDS`). kws-s4d hears each utterance alone in a 1 s window (centred,
peak 0.3, no noise, no room). A keyword is right when the word is named; an unknown word is
right when no keyword is (the recogniser) / the class is `unknown` (the model). Decides
nothing; trains nothing. CPU, about a minute:

    pip install pocketsphinx==5.0.4 --target /tmp/pslib
    PYTHONPATH=/tmp/pslib:. python bench/experiments/kws_oracle_2026_11_27/oracle.py \\
        --bank .cache/data13 --out bench/experiments/kws_oracle_2026_11_27/oracle.json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from pocketsphinx import Decoder, get_model_path

from model.checkpoint import load_checkpoint
from model.data.kws import CLASSES, KEYWORDS, UNKNOWN_WORDS

ENGINES = ("espeak", "flite", "festival", "mbrola", "pico", "rhvoice")


def recogniser() -> Decoder:
    words = list(KEYWORDS) + list(UNKNOWN_WORDS)
    gram = Path(tempfile.mkdtemp()) / "words.gram"
    gram.write_text("#JSGF V1.0;\ngrammar w;\npublic <w> = " + " | ".join(words) + " ;\n")
    mp = get_model_path()
    return Decoder(hmm=f"{mp}/en-us/en-us", dict=f"{mp}/en-us/cmudict-en-us.dict",
                   jsgf=str(gram), loglevel="FATAL")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bank", default=".cache/data13")
    p.add_argument("--checkpoint", default="checkpoints/kws-s4d")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dec = recogniser()
    net, _ = load_checkpoint(a.checkpoint)
    totals = {}
    words = collections.defaultdict(lambda: [0, 0, 0])
    misses = []
    for engine in ENGINES:
        meta = json.loads(Path(a.bank, f"kws_{engine}.json").read_text())
        audio, rate = sf.read(str(Path(a.bank, f"kws_{engine}.flac")), dtype="float32")
        assert rate == 16000
        utts = [u for u in meta["utterances"]
                if u["split"] == "test" and u["kind"] in ("keyword", "unknown")]
        clips, heard = [], []
        for u in utts:
            x = audio[u["offset"]:u["offset"] + u["length"]]
            dec.start_utt()
            dec.process_raw((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
            dec.end_utt()
            heard.append(dec.hyp().hypstr.strip() if dec.hyp() else "")
            c = np.zeros(16000, np.float32)
            n = min(len(x), 16000)
            c[(16000 - n) // 2:(16000 - n) // 2 + n] = x[:n] * 0.3 / max(1e-6, float(np.abs(x[:n]).max()))
            clips.append(c)
        with torch.no_grad():
            pred = net(torch.from_numpy(np.stack(clips))[..., None]).argmax(-1).tolist()
        n = oracle_ok = model_ok = 0
        for u, hyp, k in zip(utts, heard, pred, strict=True):
            truth = u["text"] if u["text"] in KEYWORDS else "unknown"
            o = hyp == u["text"] if truth != "unknown" else hyp not in KEYWORDS
            m = CLASSES[k] == truth
            n, oracle_ok, model_ok = n + 1, oracle_ok + o, model_ok + m
            w = words[(engine, truth)]
            w[0], w[1], w[2] = w[0] + 1, w[1] + o, w[2] + m
            if not (o and m):
                misses.append({"engine": engine, "voice": u["voice"], "text": u["text"],
                               "recogniser": hyp or None, "model": CLASSES[k]})
        totals[engine] = {"n": n, "recogniser": oracle_ok / n, "model": model_ok / n}
        print(f"{engine:9s} n={n:4d} recogniser {oracle_ok / n:6.1%}  kws-s4d {model_ok / n:6.1%}")
    per_word = [{"engine": e, "class": c, "n": v[0], "recogniser": v[1], "model": v[2]}
                for (e, c), v in sorted(words.items())]
    if a.out:
        Path(a.out).write_text(json.dumps({"totals": totals, "per_word": per_word,
                                           "misses": misses}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
