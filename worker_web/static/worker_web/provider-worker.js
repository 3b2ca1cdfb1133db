// The provider tab's Web Worker: it owns the WebSocket to /ws/provider/, the shard cache and onnxruntime-web, so
// the page only draws. It speaks docs/protocol.md exactly as worker_web/agent/provider.py does (kind "browser").
import * as wire from "./wire.js";
import * as commitment from "./commitment.js";
import { encodeAnswer, runChallenge } from "./challenge.js";
import { ShardCache, ShardIntegrityError } from "./shard-cache.js";
import { ShardRuntime, timeDecode } from "./shard-runtime.js";
import { StateStore } from "./state-store.js";

const BACKOFF_FIRST = 1, BACKOFF_CAP = 30; // seconds, as ProviderAgent.run_forever
const STEP_TIMES_KEPT = 32;
const COMMITS_PER_MESSAGE = 256; // transport/protocol.py
const COMMIT_BATCH_STEPS = 16; // transport/protocol.py
const COMMIT_IDLE_MS = 250; // COMMIT_IDLE_SECONDS

const state = {
  config: null,
  ort: null,
  device: null, // {backend, adapter, threads, isolated, cores}
  socket: null,
  connection: "not connected",
  wanted: false, // the user pressed Start and not Stop: reconnect after a drop
  name: "browser",
  ask: null, // its own ask per layer-token, or null: the platform's figure
  benchmark: null, // {ns, shardId, sha256, measuredNs}: its own figure, and the server's once it confirms one
  benchmarkShard: null, // the welcome's benchmark shard, once loaded and announced (benchmark_ready)
  runtimes: new Map(), // sha256 -> Promise<ShardRuntime>, loaded once per visit
  held: new Map(), // sha256 -> shard id, for the panel
  sessions: new Map(), // session id -> {runtime, hop, nextStep, lastOutput}
  stepsServed: 0,
  stepMs: [],
  uncommitted: [], // {session, step, layerHidden, dims} served, commitment not yet sent
  commitTimer: null,
  committing: Promise.resolve(), // the commitments being hashed and sent; flushes run one after another
  commitsSent: 0,
  revealsAnswered: 0,
  queue: Promise.resolve(), // session messages and frames run one at a time, in arrival order
  heartbeat: null,
};
const cache = new ShardCache((shard, loaded, total) => post({ type: "progress", shard: shard.id, loaded, total }));
const states = new StateStore(); // what it committed to, kept to answer reveals

function post(message) {
  self.postMessage(message);
}

function log(text, level = "info") {
  post({ type: "log", level, text });
}

async function status() {
  const median = state.stepMs.length ? [...state.stepMs].sort((a, b) => a - b)[Math.floor(state.stepMs.length / 2)] : null;
  post({
    type: "status",
    connection: state.connection,
    backend: state.device && state.device.backend,
    shards: [...state.held.values()],
    sessions: state.sessions.size,
    stepsServed: state.stepsServed,
    msPerStep: median,
    downloads: cache.downloads,
    cacheHits: cache.hits,
    corrupt: cache.corrupt,
    benchmark: state.benchmark,
    commitsSent: state.commitsSent,
    revealsAnswered: state.revealsAnswered,
  });
}

async function cacheStatus() {
  post({ type: "cache", shards: await cache.list(), usage: await cache.usage() });
}

// --- device and runtime ------------------------------------------------------------------------------------------

async function detectDevice() {
  let adapter = null, adapterText = "none";
  if (self.navigator.gpu) {
    try {
      adapter = await navigator.gpu.requestAdapter();
    } catch {
      adapter = null;
    }
  }
  const fallback = adapter && (adapter.info ? adapter.info.isFallbackAdapter : adapter.isFallbackAdapter);
  if (adapter) {
    const info = adapter.info || {};
    adapterText = `${[info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unnamed"}` +
      (fallback ? " (a software fallback adapter: not used)" : "");
  }
  const backend = adapter && !fallback ? "webgpu" : "wasm";
  const cores = navigator.hardwareConcurrency || 1;
  const threads = self.crossOriginIsolated ? Math.min(4, cores) : 1; // threads need SharedArrayBuffer
  // The browser tells device memory only coarsely (GB, capped at 8); offer half of it, or 0 when it is not told.
  const memoryBytes = Math.floor(((navigator.deviceMemory || 0) / 2) * 2 ** 30);
  return { backend, adapter: adapterText, threads, isolated: self.crossOriginIsolated, cores, memoryBytes };
}

