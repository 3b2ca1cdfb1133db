// The binary tensor frame of docs/protocol.md (inference/wire.py in Python): a 36-byte little-endian header, the
// dimensions (uint32 each), then the raw tensor in C order.
export const HEADER_BYTES = 36;
export const STEP_INPUT = 1;
export const STEP_OUTPUT = 2;
export const REVEAL = 3; // one layer's committed states for one step; the shard field holds the layer's index
export const FLOAT16 = 1;
export const FLOAT32 = 2;
export const INT64 = 3;
const MAGIC = [0x43, 0x4d, 0x54, 0x46]; // "CMTF"
const ITEM_BYTES = { [FLOAT16]: 2, [FLOAT32]: 4, [INT64]: 8 };

export class BadFrame extends Error {
  code = "bad_tensor_frame";
}

// Parse and check a frame. `data` is the tensor as a typed array of its own dtype, copied out of the message so
// it is aligned (an int64 payload starts at byte 44, which BigInt64Array cannot view in place).
export function decode(buffer) {
  if (buffer.byteLength < HEADER_BYTES) throw new BadFrame(`frame of ${buffer.byteLength} bytes is shorter than its header`);
  const view = new DataView(buffer);
  const bytes = new Uint8Array(buffer);
  if (MAGIC.some((b, i) => bytes[i] !== b)) throw new BadFrame("not a tensor frame (bad magic)");
  if (bytes[4] !== 1) throw new BadFrame(`protocol version ${bytes[4]} is not supported`);
  const kind = bytes[5], dtype = bytes[6], ndim = bytes[7];
  if (!ITEM_BYTES[dtype]) throw new BadFrame(`unknown dtype code ${dtype}`);
  if (ndim < 1 || ndim > 4) throw new BadFrame(`a frame carries 1 to 4 dimensions, not ${ndim}`);
  const dims = [];
  for (let i = 0; i < ndim; i++) dims.push(view.getUint32(HEADER_BYTES + 4 * i, true));
  const start = HEADER_BYTES + 4 * ndim;
  const length = view.getUint32(32, true);
  const expected = dims.reduce((a, b) => a * b, 1) * ITEM_BYTES[dtype];
  if (length !== expected || buffer.byteLength - start !== expected) {
    throw new BadFrame(`payload is ${buffer.byteLength - start} bytes but shape [${dims}] needs ${expected}`);
  }
  const payload = buffer.slice(start, start + length);
  const data = dtype === INT64 ? new BigInt64Array(payload) : dtype === FLOAT32 ? new Float32Array(payload) : halfToFloat32(payload);
  return { kind, dtype, dims, step: view.getUint32(24, true), shard: view.getUint16(28, true), session: sessionId(bytes), header: bytes.slice(8, 32), data };
}

// An output frame answering `input` (same session, step and shard, its header copied): hidden states go out as
// float16, logits as float32 (docs/protocol.md, "What each hop receives and returns").
export function encodeOutput(input, dims, values, dtype) {
  return encodeFrame(STEP_OUTPUT, input.header, dims, values, dtype);
}

// A frame of message type `kind`; `header` holds bytes 8-32 (session, step, shard, reserved).
function encodeFrame(kind, header, dims, values, dtype) {
  const payload = dtype === FLOAT16 ? float32ToHalf(values) : new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const start = HEADER_BYTES + 4 * dims.length;
  const frame = new Uint8Array(start + payload.byteLength);
  const view = new DataView(frame.buffer);
  frame.set(MAGIC, 0);
  frame.set([1, kind, dtype, dims.length], 4);
  frame.set(header, 8);
  view.setUint32(32, payload.byteLength, true);
  dims.forEach((d, i) => view.setUint32(HEADER_BYTES + 4 * i, d, true));
  frame.set(payload, start);
  return frame.buffer;
}

// A revealed layer's states for one step (message type REVEAL): float32 [S, H] under the session and step they were
// committed with, the shard field holding the layer's index in the shard (docs/protocol.md, "Commitments and
// reveals").
export function encodeReveal(session, step, layer, dims, states) {
  const header = new Uint8Array(24); // session (16 bytes), step, shard, reserved
  const view = new DataView(header.buffer);
  header.set(sessionBytes(session), 0);
  view.setUint32(16, step, true);
  view.setUint16(20, layer, true);
  return encodeFrame(REVEAL, header, dims, states, FLOAT32);
}

// A greedy job's head answer (head_output "argmax"): int64 [1, 1], the index of the largest logit, the first one
// on a tie, as numpy's argmax (which the server would otherwise apply to the logits).
export function encodeArgmax(input, logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return encodeOutput(input, [1, 1], BigInt64Array.of(BigInt(best)), INT64);
}

function sessionBytes(session) {
  const hex = session.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new BadFrame(`${JSON.stringify(session)} is not a session id`);
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

function sessionId(bytes) {
  const hex = Array.from(bytes.subarray(8, 24), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Float16Array (Chromium 135+) rounds to nearest even, as numpy's astype(float16) does; the fallbacks do the same.
export function halfToFloat32(buffer) {
  if (typeof Float16Array === "function") return Float32Array.from(new Float16Array(buffer));
  const halves = new Uint16Array(buffer);
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = halfBitsToNumber(halves[i]);
  return out;
}

export function float32ToHalf(values) {
  if (typeof Float16Array === "function") return new Uint8Array(new Float16Array(values).buffer);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = numberToHalfBits(values[i]);
  return new Uint8Array(out.buffer);
}

function halfBitsToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function numberToHalfBits(value) {
  f32[0] = value;
  const x = u32[0], sign = (x >>> 16) & 0x8000, exp = (x >>> 23) & 0xff, mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) { // subnormal half: shift the full mantissa, round to nearest even
    if (e < -10) return sign;
    const m = mant | 0x800000, shift = 14 - e;
    let half = m >> shift;
    const rest = m & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++; // a carry into the exponent is still right
  return sign | half;
}
