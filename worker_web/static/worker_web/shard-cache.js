// Shards kept in IndexedDB under their SHA-256, hashed with crypto.subtle before every use: a copy that does not
// match (a corrupt disk, a tampered profile) is discarded and downloaded again. Two stores: `files` holds the
// bytes, `meta` what the page lists (id, size, when), so listing the cache never reads hundreds of megabytes.
const DB_NAME = "compute-market-shards";

export class ShardIntegrityError extends Error {
  code = "shard_integrity";
}

export class QuotaError extends Error {
  code = "shard_failed";
}

export async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new DOMException("transaction aborted", "AbortError"));
  });
}

function openDb() {
  const req = indexedDB.open(DB_NAME, 1);
  req.onupgradeneeded = () => {
    req.result.createObjectStore("files");
    req.result.createObjectStore("meta", { keyPath: "sha256" });
  };
  return request(req);
}

function isQuotaError(error) {
  return error && (error.name === "QuotaExceededError" || /quota|space/i.test(String(error.message)));
}

export class ShardCache {
  constructor(onProgress) {
    this.onProgress = onProgress; // (shard, loadedBytes, totalBytes) while a shard downloads
    this.db = openDb();
    this.downloads = 0; // network downloads this visit
    this.hits = 0; // shards served from the cache after their hash checked out
    this.corrupt = 0; // cached copies that failed the check and were discarded
  }

  // The shard's bytes, checked against its SHA-256: from the cache, else downloaded (and then kept). Returns
  // {bytes, warning}: `warning` says the copy could not be kept (full disk or quota); the bytes still serve.
  async obtain(shard) {
    const cached = await this.read(shard.sha256);
    if (cached) {
      if ((await sha256Hex(cached)) === shard.sha256) {
        this.hits++;
        return { bytes: cached, source: "cache" };
      }
      this.corrupt++;
      await this.remove(shard.sha256);
    }
    const bytes = await this.download(shard);
    const actual = await sha256Hex(bytes);
    if (actual !== shard.sha256) {
      throw new ShardIntegrityError(`downloaded ${shard.id} hashes to ${actual.slice(0, 16)}…, not its SHA-256; discarded`);
    }
    const warning = await this.store(shard, bytes);
    return { bytes, source: cached ? "re-downloaded (the cached copy was corrupt)" : "download", warning };
  }

  async download(shard) {
    // no-store: the copy in IndexedDB is the cache. The HTTP cache would keep a second copy of every shard, and
    // would hand back the same bytes when a corrupt copy has to be fetched again.
    const response = await fetch(shard.url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`downloading ${shard.id} failed: HTTP ${response.status}`);
    const total = Number(response.headers.get("Content-Length")) || shard.size;
    const into = new Uint8Array(total);
    const reader = response.body.getReader();
    let loaded = 0;
    for (;;) {
      const { done: finished, value } = await reader.read();
      if (finished) break;
      if (loaded + value.byteLength > into.byteLength) throw new ShardIntegrityError(`${shard.id} is longer than announced`);
      into.set(value, loaded);
      loaded += value.byteLength;
      this.onProgress(shard, loaded, total);
    }
    this.downloads++;
    return into.buffer.slice(0, loaded);
  }

  async store(shard, bytes) {
    try {
      const tx = (await this.db).transaction(["files", "meta"], "readwrite");
      tx.objectStore("files").put(bytes, shard.sha256);
      tx.objectStore("meta").put({ sha256: shard.sha256, id: shard.id, size: bytes.byteLength, stored: Date.now() });
      await done(tx);
      return null;
    } catch (error) {
      if (!isQuotaError(error)) throw error;
      const mb = (bytes.byteLength / 1e6).toFixed(0);
      return `Not enough storage to keep ${shard.id} (${mb} MB) in this browser: it is served from memory this time ` +
        "and will be downloaded again next visit. Free disk space or clear the cache.";
    }
  }

  async read(sha256) {
    const tx = (await this.db).transaction("files", "readonly");
    return (await request(tx.objectStore("files").get(sha256))) || null;
  }

  async remove(sha256) {
    const tx = (await this.db).transaction(["files", "meta"], "readwrite");
    tx.objectStore("files").delete(sha256);
    tx.objectStore("meta").delete(sha256);
    await done(tx);
  }

  async list() {
    const tx = (await this.db).transaction("meta", "readonly");
    return request(tx.objectStore("meta").getAll());
  }

  async clear() {
    const tx = (await this.db).transaction(["files", "meta"], "readwrite");
    tx.objectStore("files").clear();
    tx.objectStore("meta").clear();
    await done(tx);
  }

  async usage() {
    return navigator.storage && navigator.storage.estimate ? navigator.storage.estimate() : null;
  }
}
