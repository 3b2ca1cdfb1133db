// The tab's store of the per-layer hidden states it committed to, kept to answer reveals (worker_web/agent/state_store.py
// is the headless agent's). States of an open session stay in memory; when the session closes they go to IndexedDB,
// one record per (session, step) so that a reveal reads only the steps it asks for, and the memory is freed. Records
// older than the keep time (the welcome's `states_keep_seconds`) are deleted by `prune`.
//
// Database "compute-market-states", store "steps", key [session, step]; a record is
// {session, step, layers, tokens, hidden, data: ArrayBuffer of float32 [layers, tokens, hidden], saved: ms since epoch},
// with an index on `saved` for pruning.
import { done, request } from "./shard-cache.js"; // IndexedDB requests and transactions as promises

const DB_NAME = "compute-market-states";

function openDb() {
  const req = indexedDB.open(DB_NAME, 1);
  req.onupgradeneeded = () => {
    const steps = req.result.createObjectStore("steps", { keyPath: ["session", "step"] });
    steps.createIndex("saved", "saved");
  };
  return request(req);
}

export class StateStore {
  constructor({ keepSeconds = 3600 } = {}) {
    this.keepSeconds = keepSeconds;
    this.db = null; // opened on first use (the first prune, at the welcome)
    this.open = new Map(); // session -> Map(step -> {layers, tokens, hidden, data: Float32Array})
  }

  database() {
    this.db = this.db || openDb();
    return this.db;
  }

  // Keep a step's layer_hidden (Float32Array [layers, tokens, hidden]); a step served again replaces its states.
  add(session, step, data, [layers, tokens, hidden]) {
    if (!this.open.has(session)) this.open.set(session, new Map());
    this.open.get(session).set(step, { layers, tokens, hidden, data });
  }

  // Write a closed session's states to IndexedDB and free the memory (they are freed even when the write fails).
  async close(session, now = Date.now()) {
    const steps = this.open.get(session);
    this.open.delete(session);
    if (!steps || !steps.size) return;
    const tx = (await this.database()).transaction("steps", "readwrite");
    const store = tx.objectStore("steps");
    for (const [step, held] of steps) {
      const data = held.data.buffer.byteLength === held.data.byteLength ? held.data.buffer : held.data.slice().buffer;
      store.put({ session, step, layers: held.layers, tokens: held.tokens, hidden: held.hidden, data, saved: now });
    }
    await done(tx); // one transaction: a session is kept whole or not at all
  }

  // Each step's states for steps first..last of a session, from memory or IndexedDB: a Map(step -> {layers, tokens,
  // hidden, data: Float32Array}) in step order, or null if any step is missing.
  async layer(session, first, last) {
    const held = this.open.get(session);
    if (held) {
      const steps = new Map();
      for (let step = first; step <= last; step++) { // stops at the first missing step, however wide the range
        if (!held.has(step)) return null;
        steps.set(step, held.get(step));
      }
      return steps;
    }
    const tx = (await this.database()).transaction("steps", "readonly");
    const records = await request(tx.objectStore("steps").getAll(IDBKeyRange.bound([session, first], [session, last])));
    if (records.length !== last - first + 1) return null;
    return new Map(records.map((r) => [r.step, { layers: r.layers, tokens: r.tokens, hidden: r.hidden, data: new Float32Array(r.data) }]));
  }

  // Delete records saved more than the keep time ago; how many went.
  async prune(now = Date.now()) {
    const tx = (await this.database()).transaction("steps", "readwrite");
    const old = IDBKeyRange.upperBound(now - this.keepSeconds * 1000, true);
    const index = tx.objectStore("steps").index("saved");
    const gone = await request(index.count(old));
    const cursor = index.openKeyCursor(old);
    cursor.onsuccess = () => {
      if (!cursor.result) return;
      tx.objectStore("steps").delete(cursor.result.primaryKey);
      cursor.result.continue();
    };
    await done(tx);
    return gone;
  }

  // Steps held in memory and records kept in IndexedDB (for the tests and the panel).
  async counts() {
    const tx = (await this.database()).transaction("steps", "readonly");
    const stored = await request(tx.objectStore("steps").count());
    return { open: [...this.open.values()].reduce((n, steps) => n + steps.size, 0), stored };
  }
}
