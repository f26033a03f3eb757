// The page of `python -m luna.serve` (docs/streaming.md "Server (WebSocket)"): stream mode over this server's WebSocket.
// A WAV file is read as is (PCM16 or float32, at its own rate; other files are decoded by the browser at 48 kHz)
// and sent in 40 ms chunks at real time; the microphone is captured by an AudioWorklet (capture.js) at 48 kHz.
// Both send f32le PCM; the server answers one
// `codes` message per chunk (drawn as one strip per quantizer) and, when its vocoder streams, audio frames.
"use strict";
const CHUNK_MS = 40; // PCM per binary frame
const MIC_RATE = 48000; // a rate every luna server accepts by default (serve.yaml sample_rates)
const COLUMNS = 240; // tokens shown per strip; older ones scroll out to the left
const PX = 3; // canvas pixels per token
const $ = (id) => document.getElementById(id);

// What the page saw, for people (the stats line) and for tests (tests/serving/test_page.py reads it).
const luna = (window.luna = {
  status: "idle", error: "", note: "", ready: null, done: null, rate: 0,
  codes: [], latencies: [], sent: [], audio: [], audioSamples: 0, heardPeak: 0,
});

function setStatus(s) { luna.status = s; $("status").textContent = s; }
function note(s) { luna.note = s; $("note").textContent = s; }
function fail(s) { luna.error = s; $("error").textContent = s; setStatus("error"); }
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

// ---- the WebSocket: hello → ready, then PCM out, codes (and audio) in ----------------------------------------
function connect(hello) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/");
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify(hello));
    ws.onclose = (e) => reject(new Error(`the server closed the connection (${e.code} ${e.reason})`));
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "error") reject(Object.assign(new Error(`${msg.code}: ${msg.message}`), { code: msg.code }));
      else resolve({ ws, ready: msg });
    };
  });
}

async function openStream(rate) {
  const hello = { type: "hello", mode: "stream", sample_rate: rate, format: "f32le", audio: $("want-audio").checked };
  const token = $("token").value.trim();
  if (token) hello.token = token;
  try {
    return await connect(hello);
  } catch (e) {
    if (!(hello.audio && e.code === "unsupported_mode")) throw e;
    const conn = await connect({ ...hello, audio: false }); // the model streams codes; its vocoder not audio
    note(`codes only: this server cannot stream audio back (${e.message})`);
    return conn;
  }
}

function run({ ws, ready }, rate) {
  Object.assign(luna, { ready, rate, codes: Array.from({ length: ready.num_quantizers }, () => []) });
  $("lat-algo").textContent = ready.latency_ms == null ? "–" : ready.latency_ms.toFixed(1);
  const draw = strips(ready.num_quantizers, ready.codebook_size);
  const sentAt = [];
  let frames = 0;
  setStatus("streaming");
  const finished = new Promise((resolve, reject) => {
    ws.onclose = (e) => reject(new Error(`the connection closed (${e.code} ${e.reason})`));
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return hear(e.data, ready.sample_rate);
      const msg = JSON.parse(e.data);
      if (msg.type === "error") return reject(new Error(`${msg.code}: ${msg.message}`));
      if (msg.type === "done") return resolve((luna.done = msg));
      if (msg.chunk !== undefined) showLatency(performance.now() - sentAt[msg.chunk]);
      msg.codes.forEach((row, q) => luna.codes[q].push(...row));
      draw(msg.codes);
      frames += msg.codes[0].length;
      $("frames").textContent = frames;
    };
  });
  return {
    finished,
    send(pcm) { sentAt.push(performance.now()); luna.sent.push(pcm); ws.send(pcm); }, // Float32Array: f32le
    async end() {
      ws.send(JSON.stringify({ type: "end" }));
      const done = await finished;
      ws.onclose = null;
      ws.close();
      return done;
    },
  };
}

function showLatency(ms) {
  luna.latencies.push(ms);
  const sorted = [...luna.latencies].sort((a, b) => a - b);
  $("lat-last").textContent = ms.toFixed(0);
  $("lat-p50").textContent = sorted[Math.floor(sorted.length / 2)].toFixed(0);
}

