// The market dashboard (/): draws the server's figures (market/overview.py, in #market-data and GET /api/market/)
// and follows /ws/market/, where each auction round arrives with the fresh figures. Nothing is computed here but
// the layout: every number comes from the server as it is shown.
import { timeChart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const KEEP = 50; // rounds kept in the table and the charts (market.overview.ROUNDS_SHOWN)
const BACKOFF_MS = [1000, 2000, 5000, 10000, 30000];
const REFETCH_AT_MOST_EVERY_MS = 60000; // after a missed round: at most one fetch a minute, however many rounds

const charts = {
  prices: timeChart($("chart-prices"), {
    series: [{ label: "median" }, { label: "lowest" }, { label: "highest" }],
    yLabel: "base units / layer-token",
    keep: KEEP,
  }),
  welfare: timeChart($("chart-welfare"), { series: [{ label: "welfare" }], yLabel: "base units", keep: KEEP, bars: true }),
  gap: timeChart($("chart-gap"), { series: [{ label: "gap", unit: " %" }], yLabel: "percent", keep: KEEP }),
};

let lastRound = 0; // the newest round shown
let lastFetch = 0;

const seconds = (iso) => Date.parse(iso) / 1000;
const text = (value) => (value === null || value === undefined ? "—" : String(value));

function setText(id, value) {
  $(id).textContent = text(value);
}

function showFigures(f) {
  setText("providers-online", f.providers.online);
  setText("providers-webgpu", f.providers.by_backend.webgpu);
  setText("providers-wasm", f.providers.by_backend.wasm);
  setText("providers-native", f.providers.by_backend.native);
  setText("free-slots", f.providers.free_slots);
  setText("slots-total", f.providers.slots);
  setText("book-bids", f.book.bids);
  setText("book-max-price", f.book.max_price_total);
  setText("tokens-per-second", f.tokens.per_second.toFixed(2));
  setText("tokens-served", f.tokens.tokens);
  setText("tokens-jobs", f.tokens.jobs);
  setText("audits", f.verification.total);
  setText("audits-audits", f.verification.audits.total);
  setText("audits-challenges", f.verification.challenges.total);
  setText("audits-open", f.verification.open);
  setText("verdicts", f.verification.verdicts);
  setText("verdicts-verified", f.verification.verified);
  setText("verdicts-fraud", f.verification.fraud);
}

function cell(value, numeric = true) {
  const td = document.createElement("td");
  if (numeric) td.className = "num";
  td.textContent = value;
  return td;
}

// One row of table#rounds, as the template renders it.
function roundRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.roundId = String(r.id);
  const time = document.createElement("time");
  time.dateTime = r.created_at;
  time.textContent = new Date(r.created_at).toISOString().slice(11, 19);
  const when = document.createElement("td");
  when.append(time);
  const range = r.price.low === null ? "—" : `${r.price.low}–${r.price.high}`;
  tr.append(
    cell(String(r.id), false),
    when,
    cell(`${r.solver} (${r.status})`, false),
    cell(text(r.n_jobs)),
    cell(text(r.n_placed)),
    cell(text(r.n_providers)),
    cell(text(r.price.median)),
    cell(range),
    cell(text(r.welfare)),
    cell(r.gap_percent === null ? "—" : `${r.gap_percent.toFixed(2)} %`),
    cell(`${Number(r.wall_time_s).toFixed(3)} s`),
  );
  return tr;
}

function showRounds(rounds) {
  // rounds: newest first, as the server lists them; the charts run oldest to newest.
  const body = $("rounds").tBodies[0];
  if (rounds.length) body.replaceChildren(...rounds.map(roundRow));
  const ordered = [...rounds].reverse();
  const xs = ordered.map((r) => seconds(r.created_at));
  charts.prices.setData(xs, [ordered.map((r) => r.price.median), ordered.map((r) => r.price.low), ordered.map((r) => r.price.high)]);
  charts.welfare.setData(xs, [ordered.map((r) => r.welfare)]);
  charts.gap.setData(xs, [ordered.map((r) => r.gap_percent)]);
  lastRound = rounds.length ? rounds[0].id : lastRound;
}

function addRound(r) {
  const table = $("rounds");
  if (table.querySelector(`tr[data-round-id="${r.id}"]`)) return;
  const body = table.tBodies[0];
  body.querySelector("tr.empty")?.remove();
  body.prepend(roundRow(r));
  while (body.rows.length > KEEP) body.lastElementChild.remove();
  const x = seconds(r.created_at);
  charts.prices.push(x, [r.price.median, r.price.low, r.price.high]);
  charts.welfare.push(x, [r.welfare]);
  charts.gap.push(x, [r.gap_percent]);
  lastRound = Math.max(lastRound, r.id);
}

function showError(message) {
  const alert = $("dashboard-error");
  alert.textContent = message;
  alert.hidden = !message;
}

async function refetch() {
  lastFetch = Date.now();
  try {
    const response = await fetch("/api/market/", { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || `the market's figures could not be read (${response.status})`);
    showFigures(body);
    showRounds(body.rounds);
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

function onMessage(message) {
  if (message.type === "round") {
    const missed = lastRound && message.round.id > lastRound + 1; // a round went by unseen (before the socket opened)
    if (missed && Date.now() - lastFetch > REFETCH_AT_MOST_EVERY_MS) {
      refetch();
      return;
    }
    if (message.round.id > lastRound) addRound(message.round);
  }
  if (message.figures) showFigures(message.figures);
}

function follow() {
  let attempt = 0;
  let dropped = false;
  const status = $("live-status");
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/market/`);
    socket.addEventListener("open", () => {
      status.textContent = "live";
      if (dropped) refetch(); // once: what happened while the socket was down
      dropped = false;
      attempt = 0;
      document.body.dataset.ready = "1";
    });
    socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      status.textContent = "reconnecting";
      dropped = true;
      const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
      attempt += 1;
      setTimeout(open, delay * (0.75 + Math.random() / 2)); // jitter: viewers of a restarted server spread out
    });
  };
  open();
}

const initial = JSON.parse($("market-data").textContent);
showRounds(initial.rounds);
follow();
