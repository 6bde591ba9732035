// Read a streamctl run stream with @microsoft/fetch-event-source, following the GET recipe of
// docs/frontends.md (fetch_post.mjs does the POST with an Idempotency-Key): `onopen` treats 204
// as the end, `onclose` without `done` retries (the library resends Last-Event-ID itself),
// `onerror` rethrows what is fatal.
//
//   node fetch_sse.mjs URL [--last-event-id ID]
// Prints {opens: [status...], messages: [{id, event, data}], ended}.
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The library is written for browsers: it calls window.setTimeout and (even with openWhenHidden)
// document.removeEventListener. Node has neither.
globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

const [url, ...rest] = process.argv.slice(2);
const headers = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--last-event-id") headers["Last-Event-ID"] = rest[++i];
}

class StreamEnded extends Error {}
class Fatal extends Error {}

const opens = [];
const messages = [];
let done = false;
let ended = null;
try {
  await fetchEventSource(url, {
    headers,
    openWhenHidden: true, // no document here; in a browser, keep the stream while hidden
    async onopen(response) {
      opens.push(response.status);
      if (response.status === 204) throw new StreamEnded(); // nothing left: the run is over
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new Fatal(`HTTP ${response.status}: ${await response.text()}`);
      }
    },
    onmessage(message) {
      messages.push({ id: message.id, event: message.event, data: message.data });
      JSON.parse(message.data); // every event the library hands over is a JSON event
      if (message.event === "done") done = true;
    },
    onclose() {
      if (!done) throw new Error("the connection dropped before `done`: retry");
    },
    onerror(error) {
      if (error instanceof StreamEnded || error instanceof Fatal) throw error;
      return 500; // retry in 0.5 s, with Last-Event-ID
    },
  });
  ended = "done";
} catch (error) {
  if (!(error instanceof StreamEnded)) throw error;
  ended = "204";
}
process.stdout.write(JSON.stringify({ opens, messages, ended }) + "\n");
