"""Long batch sequences run as chunks through the exact recurrence (one device job per chunk,
so stream steps interleave): the answer equals the one-shot FFT forward."""

from __future__ import annotations

import httpx
import numpy as np
import pytest


@pytest.mark.parametrize("model,channels", [("tiny", 1), ("tiny2", 2), ("tinynone", 1),
                                            ("tinybi", 1)])
def test_chunked_predict_equals_fft_forward(start_server, live_server, checkpoint_dir, model,
                                            channels):
    chunked = start_server(checkpoints=checkpoint_dir, predict_chunk_samples=1000)
    rng = np.random.default_rng(7)
    seqs = [rng.standard_normal((n, channels)).astype(np.float32) * 0.4 for n in (4321, 999, 2001)]
    body = {"inputs": [s[:, 0].tolist() if channels == 1 else s.tolist() for s in seqs],
            "per_step": model == "tinynone"}
    a = httpx.post(f"{chunked.base_url}/v1/models/{model}/predict", json=body, timeout=60)
    b = httpx.post(f"{live_server.base_url}/v1/models/{model}/predict", json=body, timeout=60)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    for pa, pb in zip(a.json()["predictions"], b.json()["predictions"], strict=True):
        assert pa["label"] == pb["label"]
        for k in pa["probabilities"]:
            assert abs(pa["probabilities"][k] - pb["probabilities"][k]) <= 1e-5
        if "per_step" in pb:
            np.testing.assert_allclose(pa["per_step"], pb["per_step"], atol=1e-5)