async function loadOrt() {
  const file = state.device.backend === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs";
  const ort = await import(new URL(file, new URL(state.config.ortBase, self.location.origin)).href);
  ort.env.wasm.wasmPaths = new URL(state.config.ortBase, self.location.origin).href;
  ort.env.wasm.numThreads = state.device.threads;
  ort.env.wasm.proxy = false; // this is already a worker
  return ort;
}

function runtimeFor(shard) {
  if (!state.runtimes.has(shard.sha256)) {
    const loading = (async () => {
      const started = performance.now();
      const { bytes, source, warning } = await cache.obtain(shard);
      if (warning) post({ type: "warning", text: warning });
      const obtained = performance.now();
      log(`${shard.id}: ${source}, ${(bytes.byteLength / 1e6).toFixed(1)} MB, SHA-256 checked`);
      const runtime = await ShardRuntime.load(state.ort, bytes, shard, state.device.backend, { kvOnGpu: state.config.kvOnGpu !== false });
      state.held.set(shard.sha256, shard.id);
      const finished = performance.now();
      runtime.loadTimes = { source, bytes: bytes.byteLength, obtainMs: obtained - started, sessionMs: finished - obtained, totalMs: finished - started };
      return runtime;
    })();
    loading.catch(() => state.runtimes.delete(shard.sha256)); // a failed load may be tried again
    state.runtimes.set(shard.sha256, loading);
  }
  return state.runtimes.get(shard.sha256);
}

// The "Run the benchmark" button: a local measurement for the user (the server's figure comes from the challenge
// each connection answers, benchmarkReady and answerChallenge below).
async function runBenchmark(shard, again = false) {
  if (again || !state.benchmark || state.benchmark.sha256 !== shard.sha256) {
    const runtime = await runtimeFor(shard);
    const ns = await timeDecode(runtime);
    state.benchmark = { ns, shardId: shard.id, sha256: shard.sha256 };
    log(`benchmark: ${(ns / 1e6).toFixed(3)} ms per layer-token on ${shard.id}`);
  }
  await status();
  await cacheStatus();
  return state.benchmark;
}

// --- the connection ----------------------------------------------------------------------------------------------

function connect() {
  const url = new URL(state.config.socketPath, self.location.origin);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url); // the session cookie authenticates it (docs/protocol.md)
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  state.benchmarkShard = null; // each connection answers its own challenge
  state.connection = "connecting";
  status();
  return new Promise((resolve) => {
    let welcomed = false;
    socket.onopen = () => send({
      type: "hello", protocol: 1, name: state.name, kind: "browser", backend: state.device.backend,
      slots: 1, // one session at a time: a tab runs its steps on one worker, one after another
      memory_bytes: state.device.memoryBytes,
      ...(state.ask ? { ask: state.ask } : {}), // its own ask per layer-token; none: the platform's figure
    });
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          log(`the server sent a message that is not JSON: ${event.data.slice(0, 80)}`, "warning");
          return;
        }
        if (message.type === "welcome") welcomed = true;
        if (message.type === "error" && message.code === "benchmark_failed") welcomed = false; // closed next: back off
        control(message);
      } else {
        enqueue(() => step(event.data));
      }
    };
    socket.onclose = (event) => {
      clearInterval(state.heartbeat);
      dropSessions();
      state.socket = null;
      state.connection = event.code === 4401 ? "refused: sign in again" : "disconnected";
      status();
      resolve({ welcomed, refused: event.code === 4401 });
    };
  });
}

async function serveForever() {
  let delay = BACKOFF_FIRST;
  while (state.wanted) {
    const { welcomed, refused } = await connect();
    if (refused || !state.wanted) break;
    if (welcomed) delay = BACKOFF_FIRST;
    const wait = delay * (0.8 + 0.4 * Math.random());
    state.connection = `disconnected; retrying in ${wait.toFixed(1)} s`;
    status();
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    delay = Math.min(delay * 2, BACKOFF_CAP);
  }
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(typeof message === "string" || message instanceof ArrayBuffer ? message : JSON.stringify(message));
  }
}

