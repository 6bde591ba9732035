// streamctl.js: a browser client for streamctl, as a plain ES module (no build step).
//
//   import { StreamctlClient } from "/static/streamctl.js";
//   const client = new StreamctlClient({ token: "…" });          // token optional
//   for await (const event of client.startStream({ input: { messages: [{ role: "user", content: "Hi" }] } })) {
//     if (event.type === "message_chunk") output.textContent += event.data.content;
//   }
//
// Streams go over fetch (so an Authorization header can be sent) with a spec-compliant SSE
// parser. After a network error, or a body that ends before the run's `done`, the stream
// reconnects with `Last-Event-ID` after the server's `retry:` time, with exponential backoff and
// jitter, and goes on exactly where it was: no event lost, none repeated. It stops at `done`,
// at 204 (nothing left) or at a 4xx (thrown as StreamctlError). Types: streamctl.d.ts.

/** @typedef {import("./streamctl").StreamEvent} StreamEvent */
/** @typedef {import("./streamctl").Run} Run */
/** @typedef {import("./streamctl").Thread} Thread */
/** @typedef {import("./streamctl").RunCreate} RunCreate */

export class StreamctlError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** Incremental SSE parser (WHATWG HTML §9.2): LF, CR and CRLF line ends, BOM, comments, retry. */
export class SSEParser {
  constructor() {
    // Replaces invalid UTF-8 with U+FFFD; the BOM is ours to strip (once), not the decoder's.
    this.decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    this.buffer = "";
    this.started = false;
    this.skipLF = false;
    this.eventType = "";
    this.data = [];
    this.lastEventId = "";
    /** @type {number | null} */
    this.retry = null;
  }

  /** @param {Uint8Array} bytes @returns {{type: string, data: string, id: string}[]} */
  feed(bytes) {
    let text = this.decoder.decode(bytes, { stream: true });
    if (!this.started && text) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLF && text) {
      this.skipLF = false;
      if (text[0] === "\n") text = text.slice(1);
    }
    text = this.buffer + text;
    const endsWithCR = text.endsWith("\r");
    if (endsWithCR) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() ?? "";
    if (endsWithCR) {
      lines.push(this.buffer);
      this.buffer = "";
      this.skipLF = true;
    }
    const events = [];
    for (const line of lines) {
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  /** @param {string} line */
  line(line) {
    if (line === "") {
      const data = this.data;
      const type = this.eventType || "message";
      this.data = [];
      this.eventType = "";
      return data.length ? { type, data: data.join("\n"), id: this.lastEventId } : null;
    }
    if (line[0] === ":") return null;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (name === "event") this.eventType = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (name === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
    return null;
  }
}

// Wait before reconnecting; coming back online cuts the wait short.
const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      globalThis.removeEventListener?.("online", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    globalThis.addEventListener?.("online", done);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      globalThis.removeEventListener?.("online", done);
      reject(signal.reason);
    });
  });

export class StreamctlClient {
  /** @param {{baseUrl?: string, token?: string | null, maxRetries?: number, maxBackoffMs?: number}} [options] */
  constructor({ baseUrl = "", token = null, maxRetries = Infinity, maxBackoffMs = 10000 } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.maxRetries = maxRetries;
    this.maxBackoffMs = maxBackoffMs;
    this.reconnects = 0;
  }

  /** @param {Record<string, string>} [extra] */
  headers(extra = {}) {
    return this.token ? { Authorization: `Bearer ${this.token}`, ...extra } : extra;
  }

  /** @returns {Promise<any>} */
  async request(method, path, body) {
    const response = await fetch(this.baseUrl + path, {
      method,
      headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await toError(response);
    return response.json();
  }

  /** Start a run in the background. @param {RunCreate} body @returns {Promise<Run>} */
  createRun(body) {
    return this.request("POST", "/v1/runs", body);
  }

  /** @param {string} runId @returns {Promise<Run>} */
  getRun(runId) {
    return this.request("GET", `/v1/runs/${encodeURIComponent(runId)}`);
  }

  /** @param {string} threadId @returns {Promise<Thread>} */
  getThread(threadId) {
    return this.request("GET", `/v1/threads/${encodeURIComponent(threadId)}`);
  }

  /** Stop a run on the server; resolves once it has stopped. @param {string} runId @returns {Promise<Run>} */
  stop(runId) {
    return this.request("POST", `/v1/runs/${encodeURIComponent(runId)}/stop`);
  }

  /**
   * Start a run and stream it; resumes by itself after network errors.
   * @param {RunCreate} body
   * @param {{signal?: AbortSignal}} [options]
   * @returns {AsyncGenerator<StreamEvent>}
   */
  async *startStream(body, { signal } = {}) {
    const response = await fetch(this.baseUrl + "/v1/runs/stream", {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw await toError(response);
    const runId = response.headers.get("X-Run-Id");
    const state = { cursor: "0", retry: 2000, done: false };
    try {
      yield* this.read(response, state);
    } catch (error) {
      if (signal?.aborted || error instanceof StreamctlError) throw error;
    }
    if (!state.done && runId) yield* this.stream(runId, { after: Number(state.cursor), signal, retry: state.retry });
  }

  /**
   * Follow a run's events after `after`, then its live tail, until `done`.
   * @param {string} runId
   * @param {{after?: number, granularity?: "low" | "batched" | "message", signal?: AbortSignal, retry?: number}} [options]
   * @returns {AsyncGenerator<StreamEvent>}
   */
  async *stream(runId, { after = 0, granularity = "low", signal, retry = 2000 } = {}) {
    const state = { cursor: String(after), retry, done: false };
    const url = `${this.baseUrl}/v1/runs/${encodeURIComponent(runId)}/stream?granularity=${granularity}`;
    let failures = 0;
    while (!state.done) {
      if (failures > 0) {
        if (failures > this.maxRetries) throw new StreamctlError(0, "unreachable", "gave up reconnecting");
        const backoff = failures === 1 ? state.retry : Math.min(this.maxBackoffMs, 250 * 2 ** failures);
        this.reconnects += 1;
        await sleep(backoff * (0.5 + Math.random() / 2), signal); // jitter
      }
      let response;
      try {
        response = await fetch(url, {
          headers: this.headers({ "Last-Event-ID": state.cursor, Accept: "text/event-stream" }),
          signal,
        });
      } catch (error) {
        if (signal?.aborted) throw error;
        failures += 1;
        continue;
      }
      if (response.status === 204) return;
      if (response.status >= 400 && response.status < 500) throw await toError(response);
      if (!response.ok) {
        failures += 1;
        continue;
      }
      const before = state.cursor;
      try {
        yield* this.read(response, state);
      } catch (error) {
        if (signal?.aborted || error instanceof StreamctlError) throw error;
      }
      failures = state.cursor === before ? failures + 1 : 1;
    }
  }

  /** @returns {AsyncGenerator<StreamEvent>} */
  async *read(response, state) {
    const parser = new SSEParser();
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // ended before `done`: the caller reconnects
        for (const sse of parser.feed(value)) {
          state.cursor = sse.id.slice(sse.id.lastIndexOf(":") + 1);
          const event = /** @type {StreamEvent} */ ({ type: sse.type, id: sse.id, data: JSON.parse(sse.data) });
          yield event;
          if (event.type === "done") {
            state.done = true;
            return;
          }
        }
        if (parser.retry !== null) state.retry = parser.retry;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }
}

/** @param {Response} response */
async function toError(response) {
  try {
    const { error } = await response.json();
    return new StreamctlError(response.status, error.code, error.message);
  } catch {
    return new StreamctlError(response.status, "http_error", response.statusText);
  }
}
