// Step-Audio gateway page: plain browser APIs, no build step.
// Speech streams as raw s16le PCM (response_format "pcm") and is scheduled on an AudioContext chunk by chunk,
// so playback starts with the first chunk; chat streams chat.completion.chunk events with pcm16 audio deltas.
"use strict";

const $ = (id) => document.getElementById(id);
const STYLE_TAGS = ["高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1", "四川话", "粤语", "英文", "日语", "韩语", "RAP", "哼唱"];
let history = [];  // chat turns as text (the gateway returns each spoken turn's transcript)

$("api-key").value = localStorage.getItem("stepaudio-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("stepaudio-key", $("api-key").value); loadVoices(); });
$("tts-speed").addEventListener("input", () => { $("tts-speed-value").textContent = $("tts-speed").value; });
for (const tag of STYLE_TAGS) {
  const label = document.createElement("label");
  label.innerHTML = `<input type="checkbox" value="${tag}"> ${tag}`;
  $("tts-tags").appendChild(label);
}

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

function setStatus(id, text, state) {
  $(id).textContent = text;
  if (state) $(id).dataset.state = state;
}

async function loadVoices() {
  const response = await fetch("/v1/audio/voices", { headers: headers() });
  if (!response.ok) { setStatus("tts-status", await failure(response), "error"); return; }
  const select = $("tts-voice");
  const chosen = select.value;
  select.innerHTML = "";
  for (const voice of (await response.json()).data) {
    if (voice.type === "alias") continue;  // OpenAI names for the presets listed anyway
    const option = new Option(voice.type === "preset" ? voice.name : `${voice.name} (uploaded)`, voice.id);
    select.add(option);
  }
  if (chosen) select.value = chosen;
}

// Plays s16le PCM pieces gaplessly; `ended` resolves when the last scheduled piece has played.
class PcmPlayer {
  constructor(rate) {
    this.context = new AudioContext({ sampleRate: rate });
    this.rate = rate;
    this.next = 0;
    this.carry = new Uint8Array(0);  // an odd byte left between network chunks
    this.last = null;
  }
  push(bytes) {
    const joined = new Uint8Array(this.carry.length + bytes.length);
    joined.set(this.carry); joined.set(bytes, this.carry.length);
    const usable = joined.length - (joined.length % 2);
    this.carry = joined.slice(usable);
    if (!usable) return;
    const ints = new Int16Array(joined.buffer.slice(0, usable));
    const buffer = this.context.createBuffer(1, ints.length, this.rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < ints.length; i++) channel[i] = ints[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.next = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
    this.last = source;
  }
  ended() {
    return new Promise((resolve) => {
      if (!this.last) { resolve(); return; }
      this.last.onended = () => resolve();
    });
  }
}

async function speak() {
  const instructions = [...document.querySelectorAll("#tts-tags input:checked")].map((box) => box.value).join(",");
  const body = {
    model: "step-audio-tts", input: $("tts-text").value, voice: $("tts-voice").value,
    response_format: "pcm", speed: Number($("tts-speed").value),
  };
  if (instructions) body.instructions = instructions;
  setStatus("tts-status", "requesting…", "requesting");
  const start = performance.now();
  const response = await fetch("/v1/audio/speech", {
    method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  });
  if (!response.ok) { setStatus("tts-status", await failure(response), "error"); return; }
  const player = new PcmPlayer(Number(response.headers.get("X-Sample-Rate") || 22050));
  const reader = response.body.getReader();
  let received = 0, firstMs = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (firstMs === null) firstMs = Math.round(performance.now() - start);
    received += value.length;
    player.push(value);
    $("tts-status").dataset.bytes = received;
    setStatus("tts-status", `first audio after ${firstMs} ms · ${received} bytes · playing`, "playing");
  }
  $("tts-status").dataset.firstMs = firstMs;
  await player.ended();
  const seconds = (received / 2 / player.rate).toFixed(2);
  setStatus("tts-status", `first audio after ${firstMs} ms · ${received} bytes (${seconds} s) · ended`, "ended");
}

// ---- voices: upload a file or a microphone recording ----------------------------------------------------------
let recordedVoice = null;

function record(stream, ms) {
  return new Promise((resolve) => {
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (event) => parts.push(event.data);
    recorder.onstop = () => resolve(new Blob(parts, { type: recorder.mimeType }));
    recorder.start();
    setTimeout(() => recorder.stop(), ms);
  });
}

$("voice-record").addEventListener("click", async () => {
  setStatus("voice-status", "recording 3 s…");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  recordedVoice = await record(stream, 3000);
  stream.getTracks().forEach((track) => track.stop());
  setStatus("voice-status", `recorded ${recordedVoice.size} bytes; add its transcript and upload`);
});

$("voice-upload").addEventListener("click", async () => {
  const file = $("voice-file").files[0] || recordedVoice;
  if (!file) { setStatus("voice-status", "choose a file or record first"); return; }
  const form = new FormData();
  form.append("file", file, file.name || "microphone.webm");
  form.append("transcript", $("voice-transcript").value);
  const response = await fetch("/v1/audio/voices", { method: "POST", headers: headers(), body: form });
  if (!response.ok) { setStatus("voice-status", await failure(response)); return; }
  const voice = await response.json();
  setStatus("voice-status", `added ${voice.id} (${voice.seconds} s)`);
  await loadVoices();
  $("tts-voice").value = voice.id;
});

// ---- push-to-talk chat ------------------------------------------------------------------------------------------
let talking = null;
let starting = null;  // the microphone may still be opening when the button is released

function base64Of(buffer) {
  let text = "";
  const bytes = new Uint8Array(buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function bytesOf(base64) {
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function say(line, cls) {
  const p = document.createElement("p");
  if (cls) p.className = cls;
  p.textContent = line;
  $("chat-log").appendChild(p);
  return p;
}

function startTalking() {
  if (!talking && !starting) starting = openMicrophone().finally(() => { starting = null; });
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const recorder = new MediaRecorder(stream);
  const parts = [];
  recorder.ondataavailable = (event) => parts.push(event.data);
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start();
  talking = { stream, recorder, parts, stopped };
  $("talk").classList.add("recording");
  setStatus("chat-status", "listening…", "recording");
}

async function stopTalking() {
  if (starting) await starting;
  if (!talking) return;
  const { stream, recorder, parts, stopped } = talking;
  talking = null;
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((track) => track.stop());
  $("talk").classList.remove("recording");
  const audio = base64Of(await new Blob(parts, { type: recorder.mimeType }).arrayBuffer());
  await chatTurn(audio);
}

async function chatTurn(audio) {
  setStatus("chat-status", "thinking…", "requesting");
  const you = say("You: …", "you");
  const reply = say("Assistant: ");
  const body = {
    model: "step-audio-chat", stream: true, modalities: ["text", "audio"], audio: { format: "pcm16" },  // the served chat's default voice
    messages: [...history, { role: "user", content: [{ type: "input_audio", input_audio: { data: audio, format: "webm" } }] }],
  };
  const start = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  });
  if (!response.ok) { reply.className = "error"; reply.textContent = await failure(response); setStatus("chat-status", "error", "error"); return; }
  const player = new PcmPlayer(22050);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "", text = "", transcript = "", received = 0, firstMs = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending += value;
    const events = pending.split("\n\n");
    pending = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) { reply.className = "error"; reply.textContent = chunk.error.message; continue; }
      const delta = chunk.choices[0].delta;
      const piece = delta.content || (delta.audio && delta.audio.transcript) || "";
      if (piece) { text += piece; reply.textContent = `Assistant: ${text}`; }
      if (delta.audio && delta.audio.data) {
        const bytes = bytesOf(delta.audio.data);
        if (firstMs === null) firstMs = Math.round(performance.now() - start);
        received += bytes.length;
        player.push(bytes);
      }
      if (chunk.step_audio) transcript = chunk.step_audio.user_transcript;
    }
    setStatus("chat-status", `reply audio ${received} bytes, first after ${firstMs} ms`, "playing");
  }
  you.textContent = `You: ${transcript}`;
  history.push({ role: "user", content: transcript }, { role: "assistant", content: text });
  $("chat-status").dataset.bytes = received;
  $("chat-status").dataset.reply = text;
  $("chat-status").dataset.transcript = transcript;
  await player.ended();
  setStatus("chat-status", `reply audio ${received} bytes, first after ${firstMs} ms · ended`, "ended");
}

$("talk").addEventListener("pointerdown", startTalking);
$("talk").addEventListener("pointerup", stopTalking);
$("talk").addEventListener("pointerleave", stopTalking);
$("tts-play").addEventListener("click", () => speak().catch((error) => setStatus("tts-status", String(error), "error")));
loadVoices();
