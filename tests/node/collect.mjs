// Parse a streamctl SSE stream with the npm `eventsource` package (a parser nobody here wrote)
// and print what it dispatched, for tests/test_wire.py.
//
//   node collect.mjs URL [--last-event-id ID] [--cut-bytes N] [--deadline SECONDS]
//
// Prints one JSON line per event: {"id", "type", "data"} (data as the raw string the parser
// built), plus {"connect": {"lastEventId": ...}} for every HTTP request the EventSource made.
// Stops at the `done` event (exit 0). --last-event-id sends that header on the first connect
// (through the fetch override; a browser cannot). --cut-bytes N ends each response body cleanly
// after its first N bytes, wherever that falls (inside an event, inside a character), as a proxy
// might: the EventSource drops the incomplete event and reconnects on its own, sending
// Last-Event-ID. A connection that fails for good prints {"error", "status"} and exits 2.
import { EventSource } from "eventsource";

const TYPES = ["run", "message_chunk", "tool_start", "tool_end", "error", "done", "message"];

function parseArgs(argv) {
  const opts = { url: null, lastEventId: null, cutBytes: 0, deadline: 30 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--last-event-id") opts.lastEventId = argv[++i];
    else if (arg === "--cut-bytes") opts.cutBytes = Number(argv[++i]);
    else if (arg === "--deadline") opts.deadline = Number(argv[++i]);
    else opts.url = arg;
  }
  if (!opts.url) throw new Error("usage: collect.mjs URL [--last-event-id ID] [--cut-bytes N]");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const lines = [];
let firstConnect = true;

function finish(code) {
  process.stdout.write(lines.map((l) => JSON.stringify(l) + "\n").join(""), () =>
    process.exit(code),
  );
}

async function fetchWithCursor(url, init) {
  const headers = { ...(init.headers ?? {}) };
  if (firstConnect && opts.lastEventId !== null) headers["Last-Event-ID"] = opts.lastEventId;
  firstConnect = false;
  lines.push({ connect: { lastEventId: headers["Last-Event-ID"] ?? null } });
  const response = await fetch(url, { ...init, headers });
  if (!opts.cutBytes || !response.body) return response;
  // Pass the first cutBytes bytes of the body through, then end it as a clean end of stream.
  const reader = response.body.getReader();
  let left = opts.cutBytes;
  const body = new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) {
        controller.close();
        return;
      }
      controller.enqueue(value.subarray(0, left));
      left -= Math.min(left, value.length);
      if (left === 0) {
        controller.close();
        await reader.cancel();
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

const source = new EventSource(opts.url, { fetch: fetchWithCursor });
const timer = setTimeout(() => {
  lines.push({ error: "deadline passed", status: null });
  source.close();
  finish(3);
}, opts.deadline * 1000);

for (const type of TYPES) {
  source.addEventListener(type, (event) => {
    // A run's `error` event shares its name with the EventSource's own connection-error event,
    // which carries no data: only server-sent events are recorded.
    if (typeof event.data !== "string") return;
    lines.push({ id: event.lastEventId, type: event.type, data: event.data });
    if (type === "done") {
      clearTimeout(timer);
      source.close();
      finish(0);
    }
  });
}

source.onerror = (event) => {
  if (source.readyState === source.CLOSED) {
    clearTimeout(timer);
    lines.push({ error: event.message ?? "closed", status: event.code ?? null });
    finish(2);
  }
};
