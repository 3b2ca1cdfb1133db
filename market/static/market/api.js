// What the marketplace's pages share to talk to the API: Django's CSRF token for a POST, and fetch with the API's
// errors ({code, message}) turned into one shape.
export function csrfToken() {
  const cookie = document.cookie.split("; ").find((part) => part.startsWith("csrftoken="));
  return cookie ? decodeURIComponent(cookie.slice("csrftoken=".length)) : "";
}

// The API's answer as {ok, status, body}; its errors are JSON {code, message}, anything else (a proxy's page, a
// dropped connection) becomes a message of our own.
export async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...options });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return { ok: false, status: 0, body: { code: "network", message: "the server could not be reached; try again" } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok && !(body && body.message)) {
    body = { code: "http_error", message: `the server answered ${response.status} ${response.statusText}`.trim() };
  }
  if (response.status === 429 && response.headers.get("Retry-After")) {
    body = { ...body, message: `${body.message} (try again in ${response.headers.get("Retry-After")} s)` };
  }
  return { ok: response.ok, status: response.status, body };
}
