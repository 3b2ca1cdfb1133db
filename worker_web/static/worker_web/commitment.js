// Commitments to a step's per-layer hidden states and the Merkle proofs that open them one layer at a time: the
// same bytes as inference/commitment.py, which the server checks them with. Leaf l = SHA-256(0x00 || layer l's
// float32 [S, H], C order, little-endian); node = SHA-256(0x01 || left || right); a node without a sibling is carried
// up unchanged; the commitment is the root in lowercase hex. A proof is [[side, sibling hex], ...] from the leaf up,
// side "L" when the sibling is the left child.
const LEAF = 0x00, NODE = 0x01;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// The leaf of one layer's states for one step (a Float32Array of S * H values).
export async function leaf(states) {
  const message = new Uint8Array(1 + states.byteLength);
  message[0] = LEAF;
  if (LITTLE_ENDIAN) {
    message.set(new Uint8Array(states.buffer, states.byteOffset, states.byteLength), 1);
  } else { // every browser we know is little-endian; the hash is over little-endian bytes all the same
    const view = new DataView(message.buffer, 1);
    states.forEach((v, i) => view.setFloat32(4 * i, v, true));
  }
  return sha256(message);
}

// One leaf per layer of a step's layer_hidden: a Float32Array [layers, S, H], flat.
export function leaves(layerHidden, layers) {
  if (!Number.isInteger(layers) || layers < 1 || layerHidden.length % layers) {
    throw new Error(`${layerHidden.length} values cannot be ${layers} layers of equal size`);
  }
  const size = layerHidden.length / layers;
  return Promise.all(Array.from({ length: layers }, (_, i) => leaf(layerHidden.subarray(i * size, (i + 1) * size))));
}

function parent(left, right) {
  const message = new Uint8Array(65);
  message[0] = NODE;
  message.set(left, 1);
  message.set(right, 33);
  return sha256(message);
}

// Every level of the tree, the leaves first and the root last (as _levels in inference/commitment.py).
async function levels(nodes) {
  if (!nodes.length) throw new Error("a commitment needs at least one layer");
  const all = [nodes];
  while (all[all.length - 1].length > 1) {
    const below = all[all.length - 1];
    const pairs = [];
    for (let i = 0; i + 1 < below.length; i += 2) pairs.push(parent(below[i], below[i + 1]));
    const above = await Promise.all(pairs);
    if (below.length % 2) above.push(below[below.length - 1]); // carried up unchanged
    all.push(above);
  }
  return all;
}

export async function root(nodes) {
  const all = await levels(nodes);
  return all[all.length - 1][0];
}

// The commitment (hex) of a step's layer_hidden [layers, S, H].
export async function commit(layerHidden, layers) {
  return toHex(await root(await leaves(layerHidden, layers)));
}

// The siblings from leaf `index` up to the root: [["L" | "R", hex], ...].
export async function proof(nodes, index) {
  const path = [];
  const all = await levels(nodes);
  for (const level of all.slice(0, -1)) {
    const sibling = index ^ 1;
    if (sibling < level.length) path.push([sibling < index ? "L" : "R", toHex(level[sibling])]);
    index = Math.floor(index / 2);
  }
  return path;
}