function dropSessions() {
  const ids = [...state.sessions.keys()];
  for (const [id, session] of state.sessions) session.runtime.close(id); // the server forgets them with the socket
  state.sessions.clear();
  // Their commitments cannot reach the server now: nothing to stand behind. What was committed stays revealable.
  state.uncommitted = [];
  enqueue(async () => {
    await state.committing;
    for (const id of ids) await closeStates(id);
  });
}

async function control(message) {
  if (message.type === "welcome") {
    state.connection = `connected as provider ${message.provider_id}`;
    const every = (message.heartbeat_seconds || 15) * 1000;
    state.heartbeat = setInterval(() => send({ type: "heartbeat", sessions: state.sessions.size, steps_served: state.stepsServed }), every);
    states.keepSeconds = message.states_keep_seconds ?? states.keepSeconds;
    states.prune().catch((error) => log(`pruning kept states failed: ${error.message}`, "warning"));
    status();
    if (message.benchmark) enqueue(() => benchmarkReady(message.benchmark));
  } else if (message.type === "benchmarked") {
    state.benchmark = { ...state.benchmark, measuredNs: message.ns_per_layer_token };
    log(`the server measured ${(message.ns_per_layer_token / 1e6).toFixed(3)} ms per layer-token on ${message.shard_id}`);
    status();
  } else if (message.type === "error") {
    log(`server says ${message.code}: ${message.message}`, message.code === "benchmark_failed" ? "error" : "warning");
  } else {
    enqueue(() => sessionMessage(message));
  }
}

// The benchmark (docs/protocol.md): load the welcome's shard, say so, and answer the server's challenge on it.
async function benchmarkReady(shard) {
  await runtimeFor(shard);
  state.benchmarkShard = shard;
  send({ type: "benchmark_ready", shard_id: shard.id });
  await cacheStatus();
}

async function answerChallenge(message) {
  const shard = state.benchmarkShard;
  const whole = (v, low, high) => Number.isInteger(v) && v >= low && v <= high;
  if (!shard || message.shard_id !== shard.id) {
    throw Object.assign(new Error(`a challenge on ${message.shard_id}, not on the shard this tab announced`), { code: "bad_message" });
  }
  // At most the work agent.py agrees to (transport/protocol.py challenge_fields): a seed a number holds exactly.
  if (!whole(message.seed, 0, 2 ** 53 - 1) || !whole(message.prompt, 1, 64) || !whole(message.steps, 1, 256)) {
    throw Object.assign(new Error('"benchmark_challenge" needs a seed below 2^53, prompt 1-64 and steps 1-256'), { code: "bad_message" });
  }
  const { answer, nsPerLayerToken } = await runChallenge(await runtimeFor(shard), message);
  send({ type: "benchmark", shard_id: shard.id, ns_per_layer_token: nsPerLayerToken, answer: encodeAnswer(answer) });
  state.benchmark = { ns: nsPerLayerToken, shardId: shard.id, sha256: shard.sha256, measuredNs: null };
  log(`benchmark challenge answered: ${(nsPerLayerToken / 1e6).toFixed(3)} ms per layer-token on ${shard.id} by this tab's clock`);
}

function enqueue(task) {
  state.queue = state.queue.then(task).catch((error) => {
    log(`${error.code || "step_failed"}: ${error.message}`, "error");
    const reply = { type: "error", code: error.code || "step_failed", message: String(error.message) };
    if (error.session) reply.session = error.session;
    send(reply);
  }).finally(status);
}

function forSession(error, session) {
  error.session = session;
  return error;
}

