// AudioWorklet: resamples the microphone (context rate, e.g. 48 kHz) to the model's rate
// with a windowed-sinc band-limited interpolator, and posts Int16 (pcm_s16le) chunks of
// `chunkSamples` to the main thread, which sends them over the WebSocket unchanged.

const HALF_WIDTH = 16; // kernel half-width in output-rate samples

class PcmResampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkSamples } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.cutoff = Math.min(1, 1 / this.step) * 0.9; // fraction of the input Nyquist
    this.half = Math.ceil(HALF_WIDTH * Math.max(1, this.step)); // in input samples
    this.history = new Float32Array(0); // input samples not yet fully consumed
    this.base = 0; // input index of history[0]
    this.next = 0; // input-time of the next output sample
    this.out = new Int16Array(chunkSamples);
    this.fill = 0;
  }

  kernel(d) {
    if (Math.abs(d) >= this.half) return 0;
    const x = d * this.cutoff;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const blackman = 0.42 + 0.5 * Math.cos((Math.PI * d) / this.half) +
      0.08 * Math.cos((2 * Math.PI * d) / this.half);
    return this.cutoff * sinc * blackman;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    const joined = new Float32Array(this.history.length + input.length);
    joined.set(this.history);
    joined.set(input, this.history.length);
    const last = this.base + joined.length - 1; // newest input index available
    while (this.next + this.half <= last) {
      const centre = Math.floor(this.next);
      let acc = 0;
      for (let k = centre - this.half + 1; k <= centre + this.half; k++) {
        const i = k - this.base;
        if (i >= 0) acc += joined[i] * this.kernel(this.next - k);
      }
      this.out[this.fill++] = Math.max(-32768, Math.min(32767, Math.round(acc * 32768)));
      if (this.fill === this.out.length) {
        const chunk = this.out.slice();
        this.port.postMessage(chunk.buffer, [chunk.buffer]);
        this.fill = 0;
      }
      this.next += this.step;
    }
    const keepFrom = Math.max(0, Math.floor(this.next) - this.half - this.base);
    this.history = joined.slice(keepFrom);
    this.base += keepFrom;
    return true;
  }
}

registerProcessor("pcm-resampler", PcmResampler);
