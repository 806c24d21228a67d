// s4d-serve browser demo: stream a bundled sample or the microphone to
// WS /v1/models/{name}/stream (server/PROTOCOL.md) and show the results live.

const STATIC = new URL("./", import.meta.url);
const $ = (id) => document.getElementById(id);

const ui = {
  model: $("model"), modelInfo: $("model-info"), sample: $("sample"),
  micOption: $("mic-option"), fast: $("fast"), windowOption: $("window-option"),
  window: $("window"), start: $("start"), stop: $("stop"), status: $("status"),
  serverStatus: $("server-status"), wave: $("wave"), signalInfo: $("signal-info"),
  current: $("current-label"), final: $("final-label"), count: $("result-count"),
  offset: $("offset"), latency: $("latency"), bars: $("bars"),
  segmentsBox: $("segments-box"), segments: $("segments"), segmentSeconds: $("segment-seconds"),
  timeline: $("timeline"), events: $("events"), eventsInfo: $("events-info"),
};

let models = [];
let samples = [];
let run = null; // the active stream, see startStream()

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) ui.status.textContent = message;
  const busy = state === "streaming" || state === "connecting";
  ui.start.disabled = busy || !currentModel();
  ui.stop.disabled = !busy;
  ui.model.disabled = busy || models.length === 0;
}

function currentModel() {
  return models.find((m) => m.name === ui.model.value) || null;
}

function sourceKind() {
  return document.querySelector('input[name="source"]:checked').value;
}

// ---------- loading models and samples ----------

async function fetchJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : r.statusText;
    throw new Error(`${url}: ${r.status} ${msg}`);
  }
  return body;
}

function samplesFor(model) {
  return samples.filter((s) =>
    s.models.includes(model.name) ||
    (s.channels === model.input_channels && s.sample_rate === model.sample_rate));
}

// Models whose outputs forget (pooling ema, per-step heads) follow a live stream without
// resets; a running mean from the start needs them to show one label per window.
function forgets(model) {
  return model.pooling === "ema" || model.pooling === "none";
}

function isAudio(model) {
  return model.input_channels === 1 && model.sample_rate >= 8000;
}

function onModelChange() {
  const m = currentModel();
  if (!m) return;
  const classes = m.classes.length > 8 ? `${m.classes.length} classes` : m.classes.join(", ");
  ui.modelInfo.textContent =
    `${m.task || ""} · ${m.sample_rate} Hz · ${m.input_channels} ch · frame ${m.frame_size}` +
    ` · ${classes}` + (m.streamable ? "" : " · NOT streamable");
  const list = samplesFor(m);
  ui.sample.replaceChildren(...list.map((s) => new Option(s.title, s.id)));
  const sampleRadio = document.querySelector('input[name="source"][value="sample"]');
  const micRadio = document.querySelector('input[name="source"][value="mic"]');
  sampleRadio.disabled = list.length === 0;
  micRadio.disabled = !isAudio(m);
  ui.micOption.classList.toggle("disabled", !isAudio(m));
  if (micRadio.disabled) sampleRadio.checked = true;
  if (sampleRadio.disabled && !micRadio.disabled) micRadio.checked = true;
  onSampleChange();
  buildBars(m.classes);
  resetResults();
  setState("idle", m.streamable ? "ready" : "this model cannot stream (bidirectional)");
}

function onSampleChange() {
  const s = samples.find((x) => x.id === ui.sample.value);
  const m = currentModel();
  const win = s && sourceKind() === "sample" && m && !forgets(m) ? s.window_seconds : null;
  ui.windowOption.hidden = !win;
  if (win) ui.window.value = win;
}

