// The benchmark challenge's inputs, derived from the server's seed exactly as inference/challenge.py derives them
// (tests/worker_web/test_challenge_js.py compares the two): murmur3's 32-bit finaliser over (seed, step, element
// index), every product through Math.imul and every result back to uint32, so both sides feed the shard the same
// bits. Hidden states are multiples of 2^-22 in [-2, 2), exact in float32; token ids the hash modulo the vocabulary.

const M1 = 0x85ebca6b, M2 = 0xc2b2ae35, GOLDEN = 0x9e3779b9;

function fmix(h) {
  h ^= h >>> 16;
  h = Math.imul(h, M1);
  h ^= h >>> 13;
  h = Math.imul(h, M2);
  h ^= h >>> 16;
  return h >>> 0;
}

// One uint32 per (seed, step): the seed's low and high words mixed, then the step. The seed is below 2^53, so a
// JavaScript number holds it exactly; `>>> 0` takes its low 32 bits.
function stepKey(seed, step) {
  const lo = seed >>> 0, hi = Math.floor(seed / 4294967296) >>> 0;
  const key = fmix(lo ^ fmix(hi ^ GOLDEN));
  return fmix(key ^ Math.imul(step + 1, M1));
}

export function words(seed, step, count) {
  const key = stepKey(seed, step);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = fmix(key + Math.imul(i, GOLDEN));
  return out;
}

// The input of one step: [data, dims], int64 token ids [1, positions] for a shard with the embedding, float32 hidden
// states [1, positions, hidden] otherwise.
export function stepInput(seed, step, { positions, hidden, vocab, hasEmbedding }) {
  if (hasEmbedding) {
    return [BigInt64Array.from(words(seed, step, positions), (w) => BigInt(w % vocab)), [1, positions]];
  }
  const data = Float32Array.from(words(seed, step, positions * hidden), (w) => ((w >>> 8) - 8388608) / 4194304);
  return [data, [1, positions, hidden]];
}

// Run a challenge {seed, prompt, steps} in a fresh session of the shard: the prompt, then one position per decode
// step. The answer is the last step's output (float32, flat); nsPerLayerToken is the tab's own figure (the median
// decode step per layer), which the server keeps as its claim and never prices.
export async function runChallenge(runtime, { seed, prompt, steps }) {
  const shape = { hidden: runtime.shard.hidden, vocab: runtime.shard.vocab, hasEmbedding: Boolean(runtime.shard.has_embedding) };
  const id = `challenge-${crypto.randomUUID()}`;
  runtime.open(id);
  try {
    let result = await runtime.step(id, ...stepInput(seed, 0, { positions: prompt, ...shape }));
    const times = [];
    for (let step = 1; step <= steps; step++) {
      const [data, dims] = stepInput(seed, step, { positions: 1, ...shape });
      const started = performance.now();
      result = await runtime.step(id, data, dims);
      times.push(performance.now() - started);
    }
    times.sort((a, b) => a - b);
    const median = times.length % 2 ? times[(times.length - 1) / 2] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
    return { answer: Float32Array.from(result.output), nsPerLayerToken: Math.max(1, Math.round((median * 1e6) / runtime.layers)) };
  } finally {
    runtime.close(id);
  }
}

// Base64 of float32 values, little-endian (the byte order of every browser this runs in), as the server reads it.
export function encodeAnswer(values) {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  let text = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(start, start + 0x8000));
  }
  return btoa(text);
}
