"""The keyword task's phone lexicon (targets of the auxiliary CTC loss)."""

import shutil
import subprocess

import numpy as np
import pytest

from model.data.kws import KEYWORDS, UNKNOWN_WORDS
from model.data.phones import ESPEAK_EN_US, INVENTORY, LEXICON, N_CLASSES, ctc_targets, phones


def test_lexicon_covers_every_word_the_clips_say():
    assert set(LEXICON) == set(KEYWORDS) | set(UNKNOWN_WORDS)
    assert LEXICON["stop"] == ["s", "t", "0", "p"] and LEXICON["on"] == ["0", "n"]
    assert N_CLASSES == len(INVENTORY) + 1 and all(LEXICON[w] for w in LEXICON)
    # the keywords stay distinct as phone sequences
    assert len({tuple(LEXICON[w]) for w in KEYWORDS}) == len(KEYWORDS)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng program")
def test_lexicon_is_what_espeak_ng_says():
    for word, stored in ESPEAK_EN_US.items():
        out = subprocess.run(["espeak-ng", "-q", "-x", "--sep=_", "-v", "en-us", word],
                             capture_output=True, text=True, check=True).stdout
        assert phones(out.strip()) == phones(stored), word


def test_ctc_targets_pad_with_blank_and_keep_order():
    t = ctc_targets(["up", "", "marvin"])
    assert t.dtype == np.int64 and t.shape == (3, 5)
    assert [INVENTORY[k - 1] for k in t[0] if k] == ["V", "p"] and not t[1].any()
    assert [INVENTORY[k - 1] for k in t[2]] == ["m", "A@", "v", "I", "n"]
    assert ctc_targets([]).shape == (0, 1)


def test_ctc_targets_refuse_words_without_phones():
    with pytest.raises(ValueError, match="no phones for apple"):
        ctc_targets(["yes", "apple"])
