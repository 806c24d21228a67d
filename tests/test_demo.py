"""The browser demo (server/static/) in a real headless Chromium against a real s4d server.

Needs Debian's `chromium` and the `playwright` Python package (its own browser download is
not used: Chromium is launched from /usr/bin/chromium or $CHROMIUM). The server is started
from this checkout (`python -m s4d_cli serve`) on a free loopback port with the checkpoints
in checkpoints/ (or $S4D_CHECKPOINTS); set S4D_DEMO_URL to test an already running server.
Screenshots go to test-artifacts/; with S4D_UPDATE_DOCS=1 one is also copied to docs/demo.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import pytest
from conftest import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "server" / "static"
SAMPLES = STATIC / "samples"
ARTIFACTS = ROOT / "test-artifacts"
CHECKPOINTS = Path(os.environ.get("S4D_CHECKPOINTS") or ROOT / "checkpoints")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
FAKE_MIC_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
MANIFEST = json.loads((SAMPLES / "index.json").read_text())["samples"]


# ---------- bundled files: no server or browser needed ----------

def test_static_files_present():
    for name in ("index.html", "app.js", "style.css", "pcm-worklet.js"):
        assert (STATIC / name).stat().st_size > 0, name
    html = (STATIC / "index.html").read_text()
    for ref in ("/static/app.js", "/static/style.css"):
        assert ref in html
    app = (STATIC / "app.js").read_text()
    assert "pcm-worklet.js" in app and "/v1/models" in app and "/stream" in app


@pytest.mark.parametrize("sample", MANIFEST, ids=[s["id"] for s in MANIFEST])
def test_bundled_sample_matches_manifest(sample):
    path = SAMPLES / sample["file"]
    limit = 250_000 if sample.get("seconds") else 100_000  # a stream sample: a few seconds
    assert path.stat().st_size < limit, "keep bundled samples small"
    assert sample["encoding"] in ("pcm_s16le", "f32le")
    if sample["format"] == "wav":
        import soundfile as sf

        info = sf.info(str(path))
        assert info.channels == sample["channels"] == 1
        assert info.subtype == sample["wav_subtype"]  # PCM_16 (audio) or FLOAT (ECG in mV)
        assert info.samplerate == sample["sample_rate"]
        n = info.frames
        if sample["id"].startswith("ecg"):
            assert n == 60 * 250  # 60 s of MIT-BIH 208 at 250 Hz
            x, _ = sf.read(str(path), dtype="float32")
            assert sample["units"] == "mV" and sample["scale"] == 1
            assert 1.0 < float(x.max() - x.min()) < 10.0  # millivolts, not PCM-scaled
        elif sample.get("seconds"):
            assert n == sample["seconds"] * sample["sample_rate"]
        else:
            assert n == sample["sample_rate"]  # one second of speech
    else:
        data = json.loads(path.read_text())
        assert data["channels"] == sample["channels"]
        assert data["frames"] and all(len(f) == data["channels"] for f in data["frames"])


# ---------- live server + headless Chromium ----------

def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _serve(checkpoints: Path, log_name: str):
    """A real server on a free loopback port for these checkpoints (CPU); yields its URL."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "s4d_cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--checkpoints", str(checkpoints), "--device", "cpu"],
        cwd=ROOT, env=dict(os.environ, S4D_DEVICE="cpu"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}; see {log.name}")
            try:
                if _get_json(url + "/readyz", timeout=2)["status"] == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within 240 s; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(proc)
        log.close()


@pytest.fixture(scope="module")
def server_url():
    if os.environ.get("S4D_DEMO_URL"):
        yield os.environ["S4D_DEMO_URL"].rstrip("/")
        return
    if not (ROOT / "server" / "app.py").exists():
        pytest.skip("server/app.py does not exist yet")
    if not any(CHECKPOINTS.glob("*/config.json")):
        pytest.skip(f"no {CHECKPOINTS}/<name>/config.json to serve")
    yield from _serve(CHECKPOINTS, "demo-server.log")


def _launch(p, extra_args=()):
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS + list(extra_args),
                             headless=True, timeout=60_000)


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not exe or not Path(exe).exists():
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def served_models(server_url):
    return {m["name"]: m for m in _get_json(server_url + "/v1/models")["models"]}


def _open_page(browser, server_url, errors):
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.goto(server_url + "/", timeout=30_000)
    page.wait_for_selector('body[data-state="idle"]', timeout=30_000)
    return page