async function init() {
  setState("loading", "loading models…");
  try {
    const [m, s] = await Promise.all([
      fetchJSON("/v1/models"),
      fetchJSON(new URL("samples/index.json", STATIC)),
    ]);
    models = m.models;
    samples = s.samples;
  } catch (err) {
    ui.serverStatus.textContent = "server unreachable";
    setState("error", String(err.message || err));
    return;
  }
  ui.serverStatus.textContent = `${models.length} model(s) loaded`;
  ui.model.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && models.some((m) => m.name === wanted)) ui.model.value = wanted;
  else if (models.some((m) => m.name === "kws-events-s4d")) ui.model.value = "kws-events-s4d";
  ui.model.addEventListener("change", onModelChange);
  ui.sample.addEventListener("change", onSampleChange);
  for (const r of document.querySelectorAll('input[name="source"]')) {
    r.addEventListener("change", onSampleChange);
  }
  ui.start.addEventListener("click", () => startStream().catch(fail));
  ui.stop.addEventListener("click", () => stopStream());
  onModelChange();
}

// ---------- sample decoding ----------

function parseWav(buf) {
  // 16-bit PCM (format 1) or 32-bit IEEE float (format 3, e.g. an ECG stored in millivolts)
  const v = new DataView(buf);
  const tag = (o) => String.fromCharCode(v.getUint8(o), v.getUint8(o + 1), v.getUint8(o + 2), v.getUint8(o + 3));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let fmt = null;
  for (let o = 12; o + 8 <= buf.byteLength;) {
    const id = tag(o);
    const size = v.getUint32(o + 4, true);
    if (id === "fmt ") {
      fmt = { format: v.getUint16(o + 8, true), channels: v.getUint16(o + 10, true),
              rate: v.getUint32(o + 12, true), bits: v.getUint16(o + 22, true) };
    } else if (id === "data") {
      const avail = Math.min(size, buf.byteLength - o - 8);
      if (fmt && fmt.format === 3 && fmt.bits === 32) {
        const n = Math.floor(avail / 4);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = v.getFloat32(o + 8 + 4 * i, true);
        return { rate: fmt.rate, channels: fmt.channels, int16: null, float32: out };
      }
      if (!fmt || fmt.bits !== 16) throw new Error("only 16-bit PCM or 32-bit float WAV is supported");
      const n = Math.floor(avail / 2);
      const out = new Int16Array(n);
      for (let i = 0; i < n; i++) out[i] = v.getInt16(o + 8 + 2 * i, true);
      return { rate: fmt.rate, channels: fmt.channels, int16: out, float32: null };
    }
    o += 8 + size + (size & 1);
  }
  throw new Error("WAV without data chunk");
}

// Returns interleaved Float32 values in the model's units, plus the original int16 if any.
async function loadSample(sample) {
  const r = await fetch(new URL(`samples/${sample.file}`, STATIC));
  if (!r.ok) throw new Error(`sample ${sample.file}: ${r.status}`);
  if (sample.format === "wav") {
    const wav = parseWav(await r.arrayBuffer());
    const src = wav.int16 || wav.float32;
    const f = new Float32Array(src.length);
    for (let i = 0; i < f.length; i++) f[i] = src[i] * sample.scale;
    return { rate: wav.rate, channels: wav.channels, values: f, int16: wav.int16 };
  }
  const j = await r.json();
  const flat = new Float32Array(j.frames.length * j.channels);
  j.frames.forEach((row, t) => row.forEach((x, c) => { flat[t * j.channels + c] = x * sample.scale; }));
  return { rate: sample.sample_rate, channels: j.channels, values: flat, int16: null };
}

// Linear-interpolating resampler for mono files whose rate differs from the model's.
function resampleLinear(x, from, to) {
  const n = Math.floor((x.length * to) / from);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t = (i * from) / to;
    const k = Math.floor(t);
    const a = x[k];
    const b = k + 1 < x.length ? x[k + 1] : a;
    y[i] = a + (b - a) * (t - k);
  }
  return y;
}

