// One job's page (/buy/jobs/<id>/): the answer streams in over /ws/jobs/<id>/?follow=verification (snapshot, token,
// bid, done and verification events), the pipeline and the cost are redrawn from the API when the job ends (one
// fetch each on `done`, one more for the cost when a verification event shows it settled: never a loop), and the
// buyer can cancel or challenge. The model's answer and the prompt only ever go into the DOM as text.
import { csrfToken, request } from "./api.js";

const page = JSON.parse(document.getElementById("job-page").textContent);
const $ = (id) => document.getElementById(id);
const FINAL = ["done", "failed", "cancelled", "expired"];

let state = page.job.state;
let costShown = Boolean(page.job.settled_at);
let costAsked = false; // a fetch of the cost answered "not settled yet": the next verification event asks again
let socketOpen = false;
let pipelineAsked = false; // the pipeline is fetched once when the first token shows the job running

function post(url) {
  return request(url, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
}

// An element with attributes and children (strings become text nodes, never HTML).
// "2026-12-03 20:06:34 UTC", as the page's server-rendered times read.
function utc(iso) {
  return new Date(iso).toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  const kept = children.filter((child) => child !== null && child !== undefined);
  node.append(...kept.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

function showError(message) {
  $("job-error").textContent = message;
  $("job-error").hidden = !message;
}

// --- state -------------------------------------------------------------------------------------------------------

function showState(next, { reason = "", error = "", finishReason = "" } = {}) {
  state = next;
  $("job-state").textContent = next;
  $("job-state").className = `state state-${next}`;
  const label = page.states[next] || "";
  $("job-state-note").textContent = label === next ? "" : label;
  $("job-reason").textContent = next === "queued" ? reason : "";
  $("job-reason").hidden = !(next === "queued" && reason);
  const ended = FINAL.includes(next);
  const end = $("job-end");
  end.hidden = !ended;
  if (ended) {
    end.className = next === "done" ? "ok" : "error";
    if (next === "done") {
      const why = { stop: " (the model ended its answer)", length: " (it reached its token limit)" }[finishReason] || "";
      end.textContent = `Finished${why}.`;
    } else {
      end.textContent = error ? `${page.states[next]}: ${error}` : page.states[next];
    }
  }
  $("cancel").disabled = ended;
  const unplaced = document.querySelector("#pipeline .pipeline-empty");
  if (unplaced && ended) unplaced.textContent = "It never ran on providers.";
  if (socketOpen) $("job-live").textContent = ended ? "live: verification updates" : "live";
  $("challenge").disabled = !(next === "done" && costShown);
}

function setText(text, tokens) {
  $("job-text").textContent = text;
  if (tokens !== undefined) $("job-tokens").textContent = `${tokens} tokens`;
}

let tokenCount = page.job.tokens.length;

function addToken(event) {
  $("job-text").append(document.createTextNode(event.text));
  tokenCount = Math.max(tokenCount, event.index + 1);
  $("job-tokens").textContent = `${tokenCount} tokens`;
}

// --- the pipeline ------------------------------------------------------------------------------------------------

// The same drawing as the template's (market/pages/buyer.py pipeline_hops): one box per hop with its placements.
function drawPipeline(job) {
  const medians = (job.timings && job.timings.hop_round_trip_ms_median) || [];
  const hops = new Map();
  for (const entry of job.pipeline) {
    if (!hops.has(entry.hop)) hops.set(entry.hop, []);
    hops.get(entry.hop).push(entry);
  }
  const boxes = [...hops.keys()].sort((a, b) => a - b).map((hop) => {
    const placements = hops.get(hop);
    const shard = String(placements[0].shard || "");
    const median = medians[hop];
    const timing =
      median === null || median === undefined
        ? el("span", { class: "muted" }, "timing when it ends")
        : el("span", { class: "ms" }, median);
    return el(
      "li",
      { class: "hop", "data-hop": hop },
      el("div", { class: "hop-head" }, el("strong", {}, `hop ${hop}`), " ", el("span", { class: "muted" }, `layers ${shard.split(":").pop()}`)),
      ...placements.map((p) => {
        const failed = Boolean(p.ended) && !FINAL.includes(p.ended); // replaced before the job ended
        const until = p.until_step === null || p.until_step === undefined ? "…" : p.until_step;
        return el(
          "div",
          { class: failed ? "placement replaced" : "placement" },
          el("span", { class: "provider" }, p.provider_name || p.provider),
          " ",
          el("span", { class: `backend backend-${p.backend}` }, p.backend),
          " ",
          el("span", { class: "muted steps" }, `steps ${p.from_step}–${until}${failed ? ` (replaced: ${p.ended})` : ""}`),
        );
      }),
      el("div", { class: "hop-timing" }, timing, median === null || median === undefined ? null : " ms/step"),
    );
  });
  if (boxes.length) $("pipeline").replaceChildren(...boxes);
  const timings = job.timings || {};
  if (timings.decode_tokens_per_s) {
    $("timing-prefill").textContent = `${timings.prefill_s} s`;
    $("timing-rate").textContent = String(timings.decode_tokens_per_s);
    $("job-timings").hidden = false;
  }
}

async function refreshJob() {
  const { ok, body } = await request(page.urls.job);
  if (!ok) return showError(body.message);
  drawPipeline(body);
  if (!FINAL.includes(state) && body.state !== "queued") showState(body.state);
}

// --- the cost ----------------------------------------------------------------------------------------------------

function costTable(cost) {
  // The same table as job.html's first paint; columns marked "wide" are left out on a phone.
  const row = (line) =>
    el(
      "tr",
      { "data-hop": line.hop },
      el("td", {}, `${line.hop} `, el("span", { class: "muted wide" }, line.shard)),
      el("td", {}, line.provider_name || line.provider),
      el("td", { class: "wide" }, `${line.from_step}–${line.until_step}`),
      el("td", { class: "num wide" }, line.layer_tokens),
      el("td", { class: "num wide" }, line.unit_price),
      el("td", { class: "num" }, line.payment),
      el("td", { class: "num" }, line.fee),
      el("td", { class: "num wide" }, line.provider_receipt),
    );
  const lines = cost.lines.length
    ? cost.lines.map(row)
    : [el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No work was paid for."))];
  const total = (label, id, value, fee, receipts) =>
    el(
      "tr",
      {},
      el("th", { colspan: 2 }, label),
      el("td", { colspan: 3, class: "wide" }),
      el("td", { class: "num", id }, value),
      fee,
      el("td", { class: "num wide" }, receipts ?? ""),
    );
  const head = ["Hop", "Provider", "Steps", "Layer-tokens", "Price", "Payment", "Fee", "To the provider"];
  const headClass = ["", "", "wide", "num wide", "num wide", "num", "num", "num wide"];
  const table = el(
    "table",
    { id: "job-cost" },
    el("caption", { class: "muted" }, "Base units; each placement pays its layer-tokens at the price its round cleared."),
    el("thead", {}, el("tr", {}, ...head.map((name, i) => el("th", { class: headClass[i] || null }, name)))),
    el("tbody", {}, ...lines),
    el(
      "tfoot",
      {},
      total("Paid", "cost-paid", cost.paid, el("td", { class: "num", id: "cost-fee" }, cost.fee), cost.provider_receipts),
      total("Escrowed", "cost-escrowed", cost.escrowed, el("td")),
      total("Refunded", "cost-refunded", cost.refunded, el("td")),
    ),
  );
  const parts = [el("div", { class: "table-wrap" }, table)];
  if (cost.platform_paid) {
    parts.push(
      el("p", { class: "muted" }, "The platform paid ", el("span", { id: "cost-platform" }, cost.platform_paid), " base units to replay steps after a server failed (not charged to you)."),
    );
  }
  return parts;
}

async function fetchCost() {
  if (costShown) return;
  const { ok, status, body } = await request(page.urls.cost);
  if (ok) {
    costShown = true;
    $("cost").replaceChildren(...costTable(body));
    $("challenge").disabled = state !== "done";
  } else if (status === 409) {
    costAsked = true; // settlement lags: the verification event that shows it settled asks again, once
    $("cost").replaceChildren(el("p", { class: "muted", id: "cost-pending" }, "Settling…"));
  } else {
    showError(body.message);
  }
}

// --- verification ------------------------------------------------------------------------------------------------

function showVerification(v) {
  $("verification").textContent = v.state;
  $("verification").className = `verification-${v.state}`;
  $("challenge-bond").textContent = String(v.challenge_bond);
  const detail = [];
  if (v.challenge_window_closes_at && state === "done") {
    const closes = v.challenge_window_closes_at;
    detail.push(el("p", {}, "You may challenge the answer until ", el("time", { datetime: closes }, utc(closes)), "."));
  }
  if (v.disputes && v.disputes.length) {
    detail.push(el("ul", {}, ...v.disputes.map((d) => el("li", {}, `${d.kind}: ${d.state}${d.reason ? ` (${d.reason})` : ""}`))));
  }
  $("verification-detail").replaceChildren(...detail);
}

// --- the stream --------------------------------------------------------------------------------------------------

const handlers = {
  snapshot(event) {
    setText(event.text, event.tokens.length);
    tokenCount = event.tokens.length;
    showState(event.state, { reason: event.reason });
    if (event.tokens.length && !page.job.pipeline.length) askPipeline();
  },
  token(event) {
    addToken(event);
    askPipeline();
  },
  bid(event) {
    showState("queued", { reason: event.reason });
  },
  done(event) {
    const first = !FINAL.includes(state) || !costShown;
    setText(event.text, event.tokens);
    showState(event.state, { error: event.error, finishReason: event.finish_reason });
    if (event.verification) showVerification(event.verification);
    if (first) {
      refreshJob(); // the final pipeline with each hop's timing
      fetchCost();
    }
  },
  verification(event) {
    showVerification(event);
    if (costAsked && !costShown && event.challenge_window_closes_at) {
      costAsked = false;
      fetchCost();
    }
  },
  error(event) {
    showError(event.message);
  },
};

function askPipeline() {
  if (pipelineAsked) return;
  pipelineAsked = true;
  refreshJob();
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}${page.urls.stream}`);
  let heard = false;
  socket.addEventListener("open", () => {
    socketOpen = true;
    $("job-live").textContent = "live";
  });
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    const handle = handlers[event.type];
    if (handle) handle(event);
    if (!heard) {
      heard = true;
      document.body.dataset.ready = "1";
    }
  });
  socket.addEventListener("close", () => {
    socketOpen = false;
    $("job-live").textContent = FINAL.includes(state) ? "" : "the live stream closed: reload the page to reconnect";
    document.body.dataset.ready = "1";
  });
}

// --- actions -----------------------------------------------------------------------------------------------------

async function cancel() {
  const button = $("cancel");
  button.disabled = true;
  showError("");
  const { ok, body } = await post(page.urls.cancel);
  if (!ok) {
    showError(body.message);
    button.disabled = FINAL.includes(state);
    return;
  }
  // A bid is cancelled at once (its `done` event follows); a running job stops at its next step.
  showState(body.state, { error: body.error });
}

async function challenge() {
  const button = $("challenge");
  button.disabled = true;
  showError("");
  const { ok, status, body } = await post(page.urls.challenge);
  const result = $("challenge-result");
  if (ok) {
    showVerification(body);
    result.textContent = `Challenged: ${body.challenge_bond} base units are held as the bond while a referee checks the work.`;
    result.className = "ok";
    result.hidden = false;
    return; // a second challenge would be refused
  }
  showError(status === 402 ? `Your balance is short for the bond: ${body.message}` : body.message);
  button.disabled = status === 409; // late or challenged already: it will not change
}

$("cancel").addEventListener("click", cancel);
$("challenge").addEventListener("click", challenge);
connect();