def _batch_label(server_url: str, model: str, wav: Path) -> str:
    req = urllib.request.Request(f"{server_url}/v1/models/{model}/predict", data=wav.read_bytes(),
                                 headers={"Content-Type": "audio/wav"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["predictions"][0]["label"]


@pytest.mark.parametrize("sample", MANIFEST, ids=[s["id"] for s in MANIFEST])
def test_demo_streams_bundled_sample(playwright, server_url, served_models, sample):
    served = [m for m in sample["models"] if m in served_models]
    if not served:
        pytest.skip(f"the server does not serve {sample['models']}")
    model = served_models[served[0]]
    if not model["streamable"]:
        pytest.skip(f"{model['name']} is not streamable")
    errors: list[str] = []
    browser = _launch(playwright)
    try:
        page = _open_page(browser, server_url, errors)
        page.select_option("#model", model["name"])
        page.select_option("#sample", sample["id"])
        long = sample["format"] == "wav" and (sample["id"].startswith("ecg")
                                              or bool(sample.get("seconds")))
        if long:
            page.check("#fast")  # 60 s of ECG: no real-time pacing in the test
        page.click("#start")
        # a fast 60 s ECG may be streamed and done before "streaming" is ever polled
        page.wait_for_selector('body[data-state="streaming"], body[data-state="done"], '
                               'body[data-state="error"]', timeout=30_000)
        page.wait_for_selector('body[data-state="done"], body[data-state="error"]',
                               timeout=120_000)
        state = page.get_attribute("body", "data-state")
        status = page.text_content("#status")
        assert state == "done", f"demo ended in {state}: {status}; {errors}"
        final = page.text_content("#final-label").strip()
        assert final in model["classes"]
        assert int(page.text_content("#result-count")) >= 2
        shown = page.eval_on_selector_all(".bar.top .name", "els => els.map(e => e.textContent)")
        assert shown == [final]
        resets = sample.get("window_seconds") and model["pooling"] not in ("ema", "none")
        segments = page.eval_on_selector_all("#segments li", "els => els.length")
        if resets:
            assert segments == 60 // sample["window_seconds"]
        else:  # models that forget stream without forced resets
            assert segments == 0
        if sample["format"] == "wav" and not resets:
            # the browser streams the WAV's int16 samples unchanged: stream == batch
            assert final == _batch_label(server_url, model["name"], SAMPLES / sample["file"])
        assert not errors, errors
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"demo-{sample['id']}.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("S4D_UPDATE_DOCS") == "1" and sample["id"].startswith("ecg"):
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, ROOT / "docs" / "demo.png")
    finally:
        browser.close()


def test_demo_streams_fake_microphone(playwright, server_url, served_models):
    """Chromium's fake capture device (a beep at the context rate) through the AudioWorklet."""
    audio = [m for m in served_models.values()
             if m["input_channels"] == 1 and m["sample_rate"] >= 8000 and m["streamable"]]
    if not audio:
        pytest.skip("no streamable audio model is served")
    model = audio[0]
    errors: list[str] = []
    browser = _launch(playwright, FAKE_MIC_ARGS)
    try:
        page = _open_page(browser, server_url, errors)
        page.select_option("#model", model["name"])
        page.check('input[name="source"][value="mic"]')
        page.click("#start")
        # the fake device beeps about once a second: stream 2 s of audio
        page.wait_for_function(
            f"Number(document.getElementById('offset').textContent) >= {2 * model['sample_rate']}",
            timeout=30_000)
        assert float(page.get_attribute("#wave", "data-peak")) > 0.05, "the microphone was silent"
        page.click("#stop")
        page.wait_for_selector('body[data-state="done"], body[data-state="error"]',
                               timeout=30_000)
        assert page.get_attribute("body", "data-state") == "done", page.text_content("#status")
        assert page.text_content("#final-label").strip() in model["classes"]
        # 20 ms chunks resampled to the model's rate: the offset is a whole number of chunks
        offset = int(page.text_content("#offset"))
        assert offset > 0 and offset % round(model["sample_rate"] * 0.02) == 0
        assert not errors, errors
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-microphone.png"), full_page=True)
    finally:
        browser.close()


RESAMPLE_JS = """
async ([freq, inRate, outRate]) => {
  const ctx = new OfflineAudioContext(1, inRate, inRate);  // one second
  await ctx.audioWorklet.addModule('/static/pcm-worklet.js');
  const osc = new OscillatorNode(ctx, {frequency: freq});
  const node = new AudioWorkletNode(ctx, 'pcm-resampler', {numberOfInputs: 1,
    numberOfOutputs: 0, processorOptions: {targetRate: outRate, chunkSamples: 160}});
  const out = [];
  node.port.onmessage = (e) => out.push(...new Int16Array(e.data));
  osc.connect(node);
  osc.start();
  await ctx.startRendering();
  await new Promise((r) => setTimeout(r, 300));  // drain the port
  return out;
}
"""


@pytest.fixture(scope="module")
def static_url():
    """server/ over plain HTTP, so /static/pcm-worklet.js loads without the s4d server."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(ROOT / "server"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("in_rate", [48000, 44100])
def test_worklet_resampler(playwright, static_url, in_rate):
    """The microphone resampler keeps a tone's frequency and level and removes what would
    alias above the model's Nyquist frequency."""
    np = pytest.importorskip("numpy")
    out_rate = 16000
    browser = _launch(playwright)
    try:
        page = browser.new_page()
        page.goto(static_url + "/static/samples/index.json")

        def render(freq: float):
            x = np.array(page.evaluate(RESAMPLE_JS, [freq, in_rate, out_rate]), dtype=float)
            return x / 32768

        tone = render(1000.0)
        # one second in, one second out, less the filter's look-ahead and a partial chunk
        assert out_rate - 600 <= len(tone) <= out_rate
        steady = tone[600:]
        spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
        peak_hz = np.argmax(spectrum) * out_rate / len(steady)
        assert abs(peak_hz - 1000) < 5
        rms = np.sqrt(np.mean(steady**2))
        assert abs(rms - 1 / np.sqrt(2)) < 0.02  # the oscillator's amplitude is 1
        high = render(6000.0)[600:]  # well below 8 kHz: passes (within 1 dB)
        assert np.sqrt(np.mean(high**2)) > 0.63
        alias = render(12000.0)[600:]  # above 8 kHz: would alias to 4 kHz without the filter
        assert np.sqrt(np.mean(alias**2)) < 0.02
    finally:
        browser.close()


# ---------- event timeline (issue 15) ----------

@pytest.fixture(scope="module")
def events_server_url(server_url, served_models, tmp_path_factory):
    """A server with kws-events-s4d: the shipped one, or (before it is trained) a test-only
    stand-in with its shape: kws-s4d's weights with pooling 'ema' (tau 0.1 s), not shipped."""
    if "kws-events-s4d" in served_models:
        yield server_url
        return
    if "kws-s4d" not in served_models or os.environ.get("S4D_DEMO_URL"):
        pytest.skip("needs checkpoints/kws-s4d to build a stand-in kws-events-s4d")
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.config import CheckpointConfig
    from model.network import S4DNetwork

    net0, cfg0 = load_checkpoint(CHECKPOINTS / "kws-s4d")
    model = cfg0.model.model_copy(update={"pooling": "ema", "ema_tau_s": 0.1,
                                          "sample_rate": cfg0.task.sample_rate})
    cfg = CheckpointConfig.model_validate(cfg0.model_copy(update={"model": model}).model_dump())
    net = S4DNetwork(cfg.model, seed=None)
    net.load_state_dict(net0.state_dict())
    root = tmp_path_factory.mktemp("events-checkpoints")
    save_checkpoint(root / "kws-events-s4d", net, cfg)
    yield from _serve(root, "demo-events-server.log")


def test_demo_event_timeline_equals_batch_events(playwright, events_server_url):
    """The stream sample on kws-events-s4d: no resets, the timeline lists the events the
    server sends, and they are the events POST /predict reports for the same WAV."""
    sample = next(s for s in MANIFEST if s["id"] == "kws-stream")
    wav = SAMPLES / sample["file"]
    req = urllib.request.Request(
        f"{events_server_url}/v1/models/kws-events-s4d/predict?", method="POST",
        data=json.dumps({"inputs": [list(_wav_values(wav))], "events": True}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        batch = json.loads(r.read())["predictions"][0]["events"]
    assert batch, "the stream sample raises events"
    errors: list[str] = []
    browser = _launch(playwright)
    try:
        page = _open_page(browser, events_server_url, errors)
        assert page.input_value("#model") == "kws-events-s4d"  # the default model
        page.select_option("#sample", "kws-stream")
        assert page.is_hidden("#window-option")  # no forced resets for a model that forgets
        page.check("#fast")
        page.click("#start")
        page.wait_for_selector('body[data-state="done"], body[data-state="error"]',
                               timeout=120_000)
        assert page.get_attribute("body", "data-state") == "done", page.text_content("#status")
        shown = page.eval_on_selector_all(
            "#events li", "els => els.map(e => [e.dataset.label, Number(e.dataset.offset)])")
        assert shown == [[e["label"], e["offset"]] for e in batch]
        assert page.get_attribute("#timeline", "data-events") == str(len(batch))
        assert "threshold" in page.text_content("#events-info")
        assert page.eval_on_selector_all("#segments li", "els => els.length") == 0
        assert not errors, errors
        page.screenshot(path=str(ARTIFACTS / "demo-events.png"), full_page=True)
    finally:
        browser.close()


def _wav_values(path: Path):
    import array

    with wave.open(str(path)) as w:
        pcm = array.array("h", w.readframes(w.getnframes()))
    return (v / 32768 for v in pcm)