function encode(values, encoding) {
  if (encoding === "pcm_s16le") {
    const buf = new ArrayBuffer(values.length * 2);
    const v = new DataView(buf);
    for (let i = 0; i < values.length; i++) {
      v.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(values[i] * 32768))), true);
    }
    return buf;
  }
  const buf = new ArrayBuffer(values.length * 4);
  const v = new DataView(buf);
  for (let i = 0; i < values.length; i++) v.setFloat32(4 * i, values[i], true);
  return buf;
}

// ---------- streaming ----------

function wsURL(model) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/v1/models/${encodeURIComponent(model)}/stream`;
}

function openSocket(model, start) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsURL(model.name));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify(start));
    ws.onerror = () => reject(new Error("WebSocket connection failed"));
    ws.onclose = (ev) => reject(new Error(`socket closed (${ev.code}) before start: ${ev.reason}`));
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "started") resolve({ ws, started: msg });
      else if (msg.type === "error") reject(new Error(`${msg.code}: ${msg.message}`));
    };
  });
}

function attachHandlers(r) {
  r.ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") return;
    const msg = JSON.parse(ev.data);
    if (msg.type === "result" || msg.type === "final") showResult(r, msg);
    else if (msg.type === "event") showEvent(r, msg);
    else if (msg.type === "error") {
      r.error = `${msg.code}: ${msg.message}`;
      setState("error", `server error ${r.error}`);
    }
  };
  r.ws.onerror = () => { if (!r.error) r.error = "WebSocket error"; };
  r.ws.onclose = (ev) => {
    r.closed = true;
    r.stopSending();
    if (r.gotFinal) setState("done", `done: ${r.results} result(s), ${r.lastOffset} samples`);
    else setState("error", r.error ? `server error ${r.error}` : `connection closed (${ev.code}) without a final result`);
    run = null;
  };
}

async function startStream() {
  const model = currentModel();
  if (!model || run) return;
  resetResults();
  setState("connecting", "connecting…");
  const kind = sourceKind();
  const channels = model.input_channels;
  const rate = model.sample_rate;
  let source;
  if (kind === "sample") {
    const sample = samples.find((s) => s.id === ui.sample.value);
    if (!sample) throw new Error("no sample for this model");
    const data = await loadSample(sample);
    if (data.channels !== channels) throw new Error(`sample has ${data.channels} channels, model needs ${channels}`);
    let values = data.values;
    let encoding = sample.encoding;
    if (data.rate && data.rate !== rate) {
      if (channels !== 1) throw new Error(`sample rate ${data.rate} Hz differs from the model's ${rate} Hz`);
      values = resampleLinear(values, data.rate, rate);
    }
    source = { kind, sample, values, encoding };
  } else {
    source = { kind, encoding: "pcm_s16le" };
  }

  const start = { type: "start", sample_rate: rate, encoding: source.encoding, channels, emit_every: model.frame_size };
  const { ws, started } = await openSocket(model, start);
  const r = {
    ws, model, source, started, results: 0, lastOffset: 0, gotFinal: false, closed: false,
    error: null, sent: 0, stopSending: () => {}, events: [],
    total: source.values ? source.values.length / channels : 0,
    display: new Display(ui.wave, rate, channels, source.sample ? source.sample.units : ""),
  };
  run = r;
  attachHandlers(r);
  setState("streaming", `streaming ${kind === "mic" ? "microphone" : source.sample.title} → ${model.name}`);
  ui.signalInfo.textContent = `${rate} Hz · ${channels} ch · ${source.encoding}`;
  r.display.start();
  showDetector(r);
  drawTimeline(r);
  if (kind === "sample") streamValues(r);
  else await streamMic(r);
}

function stopStream() {
  if (!run) return;
  const r = run;
  r.stopSending();
  if (r.ws.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify({ type: "end" }));
}

