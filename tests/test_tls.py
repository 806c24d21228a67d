"""TLS end to end: a self-signed certificate made in the test (openssl CLI), the server on
https/wss (and its gRPC listener on TLS with the same certificate), the Python client and CLI
verifying it with --ca-file and sending an API key."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import free_port

from server.auth import key_line, new_key

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl program (Debian package openssl)")
KEY = new_key()
GRPC: dict = {}  # the TLS server's gRPC port


@pytest.fixture(scope="module")
def tls_server(checkpoint_dir, tmp_path_factory):
    from server.runner import build_server
    from server.settings import Settings

    d = tmp_path_factory.mktemp("tls")
    cert, pkey = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(pkey), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    keys = d / "keys.txt"
    keys.write_text(key_line("tls-user", KEY) + "\n")
    settings = Settings(checkpoints=checkpoint_dir, models="tiny", host="127.0.0.1",
                        port=free_port(), log_level="warning", ssl_certfile=cert,
                        ssl_keyfile=pkey, api_keys_file=keys, grpc_port=free_port())
    GRPC["port"] = settings.grpc_port
    server = build_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{settings.port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", verify=ctx, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("TLS server did not become ready")
    yield url, cert
    server.should_exit = True
    thread.join(20)


def test_https_and_wss_with_ca_file_and_key(tls_server):
    from clients import S4DClient
    from clients.errors import S4DError

    url, cert = tls_server
    x = (np.random.default_rng(2).standard_normal(1200) * 0.2).astype(np.float32)
    with S4DClient(url, ca_file=cert, api_key=KEY) as c:
        (pred,) = c.predict("tiny", x)
        results = list(c.stream_array("tiny", x[:, None], sample_rate=16000, emit_every=0))
    final = results[-1]
    assert final["type"] == "final" and final["offset"] == len(x)
    assert max(abs(final["probabilities"][k] - pred.probabilities[k]) for k in pred.probabilities) < 1e-4
    # without the CA the certificate is not trusted; without the key the server refuses
    with pytest.raises(S4DError) as exc, S4DClient(url, api_key=KEY) as c:
        c.models()
    assert exc.value.code == "connection_error"
    with pytest.raises(S4DError) as exc, S4DClient(url, ca_file=cert, api_key="") as c:
        c.models()
    assert exc.value.code == "unauthorized" and exc.value.status == 401
    with pytest.raises(S4DError) as exc, S4DClient(url, ca_file=cert, api_key="") as c:
        list(c.stream_array("tiny", x[:, None], sample_rate=16000))
    assert exc.value.code == "unauthorized"
    # plain http on the TLS port gets nothing useful
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http") + "/healthz", timeout=5)


def test_cli_over_https(tls_server, tmp_path):
    url, cert = tls_server
    f = tmp_path / "x.npy"
    np.save(f, np.zeros(500, np.float32))
    base = [sys.executable, "s4d_cli.py", "predict", "--url", url, "--model", "tiny",
            "--ca-file", str(cert)]
    ok = subprocess.run([*base, "--api-key", KEY, str(f)], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_samples"] == 500
    env_ok = subprocess.run([*base, str(f)], capture_output=True, text=True, timeout=120,
                            env={**_env(), "S4D_API_KEY": KEY})
    assert env_ok.returncode == 0, env_ok.stdout + env_ok.stderr
    no_key = subprocess.run([*base, str(f)], capture_output=True, text=True, timeout=120,
                            env=_env())
    assert no_key.returncode == 1
    assert json.loads(no_key.stdout)["error"]["code"] == "unauthorized"


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "S4D_API_KEY"}


def test_grpc_uses_the_same_certificate(tls_server):
    """gRPC beside an https listener is TLS too (an API key in call metadata never travels in
    clear): a client trusting the CA gets answers, a plaintext client gets none."""
    grpc = pytest.importorskip("grpc")
    tg = pytest.importorskip("tritonclient.grpc")

    _, cert = tls_server
    target = f"127.0.0.1:{GRPC['port']}"
    meta = {"authorization": f"Bearer {KEY}"}
    with tg.InferenceServerClient(target, ssl=True, root_certificates=str(cert)) as c:
        assert c.is_server_live()
        x = (np.random.default_rng(5).standard_normal((1, 400, 1)) * 0.2).astype(np.float32)
        inp = tg.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        probs = c.infer("tiny", [inp], headers=meta).as_numpy("probabilities")
        assert probs.shape[0] == 1 and abs(float(probs.sum()) - 1.0) < 1e-4
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(ch).result(timeout=3)
