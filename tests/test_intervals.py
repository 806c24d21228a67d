"""The intervals the cards print (model/evaluation.py), against textbook values."""

from __future__ import annotations

import pytest

from model.evaluation import poisson_rate_interval, wilson_interval


def test_wilson_interval_known_values_and_edges():
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # narrower with more data, always around the measured share
    for k, n in ((47, 100), (470, 1000)):
        lo, hi = wilson_interval(k, n)
        assert lo < k / n < hi
    assert (wilson_interval(470, 1000)[1] - wilson_interval(470, 1000)[0]
            < wilson_interval(47, 100)[1] - wilson_interval(47, 100)[0])


def test_poisson_rate_interval_is_garwoods():
    pytest.importorskip("scipy")
    assert poisson_rate_interval(6, 1.0) == pytest.approx((2.2019, 13.0595), abs=1e-4)
    assert poisson_rate_interval(0, 1.0) == pytest.approx((0.0, 3.6889), abs=1e-4)
    lo, hi = poisson_rate_interval(6, 6.0)  # 6 false alarms in 6 h: 0.37-2.18 per hour
    assert (lo, hi) == pytest.approx((0.3670, 2.1766), abs=1e-4)