// Sends a file in 20 ms chunks (whole multi-channel samples), paced in real time
// unless "fast" is ticked; sends a reset at every window boundary, then `end`.
function streamValues(r) {
  const { values } = r.source;
  const ch = r.model.input_channels;
  const rate = r.model.sample_rate;
  const total = values.length / ch;
  const chunk = Math.max(1, Math.round(rate * 0.02));
  const winSec = ui.windowOption.hidden ? 0 : Number(ui.window.value) || 0;
  const window = winSec > 0 ? Math.round(winSec * rate) : 0;
  if (window) {
    ui.segmentsBox.hidden = false;
    ui.segmentSeconds.textContent = String(winSec);
  }
  const fast = ui.fast.checked;
  const t0 = performance.now();
  let pos = 0;
  let timer = null;
  let stopped = false;
  r.stopSending = () => { stopped = true; clearTimeout(timer); };

  const pump = () => {
    if (stopped || r.closed) return;
    const due = fast ? total : Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate));
    while (pos < due && r.ws.bufferedAmount < (1 << 20)) {
      let end = Math.min(due, pos + chunk);
      if (window) end = Math.min(end, (Math.floor(pos / window) + 1) * window);
      const part = values.subarray(pos * ch, end * ch);
      r.ws.send(encode(part, r.source.encoding));
      r.display.push(part);
      pos = end;
      if (window && pos % window === 0 && pos < total) r.ws.send(JSON.stringify({ type: "reset" }));
    }
    r.sent = pos;
    if (pos >= total) {
      r.ws.send(JSON.stringify({ type: "end" }));
      stopped = true;
      return;
    }
    timer = setTimeout(pump, fast ? 5 : 20);
  };
  pump();
}

async function streamMic(r) {
  const rate = r.model.sample_rate;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    r.ws.close(1000);
    throw new Error(`microphone unavailable: ${err.message || err}`);
  }
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule(new URL("pcm-worklet.js", STATIC));
  const src = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-resampler", {
    numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
    processorOptions: { targetRate: rate, chunkSamples: Math.round(rate * 0.02) },
  });
  node.port.onmessage = (ev) => {
    if (r.closed || r.ws.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(ev.data);
    r.ws.send(pcm.buffer);
    const f = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
    r.display.push(f);
    r.sent += pcm.length;
  };
  src.connect(node);
  ui.signalInfo.textContent = `microphone ${ctx.sampleRate} Hz → ${rate} Hz · pcm_s16le`;
  let stopped = false;
  r.stopSending = () => {
    if (stopped) return;
    stopped = true;
    src.disconnect();
    node.port.onmessage = null;
    stream.getTracks().forEach((t) => t.stop());
    ctx.close();
  };
}

function fail(err) {
  if (run && run.ws.readyState === WebSocket.OPEN) run.ws.close(1000);
  run = null;
  setState("error", String(err.message || err));
}

// ---------- results ----------

function buildBars(classes) {
  ui.bars.replaceChildren(...classes.map((c) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.cls = c;
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct">0%</span>';
    row.querySelector(".name").textContent = c;
    return row;
  }));
}

function resetResults() {
  ui.current.textContent = "–";
  ui.final.textContent = "–";
  ui.count.textContent = "0";
  ui.offset.textContent = "0";
  ui.latency.textContent = "–";
  ui.segments.replaceChildren();
  ui.segmentsBox.hidden = true;
  ui.events.replaceChildren();
  ui.eventsInfo.textContent = "";
  drawTimeline(null);
  for (const row of ui.bars.children) setBar(row, 0, false);
}

function setBar(row, p, top) {
  row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
  row.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  row.classList.toggle("top", top);
}

