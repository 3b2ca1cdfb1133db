// One shard in onnxruntime-web with a KV cache per session: the same graph contract as inference/runtime.py
// (inputs input_ids or hidden_in, positions, past_key.i / past_value.i; outputs hidden_out or logits,
// layer_hidden float32 [n_layers, S, hidden], present_key.i / present_value.i). Each step's present tensors become
// the next step's past.

export class BadInput extends Error {
  code = "bad_tensor";
}

export class ShardRuntime {
  // On WebGPU the present keys/values stay on the GPU and come back as the next step's past (kvOnGpu): read back
  // to the CPU, two tensors per layer and step cost more than the layer's arithmetic (bench/webgpu.py measured a
  // decode step on an H200 at 5 to 9 ms per layer that way). Only the outputs the protocol needs are read back.
  static async load(ort, bytes, shard, backend, { kvOnGpu = true } = {}) {
    const gpuKv = backend === "webgpu" && kvOnGpu;
    const options = { executionProviders: backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"], graphOptimizationLevel: "all" };
    if (gpuKv) {
      const names = [];
      for (let layer = shard.first_layer; layer < shard.end_layer; layer++) names.push(`present_key.${layer}`, `present_value.${layer}`);
      options.preferredOutputLocation = Object.fromEntries(names.map((name) => [name, "gpu-buffer"]));
    }
    const session = await ort.InferenceSession.create(new Uint8Array(bytes), options);
    return new ShardRuntime(ort, session, shard, gpuKv);
  }

  constructor(ort, session, shard, gpuKv = false) {
    this.ort = ort;
    this.session = session;
    this.shard = shard;
    this.gpuKv = gpuKv;
    this.layers = shard.end_layer - shard.first_layer;
    this.mainOutput = shard.has_head ? "logits" : "hidden_out";
    this.pastNames = session.inputNames.filter((name) => name.startsWith("past_"));
    this.presentNames = this.pastNames.map((name) => name.replace("past_", "present_"));
    const past = session.inputMetadata.find((m) => m.name === this.pastNames[0]);
    this.kvHeads = past.shape[1]; // [1, kv_heads, past, head_dim]
    this.headDim = past.shape[3];
    this.sessions = new Map();
  }

  open(id) {
    const empty = () => new this.ort.Tensor("float32", new Float32Array(0), [1, this.kvHeads, 0, this.headDim]);
    this.sessions.set(id, { past: this.pastNames.map(empty), position: 0 });
  }

  close(id) {
    const state = this.sessions.get(id);
    if (state) this.release(state.past);
    this.sessions.delete(id);
  }

  // GPU buffers are not garbage-collected: a cache that is replaced or closed gives its buffers back.
  release(tensors) {
    if (this.gpuKv) for (const tensor of tensors) if (tensor.location === "gpu-buffer") tensor.dispose();
  }

  // Run new tokens (a first shard: int64 ids [1, S]) or hidden states (float32 [1, S, hidden]).
  async step(id, data, dims) {
    const state = this.sessions.get(id);
    if (!state) throw new Error(`session ${id} is not open on ${this.shard.id}`);
    const seq = this.checkInput(data, dims);
    const positions = new BigInt64Array(seq);
    for (let i = 0; i < seq; i++) positions[i] = BigInt(state.position + i);
    const feeds = { positions: new this.ort.Tensor("int64", positions, [seq]) };
    feeds[this.shard.has_embedding ? "input_ids" : "hidden_in"] = this.shard.has_embedding
      ? new this.ort.Tensor("int64", data, [1, seq])
      : new this.ort.Tensor("float32", data, [1, seq, this.shard.hidden]);
    this.pastNames.forEach((name, i) => { feeds[name] = state.past[i]; });
    const results = await this.session.run(feeds);
    const previous = state.past;
    state.past = this.presentNames.map((name) => results[name]);
    this.release(previous);
    state.position += seq;
    const output = results[this.mainOutput];
    return { output: output.data, dims: output.dims.slice(), ...this.layerHidden(results.layer_hidden, seq) };
  }

  // Every layer's output at every position of the step: float32 [layers, S, hidden], flat in C order (what the
  // step's commitment covers, commitment.js).
  layerHidden(tensor, seq) {
    const dims = tensor.dims.slice();
    if (dims.length !== 3 || dims[0] !== this.layers || dims[1] !== seq || dims[2] !== this.shard.hidden) {
      throw new Error(`${this.shard.id} returned layer_hidden [${dims}], not [${this.layers}, ${seq}, ${this.shard.hidden}]`);
    }
    return { layerHidden: tensor.data, layerHiddenDims: dims };
  }

  checkInput(data, dims) {
    if (this.shard.has_embedding) {
      if (!(data instanceof BigInt64Array) || dims.length !== 2 || dims[0] !== 1 || dims[1] < 1) {
        throw new BadInput(`${this.shard.id} takes int64 token ids [1, S>=1], got [${dims}]`);
      }
      for (const id of data) if (id < 0n || id >= BigInt(this.shard.vocab)) throw new BadInput(`token id ${id} is outside the vocabulary`);
      return dims[1];
    }
    if (!(data instanceof Float32Array) || dims.length !== 3 || dims[0] !== 1 || dims[1] < 1 || dims[2] !== this.shard.hidden) {
      throw new BadInput(`${this.shard.id} takes hidden states [1, S>=1, ${this.shard.hidden}], got [${dims}]`);
    }
    for (const v of data) if (!Number.isFinite(v)) throw new BadInput("hidden states must be finite numbers");
    return dims[1];
  }
}

// Median ns per layer per token of single-token decode steps after a prompt: what agent.py's time_decode measures,
// on the same kind of inputs (random ids for a first shard, random hidden states otherwise).
export async function timeDecode(runtime, { prompt = 32, steps = 24 } = {}) {
  let seed = 12345;
  const uniform = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const inputs = (n) => runtime.shard.has_embedding
    ? [BigInt64Array.from({ length: n }, () => BigInt(Math.floor(uniform() * runtime.shard.vocab))), [1, n]]
    : [Float32Array.from({ length: n * runtime.shard.hidden }, () => uniform() + uniform() + uniform() - 1.5), [1, n, runtime.shard.hidden]];
  const id = `benchmark-${crypto.randomUUID()}`;
  runtime.open(id);
  try {
    await runtime.step(id, ...inputs(prompt));
    const times = [];
    for (let i = 0; i < steps; i++) {
      const [data, dims] = inputs(1);
      const started = performance.now();
      await runtime.step(id, data, dims);
      times.push(performance.now() - started);
    }
    times.sort((a, b) => a - b);
    const median = steps % 2 ? times[(steps - 1) / 2] : (times[steps / 2 - 1] + times[steps / 2]) / 2;
    return Math.max(1, Math.round((median * 1e6) / runtime.layers));
  } finally {
    runtime.close(id);
  }
}
