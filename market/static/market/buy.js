// The buyer console (/buy/): a live quote while the buyer writes (one fetch per edit, after a pause in typing; no
// polling), and posting the job. Every figure shown comes from the API's answers; the buyer's text only ever goes
// into the DOM as text.
import { csrfToken, request } from "./api.js";

const config = JSON.parse(document.getElementById("buy-config").textContent);
const $ = (id) => document.getElementById(id);
const QUOTE_PAUSE_MS = 350; // wait this long after the last keystroke before asking for a quote
// A quote travels in the URL, and servers refuse request lines much longer than this (Daphne's limit is 16 KiB).
const QUOTE_URL_MAX = 8192;

function selectedModel() {
  const option = $("model").selectedOptions[0];
  return option ? { model: option.value, quant: option.dataset.quant } : null;
}

// --- the quote ---------------------------------------------------------------------------------------------------

let quoteTimer = null;
let quoteController = null;
let priceEdited = false; // once the buyer types a max price, quotes no longer overwrite it

function showQuote(text, kind = "muted", values = {}) {
  const quote = $("quote");
  quote.textContent = text;
  quote.className = `quote ${kind}`;
  for (const key of ["price", "bid", "tokens"]) {
    if (key in values) quote.dataset[key] = String(values[key]);
    else delete quote.dataset[key];
  }
}

async function refreshQuote() {
  const chosen = selectedModel();
  const prompt = $("prompt").value;
  if (quoteController) quoteController.abort(); // an older answer must not land after a newer one
  if (!chosen || !prompt.trim()) {
    showQuote("Type a prompt to get a quote.");
    return;
  }
  quoteController = new AbortController();
  const params = new URLSearchParams({ model: chosen.model, prompt, max_new_tokens: $("max-new-tokens").value });
  if (chosen.quant) params.set("quant", chosen.quant);
  const url = `${config.quote}?${params}`;
  if (url.length > QUOTE_URL_MAX) {
    if (!priceEdited) $("max-price").value = "";
    showQuote(
      "The prompt is too long for a live quote. Posting it gives the market's answer; with no max price, " +
        "the bid is the quote at the time of posting.",
    );
    return;
  }
  showQuote("Asking for a quote…");
  let answer;
  try {
    answer = await request(url, { signal: quoteController.signal });
  } catch {
    return; // aborted by a newer edit, which asks again
  }
  const { ok, body } = answer;
  if (!ok && !priceEdited) $("max-price").value = ""; // no stale bid from an earlier quote: the API picks one
  if (ok) {
    showQuote(
      `Quote: ${body.price} base units for ${body.tokens} tokens at the cheapest free pipeline's asks; ` +
        `a bid of ${body.bid} clears with margin.`,
      "ok",
      { price: body.price, bid: body.bid, tokens: body.tokens },
    );
    if (!priceEdited) $("max-price").value = String(body.bid);
  } else if (body.code === "no_capacity") {
    showQuote(
      `No capacity now (${body.message}). You can still post: the bid waits in the book until providers are free, ` +
        "or expires and is refunded.",
      "error",
    );
  } else {
    showQuote(`No quote: ${body.message}`, "error");
  }
}

function quoteSoon() {
  clearTimeout(quoteTimer);
  quoteTimer = setTimeout(refreshQuote, QUOTE_PAUSE_MS);
}

// --- posting -----------------------------------------------------------------------------------------------------

function showPostError(message) {
  $("post-error").textContent = message;
  $("post-error").hidden = !message;
}

async function postJob(event) {
  event.preventDefault();
  const button = $("post-job");
  if (button.disabled) return; // a double click posts once
  const chosen = selectedModel();
  const tokens = Number($("max-new-tokens").value);
  if (!chosen) return showPostError("choose a model");
  if (!$("prompt").value.trim()) return showPostError("write a prompt first");
  if (!Number.isInteger(tokens) || tokens < 1) return showPostError("max new tokens must be a whole number from 1");
  const job = { model: chosen.model, prompt: $("prompt").value, max_new_tokens: tokens };
  if (chosen.quant) job.quant = chosen.quant;
  const price = $("max-price").value.trim();
  if (price) {
    if (!/^[0-9]+$/.test(price)) return showPostError("max price must be a whole number of base units");
    job.max_price = Number(price);
  }
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  showPostError("");
  const { ok, status, body } = await request(config.jobs, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(job),
  });
  if (ok) {
    window.location.assign(config.jobPage.replace("/0/", `/${body.id}/`));
    return; // the button stays disabled while the next page loads
  }
  const prefix = status === 402 ? "Your balance is short: " : "";
  showPostError(`${prefix}${body.message}`);
  button.disabled = false;
  button.removeAttribute("aria-busy");
}

// --- wiring ------------------------------------------------------------------------------------------------------

async function start() {
  const form = $("post-form");
  if (form) {
    form.addEventListener("submit", postJob);
    $("prompt").addEventListener("input", quoteSoon);
    $("max-new-tokens").addEventListener("input", quoteSoon);
    $("model").addEventListener("change", quoteSoon);
    $("max-price").addEventListener("input", () => {
      priceEdited = $("max-price").value.trim() !== ""; // cleared: the next quote fills it again
    });
    if ($("prompt").value.trim()) await refreshQuote(); // the browser kept the text (back button)
  }
  document.body.dataset.ready = "1";
}

start();