// ---- the codes: one canvas strip per quantizer, a column per token, colour = code index -------------------------
function colour(code, size) {
  const v = code / Math.max(1, size - 1);
  return `hsl(${260 - 210 * v}, 85%, ${22 + 50 * v}%)`;
}

function strips(n, size) {
  const box = $("strips");
  box.textContent = "";
  const pens = [];
  for (let q = 0; q < n; q++) {
    const row = document.createElement("div");
    const label = document.createElement("span");
    const canvas = document.createElement("canvas");
    row.className = "strip";
    label.textContent = `q${q + 1}`;
    canvas.width = COLUMNS * PX;
    canvas.height = 14;
    row.append(label, canvas);
    box.append(row);
    pens.push(canvas.getContext("2d"));
  }
  return (codes) => {
    const w = codes[0].length * PX;
    if (!w) return;
    pens.forEach((g, q) => {
      g.drawImage(g.canvas, -w, 0); // scroll left by the new tokens
      codes[q].forEach((c, i) => {
        g.fillStyle = colour(c, size);
        g.fillRect(g.canvas.width - w + i * PX, 0, PX, g.canvas.height);
      });
    });
  };
}

// ---- the reconstruction: frames (uint64 LE first-sample index + f32le) scheduled back to back ---------------
const player = {
  ctx: null, analyser: null, at: 0,
  start() { // in the click handler: a user gesture lets the AudioContext run
    if (!this.ctx) {
      this.ctx = new AudioContext();
      this.analyser = this.ctx.createAnalyser();
      this.analyser.connect(this.ctx.destination);
      const block = new Float32Array(this.analyser.fftSize);
      setInterval(() => { // the loudest sample the context has rendered (what the speakers got)
        this.analyser.getFloatTimeDomainData(block);
        for (const v of block) luna.heardPeak = Math.max(luna.heardPeak, Math.abs(v));
      }, 20);
    }
    this.ctx.resume();
    this.at = 0;
  },
  play(x, rate) {
    const buf = this.ctx.createBuffer(1, x.length, rate);
    buf.copyToChannel(x, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(this.analyser);
    this.at = Math.max(this.at, this.ctx.currentTime + 0.05);
    src.start(this.at);
    this.at += buf.duration;
  },
};

function hear(data, rate) {
  const view = new DataView(data);
  const index = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  const x = new Float32Array(data, 8);
  if (index !== luna.audioSamples) return fail(`audio out of order: sample ${index}, expected ${luna.audioSamples}`);
  luna.audio.push(x);
  luna.audioSamples += x.length;
  $("played").textContent = (luna.audioSamples / rate).toFixed(2);
  if (x.length) player.play(x, rate);
}

// ---- sources ---------------------------------------------------------------------------------------------------
let stopping = false;
let stopMic = null;

function readWav(bytes) { // a PCM16 or float32 WAV → {rate, pcm: mono Float32Array} as luna reads it; else null
  const v = new DataView(bytes);
  if (bytes.byteLength < 12 || v.getUint32(0) !== 0x52494646 || v.getUint32(8) !== 0x57415645) return null; // RIFF WAVE
  let fmt = null;
  for (let p = 12; p + 8 <= bytes.byteLength; p += 8 + v.getUint32(p + 4, true) + (v.getUint32(p + 4, true) & 1)) {
    const id = v.getUint32(p);
    if (id === 0x666d7420) { // "fmt "
      fmt = { tag: v.getUint16(p + 8, true), channels: v.getUint16(p + 10, true), rate: v.getUint32(p + 12, true),
        bits: v.getUint16(p + 22, true) };
    } else if (id === 0x64617461 && fmt) { // "data"
      const int16 = fmt.tag === 1 && fmt.bits === 16;
      if (!int16 && !(fmt.tag === 3 && fmt.bits === 32)) return null; // other encodings: the browser decodes them
      const width = fmt.bits / 8;
      const frames = Math.floor(Math.min(v.getUint32(p + 4, true), bytes.byteLength - p - 8) / (width * fmt.channels));
      const x = new Float32Array(frames);
      for (let i = 0, at = p + 8; i < frames; i++) {
        let sum = 0;
        for (let c = 0; c < fmt.channels; c++, at += width) sum += int16 ? v.getInt16(at, true) / 32768 : v.getFloat32(at, true);
        x[i] = sum / fmt.channels;
      }
      return { rate: fmt.rate, pcm: x };
    }
  }
  return null;
}

function mono(buffer) {
  const x = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    buffer.getChannelData(c).forEach((v, i) => { x[i] += v / buffer.numberOfChannels; });
  }
  return x;
}