function showResult(r, msg) {
  r.results += 1;
  r.lastOffset = msg.offset;
  ui.count.textContent = String(r.results);
  ui.offset.textContent = String(msg.offset);
  if (typeof msg.latency_ms === "number") ui.latency.textContent = `${msg.latency_ms.toFixed(1)} ms`;
  ui.current.textContent = msg.label;
  for (const row of ui.bars.children) {
    setBar(row, msg.probabilities[row.dataset.cls] || 0, row.dataset.cls === msg.label);
  }
  if (msg.segment_end || (msg.type === "final" && !ui.segmentsBox.hidden)) {
    const li = document.createElement("li");
    const rate = r.model.sample_rate;
    const p = msg.probabilities[msg.label] || 0;
    li.textContent = `${msg.label} (${(100 * p).toFixed(0)}%)`;
    li.title = `segment ending at ${(msg.offset / rate).toFixed(1)} s`;
    ui.segments.append(li);
  }
  drawTimeline(r);
  if (msg.type === "final") {
    r.gotFinal = true;
    ui.final.textContent = msg.label;
    r.display.stop();
  }
}

// ---------- events ----------

function fmtTime(seconds) {
  const m = Math.floor(seconds / 60);
  const s = seconds - 60 * m;
  return m ? `${m}:${s.toFixed(2).padStart(5, "0")}` : `${s.toFixed(2)} s`;
}

function showDetector(r) {
  const ev = r.started.events;
  if (!ev) {
    ui.eventsInfo.textContent = "(events off for this model)";
    return;
  }
  const rate = r.model.sample_rate;
  ui.eventsInfo.textContent = `threshold ${ev.threshold.toFixed(2)} · off below ` +
    `${ev.off_threshold.toFixed(2)} · hold-off ${(1000 * ev.holdoff_samples / rate).toFixed(0)} ms` +
    (ev.min_on_samples ? ` · held ${(1000 * ev.min_on_samples / rate).toFixed(0)} ms before an event` : "") +
    (ev.onset_lag_samples ? ` · onsets ${(1000 * ev.onset_lag_samples / rate).toFixed(0)} ms before the model was sure` : "") +
    (ev.label_thresholds && Object.keys(ev.label_thresholds).length
      ? ` · per label: ${Object.entries(ev.label_thresholds).map(([k, v]) => `${k} ${v}`).join(", ")}` : "") +
    (ev.background.length ? ` · background: ${ev.background.join(", ")}` : "");
}

// "yes at 1.62 s": the label's onset (the frame it turned on, less the model's onset lag).
function showEvent(r, msg) {
  r.events.push(msg);
  const li = document.createElement("li");
  li.dataset.label = msg.label;
  li.dataset.offset = String(msg.offset);
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = `${fmtTime(msg.offset / r.model.sample_rate)} · ${(100 * msg.probability).toFixed(0)}%`;
  li.append(msg.label, t);
  ui.events.append(li);
  drawTimeline(r);
}

const EVENT_COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#ff7b72"];

// The whole stream so far (a sample: its full length) as a time axis with the events on it.
function drawTimeline(r) {
  const c = ui.timeline;
  const ctx = c.getContext("2d");
  const w = c.width;
  const h = c.height;
  ctx.fillStyle = "#0d1117";
  ctx.fillRect(0, 0, w, h);
  if (!r) return;
  const rate = r.model.sample_rate;
  const span = Math.max(r.total, r.lastOffset, r.sent, rate) / rate; // seconds shown
  const x = (sec) => 4 + ((w - 8) * sec) / span;
  ctx.fillStyle = "#30363d";
  ctx.fillRect(4, h - 18, w - 8, 2);
  ctx.fillStyle = "#3fb95055";
  ctx.fillRect(4, h - 20, x(r.lastOffset / rate) - 4, 6); // processed so far
  ctx.fillStyle = "#8b949e";
  ctx.font = "10px sans-serif";
  const step = [1, 2, 5, 10, 30, 60, 300, 600, 1800, 3600].find((s) => span / s <= 10) || 7200;
  for (let t = 0; t <= span + 1e-9; t += step) {
    ctx.fillRect(x(t), h - 16, 1, 4);
    ctx.fillText(fmtTime(t), Math.min(x(t) + 2, w - 40), h - 3);
  }
  const labels = r.model.classes;
  r.events.forEach((e, i) => {
    const px = x(e.offset / rate);
    ctx.fillStyle = EVENT_COLORS[labels.indexOf(e.label) % EVENT_COLORS.length];
    ctx.fillRect(px - 1, 4, 2, h - 24);
    ctx.font = "11px sans-serif";
    ctx.fillText(e.label, Math.min(px + 3, w - 50), 14 + 12 * (i % 3));
  });
  c.dataset.events = String(r.events.length);
}

