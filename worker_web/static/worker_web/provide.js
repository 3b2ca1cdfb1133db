// The provider page: it draws what the Web Worker reports and passes on the user's clicks. All heavy work (the
// WebSocket, downloads, hashing, onnxruntime-web) happens in provider-worker.js.
const config = JSON.parse(document.getElementById("provider-config").textContent);
const worker = new Worker(config.workerUrl, { type: "module" });
const $ = (id) => document.getElementById(id);
const pending = new Map();
let nextId = 0;

function call(command, args) {
  const id = ++nextId;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, command, args });
  });
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function say(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function log(text, level = "info") {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  item.className = level;
  $("log").prepend(item);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

// One line on the commitments this tab has sent and the reveals it has answered (docs/protocol.md, "Commitments and
// reveals"), placed after "ms per step" in the panel.
function proofsLine() {
  let line = $("stat-proofs");
  if (!line) {
    const term = document.createElement("dt");
    term.textContent = "Fraud proofs";
    line = document.createElement("dd");
    line.id = "stat-proofs";
    line.title = "Commitments to your per-layer states sent with the steps you served, and reveals of them answered";
    $("stat-ms").after(term, line);
  }
  return line;
}

const views = {
  device(m) {
    $("device-cores").textContent = m.cores;
    $("device-isolated").textContent = m.isolated ? "yes" : "no (WASM runs on one thread)";
    $("device-adapter").textContent = m.adapter;
    $("device-backend").textContent = m.backend === "webgpu" ? "WebGPU" : "WASM (CPU)";
    $("device-threads").textContent = m.threads;
    $("device-memory").textContent = m.memoryBytes ? `${(m.memoryBytes / 2 ** 30).toFixed(1)} GB` : "not told by this browser";
  },
  status(m) {
    $("stat-connection").textContent = m.connection;
    $("stat-backend").textContent = m.backend || "…";
    $("stat-shards").textContent = m.shards.length ? m.shards.join(", ") : "none";
    $("stat-sessions").textContent = m.sessions;
    $("stat-steps").textContent = m.stepsServed;
    $("stat-ms").textContent = m.msPerStep === null ? "—" : m.msPerStep.toFixed(1);
    const proofs = proofsLine();
    proofs.textContent = `${m.commitsSent} commitments sent, ${m.revealsAnswered} reveals answered`;
    Object.assign(proofs.dataset, { commits: String(m.commitsSent), reveals: String(m.revealsAnswered) });
    $("stat-downloads").textContent = m.downloads;
    $("stat-cache-hits").textContent = m.cacheHits;
    $("stat-corrupt").textContent = m.corrupt;
    if (m.benchmark) {
      const own = `${(m.benchmark.ns / 1e6).toFixed(3)} ms per layer-token on ${m.benchmark.shardId}`;
      const measured = m.benchmark.measuredNs ? ` (the server measured ${(m.benchmark.measuredNs / 1e6).toFixed(3)} ms)` : "";
      $("benchmark-result").textContent = own + measured;
    }
    const connected = m.connection.startsWith("connected") || m.connection.startsWith("connecting") || m.connection.includes("retrying");
    $("start").disabled = connected;
    $("stop").disabled = !connected;
  },
  progress(m) {
    $("download").hidden = m.loaded >= m.total;
    $("download-label").textContent = `Downloading ${m.shard}: ${megabytes(m.loaded)} of ${megabytes(m.total)}`;
    $("download-progress").value = m.loaded / m.total;
  },
  cache(m) {
    $("cache-list").textContent = m.shards.length ? m.shards.map((s) => `${s.id} (${megabytes(s.size)})`).join(", ") : "none";
    $("cache-usage").textContent = m.usage ? `${megabytes(m.usage.usage)} of ${megabytes(m.usage.quota)}` : "unknown";
  },
  log(m) {
    log(m.text, m.level);
    if (m.level === "error") say(m.text);
  },
  warning(m) {
    say(m.text);
    log(m.text, "warning");
  },
  reply(m) {
    const waiting = pending.get(m.id);
    pending.delete(m.id);
    if (!waiting) return;
    if (m.error) waiting.reject(new Error(m.error));
    else waiting.resolve(m.result);
  },
};

worker.onmessage = (event) => views[event.data.type](event.data);
worker.onerror = (event) => say(
  event.message
    ? `The provider worker failed: ${event.message}`
    // No message: the script was refused, typically because it came without the isolation headers (Django's
    // `runserver` serves static files itself unless given --nostatic).
    : "The provider worker could not start: its script was refused (served without Cross-Origin-Embedder-Policy?)",
);

async function guarded(action) {
  say("");
  try {
    return await action();
  } catch (error) {
    say(error.message);
    throw error;
  }
}

$("benchmark").onclick = () => guarded(async () => {
  $("benchmark").disabled = true;
  $("benchmark-result").textContent = "running…";
  try {
    await call("benchmark");
  } finally {
    $("benchmark").disabled = false;
  }
});
$("start").onclick = () => guarded(() => {
  const raw = $("ask").value.trim();
  return call("start", { name: $("name").value.trim(), ask: raw === "" ? null : Number(raw) });
});
$("stop").onclick = () => guarded(() => call("stop"));
$("clear-cache").onclick = () => guarded(async () => {
  await call("clearCache");
  log("cache cleared");
});

// The console of the account's agents (GET /api/provider/console/, the selector the page was rendered from): figures
// as the server sends them, refreshed along with the earnings. The chart module is loaded apart, so that a chart that
// cannot load never stops the tab itself.
let earningsChart = null;
import("../market/charts.js").then(({ timeChart }) => {
  earningsChart = timeChart($("chart-earnings"), {
    series: [{ label: "earned", unit: " units" }], yLabel: "base units per day", bars: true, height: 180,
  });
  const first = JSON.parse($("console-data").textContent);
  drawEarnings(first.series, first.earned_in_series);
}).catch((error) => log(`the earnings chart could not load: ${error.message}`, "warning"));

function drawEarnings(series, earned) {
  $("chart-earnings-empty").hidden = earned;
  if (earningsChart) earningsChart.setData(series.map((p) => p.day), [series.map((p) => p.amount)]);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showConsole(c) {
  const shown = (n) => (n === null ? "—" : String(n));
  for (const [id, value] of [["console-pending", c.pending], ["console-released", c.earnings], ["console-stake", c.stake],
    ["console-unbonding", c.unbonding], ["console-audits-passed", c.audits_passed],
    ["console-audits-failed", c.audits_failed], ["console-reliability", c.reliability_permille]]) {
    $(id).textContent = shown(value);
  }
  const rows = c.capacity.map((a) => {
    const row = document.createElement("tr");
    row.dataset.providerId = String(a.id);
    const online = cell(a.online ? "online" : "offline", a.online ? "ok" : "");
    row.append(cell(a.barred ? `${a.name} (barred)` : a.name), cell(a.backend), cell(String(a.slots), "num"),
      cell(String(a.busy_slots), "num"), cell(shown(a.speed_ns_per_layer_token), "num"), cell(shown(a.ask), "num"),
      cell(String(a.reliability_permille), "num"), online);
    return row;
  });
  if (rows.length) $("console-capacity").tBodies[0].replaceChildren(...rows);
  drawEarnings(c.series, c.earned_in_series);
}

async function refreshConsole() {
  try {
    const response = await fetch(config.consoleUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.ok) showConsole(await response.json());
  } catch {
    // Offline for a moment: the last figures stay until the next try.
  }
}

// Earnings come from the market's ledger (GET /api/provider/earnings/, signed in by the session), never from
// the page's own counting: what settled jobs paid this account, pending during the challenge window, then released.
async function refreshEarnings() {
  try {
    const response = await fetch(config.earningsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const { pending, earnings } = await response.json();
    const total = pending + earnings;
    const units = (n) => n.toLocaleString("en");
    $("stat-earned").textContent = total === 0
      ? "none yet"
      : `${units(total)} base units (${units(pending)} pending, ${units(earnings)} released)`;
    $("stat-earned").dataset.total = String(total);
  } catch {
    // Offline for a moment: the last figure stays until the next try.
  }
  refreshConsole();
}
refreshEarnings();
setInterval(refreshEarnings, 5000);

// The stake and pending chain operations, as the market's API shows them (GET /api/account/chain/).
function stakeText(c) {
  const units = (n) => n.toLocaleString("en");
  if (!c.enabled) return "this market runs without a chain: no stake needed";
  if (!c.address) return `no wallet yet (minimum stake ${units(c.min_stake)} base units)`;
  let text = `${units(c.stake)} base units staked (minimum ${units(c.min_stake)})`;
  if (c.unbonding) text += `, ${units(c.unbonding)} unbonding until ${new Date(c.unbond_release_at).toLocaleString()}`;
  if (c.slashed) text += `, ${units(c.slashed)} slashed`;
  if (!c.stake_fresh) return `${text}: could not be read from the chain lately, not placed`;
  return `${text}: ${c.can_take_work ? "can take work" : "below the minimum, not placed"}`;
}
async function refreshChain() {
  try {
    const response = await fetch(config.chainUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const c = await response.json();
    $("stat-stake").textContent = stakeText(c);
    $("stat-chain-ops").textContent = c.pending_ops.length === 0
      ? "none pending"
      : c.pending_ops.map((op) => `${op.kind} ${op.amount.toLocaleString("en")} ${op.state}` +
          (op.last_error ? ` (${op.last_error})` : "")).join("; ");
  } catch {
    // Offline for a moment: the last figure stays until the next try.
  }
}
refreshChain();
setInterval(refreshChain, 5000);

// Audits and verdicts of this account's providers (GET /api/provider/audits/): checks passed and failed, and the
// latest dispute's verdict with the step, hop and layer it names.
function auditsText({ providers, disputes }) {
  const passed = providers.reduce((n, p) => n + p.audits_passed, 0);
  const failed = providers.reduce((n, p) => n + p.audits_failed, 0);
  let text = `${passed} passed, ${failed} failed`;
  const barred = providers.filter((p) => p.barred).map((p) => p.name);
  if (barred.length) text += `; barred: ${barred.join(", ")}`;
  const last = disputes[0];
  if (last) {
    const where = last.step === null ? "" : ` (step ${last.step}, hop ${last.hop}${last.layer === null ? "" : `, layer ${last.layer}`})`;
    text += `; latest: ${last.kind} of job ${last.job}: ${last.state.replace("_", " ")}${where}`;
  }
  return text;
}
async function refreshAudits() {
  try {
    const response = await fetch(config.auditsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    $("stat-audits").textContent = auditsText(await response.json());
  } catch {
    // Offline for a moment: the last figure stays until the next try.
  }
}
refreshAudits();
setInterval(refreshAudits, 5000);

// For bench/browser.py and the tests: the same worker, reached from outside the page.
window.providerTab = { call, ready: null };
window.providerTab.ready = guarded(() => call("init", config)).then(() => {
  $("benchmark").disabled = !config.benchmarkShard;
  $("start").disabled = false;
  document.body.dataset.ready = "true";
});