async function streamFile() {
  const bytes = await $("file").files[0].arrayBuffer();
  let wav = readWav(bytes); // exact samples at the file's rate (the browser's decoder scales int16 by 1/32767)
  let conn = null;
  try {
    conn = wav && (await openStream(wav.rate));
  } catch (e) {
    if (e.code !== "unsupported_rate") throw e; // a rate the server does not take: the browser resamples
  }
  if (!conn) {
    wav = { rate: MIC_RATE, pcm: mono(await new OfflineAudioContext(1, 1, MIC_RATE).decodeAudioData(bytes)) };
    conn = await openStream(MIC_RATE);
  }
  const { rate, pcm } = wav;
  const stream = run(conn, rate);
  const step = Math.round((rate * CHUNK_MS) / 1000);
  const t0 = performance.now();
  stream.finished.catch(() => { stopping = true; });
  for (let k = 0; k * step < pcm.length && !stopping; k++) {
    await sleep(t0 + k * CHUNK_MS - performance.now()); // real time, as a live source would send
    stream.send(pcm.slice(k * step, (k + 1) * step));
  }
  return stream.end();
}

async function streamMic() {
  if (!navigator.mediaDevices) throw new Error("the microphone needs a secure page: open it on localhost or https");
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext({ sampleRate: MIC_RATE });
  try {
    await ctx.audioWorklet.addModule("/capture.js");
    const stream = run(await openStream(ctx.sampleRate), ctx.sampleRate);
    const source = ctx.createMediaStreamSource(media);
    const chunk = Math.round((ctx.sampleRate * CHUNK_MS) / 1000);
    const capture = new AudioWorkletNode(ctx, "luna-capture", { processorOptions: { chunk } });
    capture.port.onmessage = (e) => { if (!stopping) stream.send(e.data); };
    const mute = ctx.createGain();
    mute.gain.value = 0; // pulls the graph without echoing the microphone
    source.connect(capture).connect(mute).connect(ctx.destination);
    await ctx.resume();
    await Promise.race([new Promise((resolve) => { stopMic = resolve; }), stream.finished]);
    stopping = true;
    source.disconnect();
    return await stream.end();
  } finally {
    stopMic = null;
    media.getTracks().forEach((t) => t.stop());
    ctx.close();
  }
}

async function go(kind) {
  stopping = false;
  Object.assign(luna, { error: "", done: null, latencies: [], sent: [], audio: [], audioSamples: 0, heardPeak: 0 });
  $("error").textContent = "";
  note("");
  player.start();
  for (const b of ["play-file", "mic"]) $(b).disabled = true;
  $("stop").disabled = false;
  setStatus("connecting");
  try {
    await (kind === "file" ? streamFile() : streamMic());
    setStatus("done");
  } catch (e) {
    fail(e.message || String(e));
  } finally {
    $("stop").disabled = true;
    $("mic").disabled = false;
    $("play-file").disabled = !$("file").files.length;
  }
}

$("file").onchange = () => { $("play-file").disabled = !$("file").files.length; };
$("play-file").onclick = () => go("file");
$("mic").onclick = () => go("mic");
$("stop").onclick = () => { stopping = true; if (stopMic) stopMic(); };

// For tests: a list of Float32Arrays (luna.sent, luna.audio) as base64 of their f32le bytes, concatenated.
luna.dump = (name) => {
  const parts = luna[name];
  const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => { all.set(p, at); return at + p.length; }, 0);
  const bytes = new Uint8Array(all.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