// ---------- scrolling waveform ----------

class Display {
  constructor(canvas, rate, channels, units) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.channels = channels;
    this.units = units || "";
    this.audio = rate >= 8000;
    this.seconds = this.audio ? 3 : 8;
    this.size = Math.max(2, Math.round(rate * this.seconds));
    this.buf = new Float32Array(this.size);
    this.filled = 0;
    this.head = 0;
    this.peak = 0; // largest |value| of channel 0 so far (shown on the canvas' data-peak)
    this.frame = null;
  }

  push(values) {
    // Shows channel 0 of interleaved input.
    for (let i = 0; i < values.length; i += this.channels) {
      this.buf[this.head] = values[i];
      this.peak = Math.max(this.peak, Math.abs(values[i]));
      this.head = (this.head + 1) % this.size;
    }
    this.filled = Math.min(this.size, this.filled + values.length / this.channels);
    this.canvas.dataset.peak = this.peak.toFixed(4);
  }

  start() {
    const tick = () => { this.draw(); this.frame = requestAnimationFrame(tick); };
    this.frame = requestAnimationFrame(tick);
  }

  stop() {
    cancelAnimationFrame(this.frame);
    this.draw();
  }

  draw() {
    const { canvas, ctx, size, buf } = this;
    const w = canvas.width;
    const h = canvas.height;
    ctx.fillStyle = "#0d1117";
    ctx.fillRect(0, 0, w, h);
    ctx.strokeStyle = "#30363d";
    ctx.beginPath();
    ctx.moveTo(0, h / 2);
    ctx.lineTo(w, h / 2);
    ctx.stroke();
    if (this.filled === 0) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < this.filled; i++) {
      const x = buf[(this.head - 1 - i + size) % size];
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
    if (this.audio) { // audio: symmetric around zero
      const m = Math.max(Math.abs(lo), Math.abs(hi), 1e-3);
      lo = -m;
      hi = m;
    }
    const span = Math.max(hi - lo, 1e-3);
    const mid = (hi + lo) / 2;
    const scale = (h * 0.9) / span;
    const perPx = size / w;
    ctx.strokeStyle = "#3fb950";
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    let first = true;
    for (let px = 0; px < w; px++) {
      // column px covers samples [a, b) counted back from the newest one (right edge)
      const a = Math.floor((w - 1 - px) * perPx);
      const b = Math.max(a + 1, Math.floor((w - px) * perPx));
      if (a >= this.filled) continue;
      let cmin = Infinity;
      let cmax = -Infinity;
      for (let k = a; k < Math.min(b, this.filled); k++) {
        const x = buf[(this.head - 1 - k + size) % size];
        if (x < cmin) cmin = x;
        if (x > cmax) cmax = x;
      }
      // a connected min/max path: an envelope for audio, a trace for slow signals
      if (first) ctx.moveTo(px + 0.5, h / 2 - (cmax - mid) * scale);
      else ctx.lineTo(px + 0.5, h / 2 - (cmax - mid) * scale);
      ctx.lineTo(px + 0.5, h / 2 - (cmin - mid) * scale);
      first = false;
    }
    ctx.stroke();
    ctx.fillStyle = "#8b949e";
    ctx.font = "11px sans-serif";
    ctx.fillText(`${hi.toFixed(2)} ${this.units}`, 4, 12);
    ctx.fillText(`${lo.toFixed(2)} ${this.units}`, 4, h - 4);
    ctx.fillText(`last ${this.seconds} s`, w - 60, 12);
  }
}

init();
