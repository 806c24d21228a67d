"""The container image and the compose stack, built and run for real with podman.

Part of `make test` wherever podman runs (the Makefile sets it up as root from
../shared/tools/podman-here.sh); skips with the reason where podman is absent, where it cannot
run a plain Debian container or bootstrap a stand-in base (the machine, not the image), or when
`S4D_TEST_IMAGE=0` opts out. A cold run (two stand-in bases and the image built from nothing)
took 165 s here; later runs reuse them.

- The image: built from the repository's Dockerfile; run with a read-only root file system
  (as deploy/k8s/ runs it) on the host network and a free port; checked as uid 10001 with
  /readyz, a REST predict and a WebSocket stream whose final equals the batch prediction.
- The compose stack without Grafana (`podman-compose`, 3 server replicas, Redis, HAProxy,
  Prometheus) on its own bridge network: /readyz through the balancer, requests spread over
  every replica, and Prometheus sees every replica as an `up` target.

Base images come from ../shared/tools/podman-here.sh (Debian-package stand-ins of
python:3.11-slim, redis:7, prom/prometheus, haproxy) when no registry is reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import assert_probs_close, free_port
from test_deploy import healthcheck_command

ROOT = Path(__file__).resolve().parents[1]
PODMAN_HERE = ROOT.parent / "shared" / "tools" / "podman-here.sh"
IMAGE = "localhost/s4d-serve:cpu"
MODEL = "kws-s4d"
#: stand-in base images: image -> Debian packages (podman-here.sh base IMAGE PKG...)
BASES = {
    "docker.io/library/python:3.11-slim": ["python3", "python3-venv", "python-is-python3",
                                           "ca-certificates"],
    "docker.io/library/redis:7": ["redis-server"],
    "docker.io/prom/prometheus:v2.55.1": ["prometheus"],
    "docker.io/library/haproxy:2.8": ["haproxy"],
}
#: podman's CNI network for the stack; its gateway runs the network's DNS (dnsname plugin)
SUBNET, GATEWAY = "10.89.77.0/24", "10.89.77.1"
IMAGE_BUDGET_BYTES = 1_100_000_000  # 966 MB measured on the stand-in base (225 MB)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is absent (make podman-setup, or apt-get install podman)"),
    pytest.mark.skipif(os.environ.get("S4D_TEST_IMAGE") == "0",
                       reason="opted out with S4D_TEST_IMAGE=0"),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return r


#: the stack's service stand-ins share one Debian image (one bootstrap instead of three: the
#: compose file names each service's entrypoint and command, so the extra packages are inert)
SERVICE_BASES = ("docker.io/library/redis:7", "docker.io/prom/prometheus:v2.55.1",
                 "docker.io/library/haproxy:2.8")


def ensure_base(*images: str) -> None:
    """Make the missing stand-in bases; missing service images are built once and tagged."""
    missing = [i for i in images if podman("image", "exists", i, check=False).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or not PODMAN_HERE.exists():
        pytest.skip(f"base images {missing} are missing and {PODMAN_HERE} cannot make them here")
    services = [i for i in missing if i in SERVICE_BASES]
    groups = [[i] for i in missing if i not in SERVICE_BASES] + ([services] if services else [])
    for group in groups:
        first = group[0].split("/", 1)[1]
        packages = sorted({p for i in group for p in BASES[i]})
        r = subprocess.run(["bash", str(PODMAN_HERE), "base", first, *packages],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:  # a Debian bootstrap of plain packages: the machine, not the code
            pytest.skip(f"cannot bootstrap the stand-in base {group[0]} here: "
                        f"{(r.stdout + r.stderr)[-600:]}")
        for other in group[1:]:
            name = other.split("/", 1)[1]
            podman("tag", f"localhost/{first}", f"localhost/{name}", f"docker.io/{name}")


def require_runnable_containers(base: str) -> None:
    """Skip where podman is installed but cannot run any container (a sandbox without the
    namespaces it needs): that says nothing about the image."""
    r = podman("run", "--rm", "--network", "host", base, "true", check=False, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"podman cannot run a plain Debian container here: {r.stderr[-600:]}")


@pytest.fixture(scope="module")
def image() -> str:
    ensure_base("docker.io/library/python:3.11-slim")
    require_runnable_containers("docker.io/library/python:3.11-slim")
    args = ["build", "-t", IMAGE, "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    wheels = Path("/opt/wheels")
    if any(wheels.glob("torch-*.whl")):
        # a local CPU wheel of torch (machines whose pip reaches only PyPI)
        args += ["-v", f"{wheels}:{wheels}:ro", "--env", f"PIP_FIND_LINKS={wheels}",
                 "--build-arg", "TORCH_INDEX=https://pypi.org/simple"]
    started = time.monotonic()
    podman(*args, str(ROOT), timeout=1800)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    assert size < IMAGE_BUDGET_BYTES, f"image grew to {size / 1e6:.0f} MB"
    return IMAGE


def wait_http(url: str, timeout: float, what: str, logs=None) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=3)
            if r.status_code == 200:
                return r
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"{what}: {url} not 200 within {timeout} s (last {last!r})\n"
                f"{logs() if logs else ''}")


def stream_and_compare(base: str, seconds: float = 1.5, seed: int = 0) -> None:
    """A WebSocket stream of noise; its final equals the batch prediction of the same samples."""
    from websockets.sync.client import connect

    meta = httpx.get(f"{base}/v1/models/{MODEL}", timeout=10).json()
    x = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * meta["sample_rate"])))
    x = x.astype(np.float32)
    ws_url = base.replace("http://", "ws://") + f"/v1/models/{MODEL}/stream"
    with connect(ws_url, open_timeout=20, close_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": meta["sample_rate"],
                            "encoding": "f32le", "channels": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        data = x.astype("<f4").tobytes()
        for i in range(0, len(data), 4 * 1000):
            ws.send(data[i:i + 4000])
        ws.send(json.dumps({"type": "end"}))
        while True:
            msg = json.loads(ws.recv(timeout=120))
            if msg["type"] in ("final", "error"):
                break
    assert msg["type"] == "final", msg
    assert msg["offset"] == len(x)
    r = httpx.post(f"{base}/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert_probs_close(msg["probabilities"], r.json()["predictions"][0]["probabilities"], 1e-5)


def test_image_serves_as_non_root(image):
    port = free_port()
    name = f"s4d-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--rm", "--name", name, "--network", "host", "--read-only",
           "--tmpfs", "/tmp", "--tmpfs", "/home/s4d/.cache", "-e", f"S4D_PORT={port}",
           "-e", f"S4D_MODELS={MODEL}", image)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", 240, "image /readyz",
                  lambda: podman("logs", name, check=False).stderr[-3000:])
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        # the Dockerfile's HEALTHCHECK command, run inside the container (podman's OCI image
        # format does not keep HEALTHCHECK itself)
        podman("exec", name, *healthcheck_command())
        stream_and_compare(base)
    finally:
        podman("rm", "-f", "-t", "5", name, check=False, timeout=60)


def _compose(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(exe).exists():
        pytest.skip("podman-compose is absent (pip install podman-compose: the dev extra)")
    return subprocess.run([exe, "-p", env["PROJECT"], "--in-pod", "false", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def test_compose_stack_scaled_behind_haproxy(image):
    ensure_base(*BASES)
    project = f"s4dt{uuid.uuid4().hex[:6]}"
    network = f"{project}_default"
    ports = {k: free_port() for k in ("S4D_PUBLISH_PORT", "HAPROXY_STATS_PORT",
                                      "PROMETHEUS_PORT")}
    env = {"PROJECT": project, "S4D_LB_DNS": f"{GATEWAY}:53", "S4D_LB_SLOTS": "8",
           **{k: str(v) for k, v in ports.items()}}
    # the network first, with a known gateway: HAProxy's DNS server on podman's CNI network
    podman("network", "create", "--subnet", SUBNET, "--gateway", GATEWAY, network)
    try:
        up = _compose("up", "-d", "--no-build", "--scale", "server=3", "server", "redis", "lb",
                      "prometheus", env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]

        def logs() -> str:
            return _compose("logs", "--tail", "30", env=env, timeout=60).stdout[-6000:]

        lb = f"http://127.0.0.1:{ports['S4D_PUBLISH_PORT']}"
        wait_http(lb + "/readyz", 300, "/readyz through HAProxy", logs)
        names = {c["Names"][0] for c in json.loads(podman(
            "ps", "--filter", f"label=io.podman.compose.project={project}",
            "--format", "json").stdout)}
        replicas = sorted(n for n in names if "_server_" in n)
        assert len(replicas) == 3 and any("_redis_" in n for n in names), names
        # every replica ready behind the balancer: least connections reaches all three
        stats = f"http://127.0.0.1:{ports['HAPROXY_STATS_PORT']}"

        def up_count() -> int:
            rows = httpx.get(stats + "/stats;csv", timeout=5).text.splitlines()
            return sum(1 for r in rows if r.startswith("s4d_least_conn,s4d-") and ",UP" in r)

        deadline = time.monotonic() + 300
        while up_count() < 3 and time.monotonic() < deadline:
            time.sleep(2)
        assert up_count() == 3, logs()
        seen = {httpx.get(lb + "/readyz", timeout=10).headers["x-s4d-replica"]
                for _ in range(12)}
        assert len(seen) == 3, seen
        stream_and_compare(lb, seconds=1.0, seed=1)
        # Prometheus finds every replica in DNS and scrapes it
        prom = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}"
        wait_http(prom + "/-/ready", 120, "Prometheus ready", logs)

        def s4d_targets() -> list[dict]:
            data = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]
            return [t for t in data["activeTargets"] if t["labels"]["job"] == "s4d"]

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            targets = s4d_targets()
            if len(targets) == 3 and all(t["health"] == "up" for t in targets):
                break
            time.sleep(2)
        assert len(targets) == 3 and all(t["health"] == "up" for t in targets), targets
        haproxy = [t for t in httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]
                   ["activeTargets"] if t["labels"]["job"] == "haproxy"]
        assert haproxy and haproxy[0]["health"] in ("up", "unknown"), haproxy
    finally:
        _compose("down", "-t", "5", "-v", env=env, timeout=300)
        # podman-compose's down can leave a replica behind (seen here): remove whatever is left
        # of the project, or the next run finds its subnet taken
        left = podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={project}",
                      check=False).stdout.split()
        if left:
            podman("rm", "-f", "-t", "2", *left, check=False, timeout=120)
        podman("network", "rm", "-f", network, check=False)
        assert podman("network", "exists", network, check=False).returncode != 0, network
