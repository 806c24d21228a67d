"""Phone sequences of the keyword task's words: targets for an auxiliary CTC loss.

A whole-word classifier trained on a few dozen voices can key on whatever separates the words
in those voices (duration, pitch contour, one voice's odd rendition); a loss that also asks for
the word's phones in order (CTC, Graves et al. 2006) through a training-only head pushes the
shared features toward what every voice has in common. The lexicon is espeak-ng 1.51's en-us
phoneme mnemonics (`espeak-ng -q -x --sep=_ -v en-us WORD`), stress marks dropped and
allophone variants merged (O2 -> 0, t2 / t# -> t); `tests/test_phones.py` checks it against
the installed espeak-ng where there is one. Stored here so training needs no synthesizer.
"""

from __future__ import annotations

import numpy as np

ESPEAK_EN_US = {
    "yes": "j_'E_s", "no": "n_'oU", "up": "'V_p", "down": "d_'aU_n", "left": "l_'E_f_t",
    "right": "r_'aI_t", "on": "'O2_n", "off": "'O2_f", "stop": "s_t2_'0_p", "go": "g_'oU",
    "bed": "b_'E_d", "bird": "b_'3:_d", "cat": "k_'a_t", "dog": "d_'0_g", "happy": "h_'a_p_i",
    "house": "h_'aU_s", "marvin": "m_'A@_v_I_n", "sheila": "S_'i:_l_@", "tree": "t_r_'i:",
    "wow": "w_'aU", "zero": "z_'i@_r_oU", "one": "w_'V_n", "two": "t_'u:", "three": "T_r_'i:",
    "four": "f_'o@", "five": "f_'aI_v", "six": "s_'I_k_s", "seven": "s_'E_v_@_n",
    "eight": "'eI_t", "nine": "n_'aI_n", "backward": "b_'a_k_w_3_d", "forward": "f_'O@_w_3_d",
    "follow": "f_'0_l_oU", "learn": "l_'3:_n", "visual": "v_'I_Z_u:_@L", "hello": "h_@_l_'oU",
    "window": "w_'I_n_d_oU", "water": "w_'O:_t#_3", "yellow": "j_'E_l_oU",
    "number": "n_'V_m_b_3",
}  # fmt: skip
MERGE = {"O2": "0", "t2": "t", "t#": "t"}


def phones(mnemonics: str) -> list[str]:
    """espeak-ng's `-x --sep=_` output -> phones without stress marks, variants merged."""
    out = []
    for p in mnemonics.split("_"):
        p = p.strip().lstrip("',")
        if p:
            out.append(MERGE.get(p, p))
    return out


LEXICON = {w: phones(m) for w, m in ESPEAK_EN_US.items()}
INVENTORY = tuple(sorted({p for seq in LEXICON.values() for p in seq}))
#: CTC classes: 0 is the blank, phone k of INVENTORY is k + 1
N_CLASSES = len(INVENTORY) + 1


def ctc_targets(texts) -> np.ndarray:
    """[n, L] int64 phone ids (1..) right-padded with 0, for the words spoken in n clips ("" for
    a clip without speech: an empty target, all blank)."""
    index = {p: k + 1 for k, p in enumerate(INVENTORY)}
    unknown = sorted({str(t) for t in texts if t and t not in LEXICON})
    if unknown:  # e.g. a bank built with kws_bank's `vocabulary`: its words have no entry
        raise ValueError(f"no phones for {', '.join(unknown[:5])}: the lexicon covers the "
                         "keywords and kws.UNKNOWN_WORDS only")
    seqs = [[index[p] for p in LEXICON[t]] if t else [] for t in texts]
    out = np.zeros((len(seqs), max((len(s) for s in seqs), default=0) or 1), np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out
