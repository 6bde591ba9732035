// Start a run with @microsoft/fetch-event-source by POSTing it with an Idempotency-Key, following
// the recipe of docs/frontends.md: the library's automatic retry re-sends the same POST (same
// key, same body, plus the Last-Event-ID it saw), which streamctl answers with the same run after
// that id instead of starting another. `onopen` treats 204 as the end.
//
//   node fetch_post.mjs URL BODY_JSON --key KEY [--header NAME:VALUE ...]
// Prints one JSON line per happening, as it happens (a test waits on them):
//   {"open": status, "run": X-Run-Id, "replayed": Idempotent-Replayed, "lastEventId": sent}
//   {"message": {id, event, data}}
// then {"opens": [...], "messages": [...], "ended": "done" | "204"} last.
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The library is written for browsers: it calls window.setTimeout and document.*Listener.
globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

const [url, body, ...rest] = process.argv.slice(2);
const headers = { "Content-Type": "application/json" };
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--key") headers["Idempotency-Key"] = rest[++i];
  else if (rest[i] === "--header") {
    const [name, ...value] = rest[++i].split(":");
    headers[name] = value.join(":");
  }
}

class StreamEnded extends Error {}
class Fatal extends Error {}

const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const opens = [];
const messages = [];
let done = false;
let ended = null;
try {
  await fetchEventSource(url, {
    method: "POST",
    headers,
    body,
    openWhenHidden: true,
    async onopen(response) {
      const open = {
        open: response.status,
        run: response.headers.get("x-run-id"),
        replayed: response.headers.get("idempotent-replayed"),
        // What the library sent as Last-Event-ID: the last id it saw (it keeps its own copy).
        lastEventId: messages.findLast((m) => m.id)?.id ?? null,
      };
      opens.push(open);
      say(open);
      if (response.status === 204) throw new StreamEnded(); // nothing left: the run is over
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new Fatal(`HTTP ${response.status}: ${await response.text()}`);
      }
    },
    onmessage(message) {
      const got = { id: message.id, event: message.event, data: message.data };
      messages.push(got);
      say({ message: got });
      if (message.event === "done") done = true;
    },
    onclose() {
      if (!done) throw new Error("the connection dropped before `done`: retry");
    },
    onerror(error) {
      if (error instanceof StreamEnded || error instanceof Fatal) throw error;
      return 100; // retry soon: the same POST, the same key, with Last-Event-ID
    },
  });
  ended = "done";
} catch (error) {
  if (!(error instanceof StreamEnded)) throw error;
  ended = "204";
}
say({ opens, messages, ended });