async function sessionMessage(message) {
  if (message.type === "open_session") {
    const started = performance.now();
    let runtime;
    try {
      runtime = await runtimeFor(message.shard);
    } catch (error) {
      const code = error instanceof ShardIntegrityError ? "shard_integrity" : "shard_failed";
      throw forSession(Object.assign(new Error(error.message), { code }), message.session);
    }
    runtime.open(message.session);
    // A greedy job's head answers with the argmax of its logits only (docs/protocol.md, head_output).
    const argmax = Boolean(runtime.shard.has_head) && message.head_output === "argmax";
    state.sessions.set(message.session, { runtime, hop: message.hop, argmax, nextStep: 0, lastOutput: null });
    send({ type: "session_opened", session: message.session, load_ms: Math.round((performance.now() - started) * 10) / 10 });
    cacheStatus();
  } else if (message.type === "close_session") {
    const session = state.sessions.get(message.session);
    if (session) {
      session.runtime.close(message.session);
      state.sessions.delete(message.session);
      await flushCommits(); // commitments first: the states they cover must be in the store
      await closeStates(message.session);
    }
  } else if (message.type === "benchmark_challenge") {
    await answerChallenge(message);
  } else if (message.type === "reveal") {
    await reveal(message);
  } else if (message.type === "load_shard") {
    await runtimeFor(message.shard);
    send({ type: "shard_loaded", shard_id: message.shard.id, sha256: message.shard.sha256 });
  } else {
    throw Object.assign(new Error(`unknown message type ${JSON.stringify(message.type)}`), { code: "bad_message" });
  }
}

async function step(buffer) {
  const frame = wire.decode(buffer);
  const session = state.sessions.get(frame.session);
  if (!session) throw forSession(Object.assign(new Error("session is not open here"), { code: "unknown_session" }), frame.session);
  if (frame.kind === wire.STEP_INPUT && frame.step === session.nextStep - 1 && session.lastOutput) {
    send(session.lastOutput); // asked again (a message was lost between server processes): the same answer
    return;
  }
  if (frame.kind !== wire.STEP_INPUT || frame.step !== session.nextStep) {
    const error = new Error(`expected step input ${session.nextStep}, got type ${frame.kind} step ${frame.step}`);
    throw forSession(Object.assign(error, { code: "unexpected_step" }), frame.session);
  }
  const started = performance.now();
  let result;
  try {
    result = await session.runtime.step(frame.session, frame.data, frame.dims);
  } catch (error) {
    throw forSession(error, frame.session);
  }
  const head = session.runtime.shard.has_head;
  session.lastOutput = session.argmax
    ? wire.encodeArgmax(frame, result.output)
    : wire.encodeOutput(frame, result.dims, result.output, head ? wire.FLOAT32 : wire.FLOAT16);
  session.nextStep++;
  state.stepsServed++;
  state.stepMs.push(performance.now() - started);
  if (state.stepMs.length > STEP_TIMES_KEPT) state.stepMs.shift();
  state.uncommitted.push({ session: frame.session, step: frame.step, layerHidden: result.layerHidden, dims: result.layerHiddenDims });
  send(session.lastOutput);
  commitSoon();
}

// --- commitments and reveals (docs/protocol.md, "Commitments and reveals") ------------------------------------

// Send the commitments of the steps answered, in batches and off the step's path (transport/protocol.py,
// COMMIT_BATCH_STEPS and COMMIT_IDLE_SECONDS): a full batch on the worker's next task, a partial one after a pause.
function commitSoon() {
  if (state.uncommitted.length && state.commitTimer === null) {
    const full = state.uncommitted.length >= COMMIT_BATCH_STEPS;
    state.commitTimer = setTimeout(() => {
      state.commitTimer = null;
      flushCommits();
    }, full ? 0 : COMMIT_IDLE_MS);
  }
}

function flushCommits() {
  state.committing = state.committing.then(sendCommits).catch((error) => log(`commitments failed: ${error.message}`, "error"));
  return state.committing;
}

async function sendCommits() {
  const served = state.uncommitted;
  const socket = state.socket; // a commitment goes only on the connection whose session it covers
  state.uncommitted = [];
  const commits = [];
  for (const { session, step, layerHidden, dims } of served) {
    states.add(session, step, layerHidden, dims);
    commits.push([session, step, await commitment.commit(layerHidden, dims[0])]);
  }
  if (!commits.length || state.socket !== socket) return;
  for (let start = 0; start < commits.length; start += COMMITS_PER_MESSAGE) {
    send({ type: "commit", commits: commits.slice(start, start + COMMITS_PER_MESSAGE) });
  }
  state.commitsSent += commits.length;
  status();
}

