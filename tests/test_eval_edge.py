"""scripts/eval_data13.py's check at the 100 bpm edge: which windows it counts and how it scores."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.ecg import CLASSES, SAMPLE_RATE, generate_template


def test_edge_check_counts_normal_and_tachy_windows_at_95_105_bpm():
    pytest.importorskip("neurokit2")  # the R-peak reference
    from model.data.rpeaks import window_heart_rates
    from scripts.eval_data13 import edge_check, edge_line

    x, y = generate_template("test", 60, seed=0, workers=1)
    always_tachy = np.full(len(y), CLASSES.index("tachy"))  # a fixed answer: expected scores
    e = edge_check(always_tachy, x, y, list(CLASSES))       # follow from the data alone
    keep = [i for i in range(len(y)) if CLASSES[y[i]] in ("normal", "tachy")]
    rates = {i: window_heart_rates(x[i].astype(np.float64), SAMPLE_RATE)[0] for i in keep}
    near = [i for i in keep if 95 <= rates[i] <= 105]
    assert e["n_normal_or_tachy"] == len(keep) and e["n_95_105_bpm"] == len(near) > 0
    assert e["agreement_with_label"] == round(
        float(np.mean([CLASSES[y[i]] == "tachy" for i in near])), 4)
    assert e["agreement_with_reference"] == round(float(np.mean([rates[i] > 100 for i in near])), 4)
    line = edge_line({"template_edge": e})
    assert f"{e['n_95_105_bpm']} lie at 95-105 bpm" in line
    assert edge_line({}) == ""  # evaluations written before the check existed
