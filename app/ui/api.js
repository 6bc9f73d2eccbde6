// The service's own HTTP API, and nothing else: JSON calls, the SSE completion stream, the API key.

const KEY_STORAGE = "gpt2-serve.api-key";

// The page lives at <service>/ui/, so the API is one level up (this also works behind a path prefix).
const SERVICE_ROOT = new URL("../", document.baseURI);

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An error answered by the API, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. */
export class ApiError extends Error {
  constructor(status, message, {type = null, code = null, param = null, retryAfter = null} = {}) {
    super(message);
    Object.assign(this, {status, type, code, param, retryAfter});
  }

  /** One line for people: status, type, the API's message, and when to retry. */
  describe() {
    const head = [this.status, this.type].filter(Boolean).join(" ");
    const retry = this.retryAfter ? ` (retry after ${this.retryAfter} s)` : "";
    return `${head ? head + ": " : ""}${this.message}${retry}`;
  }
}

function headers() {
  const result = {"Content-Type": "application/json"};
  const key = apiKey();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not JSON (a proxy's error page): fall back to the status line
  }
  return new ApiError(response.status, error?.message || response.statusText || "request failed", {
    type: error?.type, code: error?.code, param: error?.param, retryAfter: response.headers.get("Retry-After"),
  });
}

async function call(method, path, body, signal) {
  let response;
  try {
    response = await fetch(new URL(path, SERVICE_ROOT), {
      method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body), signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the service cannot be reached (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path, {signal} = {}) {
  return (await call("GET", path, undefined, signal)).json();
}

export async function postJSON(path, body, {signal} = {}) {
  return (await call("POST", path, body, signal)).json();
}

/**
 * POST /v1/completions with stream=true; yields each chunk as it arrives. EventSource cannot POST,
 * so the Server-Sent Events are read from fetch's body stream ("data: {json}\n\n" ... "data: [DONE]").
 */
export async function* streamCompletion(body, {signal} = {}) {
  const response = await call("POST", "v1/completions", {...body, stream: true}, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) {  // the engine failed the request after the stream began
          throw new ApiError(null, chunk.error.message, {type: chunk.error.type, code: chunk.error.code});
        }
        yield chunk;
      }
    }
  } finally {
    reader.cancel().catch(() => {});  // leaving early (Stop, an error) closes the connection: the server aborts
  }
  throw new ApiError(null, "the stream ended before [DONE] (the connection was cut)");
}