async function closeStates(session) {
  try {
    await states.close(session);
    await states.prune();
  } catch (error) { // a full disk or quota: those states cannot be revealed later, the tab serves on
    log(`the states of session ${session} could not be kept (${error.message}): a reveal of them will fail`, "warning");
  }
}

// Open one layer's committed states for a range of steps: a REVEAL frame per step, then the proofs; `no_states`
// naming the request when any step is missing (worker_web/agent/provider.py `_reveal`).
async function reveal(message) {
  const request = String(message.request ?? "").slice(0, 64);
  const { session, layer, first_step: first, last_step: last } = message;
  const whole = (v, high = Infinity) => Number.isInteger(v) && v >= 0 && v <= high;
  if (typeof session !== "string" || !whole(layer, 1023) || !whole(first) || !whole(last)) {
    throw Object.assign(new Error('"reveal" needs "session", "layer" (0-1023), "first_step" and "last_step"'), { code: "bad_message" });
  }
  await flushCommits(); // the states of every step answered so far are in the store
  const held = first <= last ? await states.layer(session, first, last) : null;
  if (!held || layer >= held.values().next().value.layers) {
    const text = `no states of layer ${layer} for steps ${first}-${last} of session ${session}`;
    send({ type: "error", code: "no_states", message: text, request });
    return;
  }
  const proofs = [];
  for (const [step, { layers, tokens, hidden, data }] of held) {
    const size = tokens * hidden;
    send(wire.encodeReveal(session, step, layer, [tokens, hidden], data.subarray(layer * size, (layer + 1) * size)));
    proofs.push(await commitment.proof(await commitment.leaves(data, layers), layer));
  }
  send({ type: "revealed", request, session, layer, proofs });
  state.revealsAnswered++;
}

// --- what the page asks ------------------------------------------------------------------------------------------

// Runs a shard on given inputs in a fresh session and returns every step's outputs: bench/browser.py compares
// them with native ONNX Runtime to measure how far the backends disagree.
async function evaluate({ shard, steps }) {
  const runtime = await runtimeFor(shard);
  const id = `evaluate-${crypto.randomUUID()}`;
  runtime.open(id);
  try {
    const outputs = [];
    for (const input of steps) {
      const data = input.dtype === "int64" ? new BigInt64Array(input.data) : new Float32Array(input.data);
      const started = performance.now();
      const result = await runtime.step(id, data, input.dims);
      outputs.push({ ms: performance.now() - started, dims: result.dims, output: result.output.slice().buffer, layerHidden: result.layerHidden.slice().buffer });
    }
    return outputs;
  } finally {
    runtime.close(id);
  }
}

// Loads a shard (from the cache, or downloaded) as "open_session" would; how long each part took.
async function load({ shard }) {
  const runtime = await runtimeFor(shard);
  await status();
  return runtime.loadTimes;
}

const commands = {
  async init(config) {
    state.config = config;
    state.device = await detectDevice();
    state.ort = await loadOrt();
    post({ type: "device", ...state.device });
    await status();
    await cacheStatus();
  },
  benchmark: ({ shard }) => runBenchmark(shard || state.config.benchmarkShard, true),
  async start({ name, ask }) {
    if (ask !== undefined && ask !== null && !(Number.isInteger(ask) && ask >= 1 && ask <= 1e9)) {
      throw new Error("the ask must be a whole number of base units per layer-token, 1 or more (or empty)");
    }
    state.ask = ask || null;
    if (state.wanted) return;
    state.wanted = true;
    state.name = name || "browser";
    serveForever();
  },
  async stop() {
    state.wanted = false;
    if (state.socket) state.socket.close(1000, "stopped by the user");
  },
  async clearCache() {
    await cache.clear();
    await cacheStatus();
  },
  evaluate,
  load,
};

self.onmessage = async (event) => {
  const { id, command, args } = event.data;
  try {
    const result = await commands[command](args || {});
    post({ type: "reply", id, result });
  } catch (error) {
    post({ type: "reply", id, error: String(error.message || error) });
  }
};
