// Drive a streamctl server's /v1/ag-ui endpoints with the real @ag-ui/client.
//
//   node ag_ui.mjs BASE_URL THREAD_ID RUN_ID run [--config JSON] [--stop-after TEXT]
//     HttpAgent.runAgent: the client's own pipeline (schema enforcement, its event verifier,
//     applying events to messages). --stop-after: once TEXT has streamed, POST the run's stop
//     endpoint. Prints {events, error, messages}.
//   node ag_ui.mjs BASE_URL THREAD_ID RUN_ID cut --cuts N,N,... [--config JSON]
//     For each N: POST the RunAgentInput (the first POST starts the run, later ones join it), keep
//     the first N bytes of the answer as a dropped connection would (an incomplete event is lost),
//     then GET /v1/ag-ui/runs/RUN_ID/stream with Last-Event-ID of the last whole event. The two
//     parts joined go through the client's verifier, and are compared with a full replay.
//     Prints {full, cuts: [{cut, lastId, first, resumed, same, verified, error}]}.
import { HttpAgent, verifyEvents } from "@ag-ui/client";
import { from, lastValueFrom, toArray } from "rxjs";

const [base, threadId, runId, mode, ...rest] = process.argv.slice(2);
const opts = { config: {}, stopAfter: null, cuts: [] };
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--config") opts.config = JSON.parse(rest[++i]);
  else if (rest[i] === "--stop-after") opts.stopAfter = rest[++i];
  else if (rest[i] === "--cuts") opts.cuts = rest[++i].split(",").map(Number);
}
const input = {
  threadId,
  runId,
  messages: [{ id: "u1", role: "user", content: "What is the weather in Tokyo?" }],
  tools: [],
  context: [],
  forwardedProps: { config: opts.config },
};

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n", () => process.exit(0));
}

// Whole SSE blocks of `text` (a block is complete at its blank line): [{id, event}].
function blocks(text) {
  const out = [];
  const parts = text.split("\n\n");
  parts.pop(); // the incomplete tail, if any
  for (const block of parts) {
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("id: ")) id = line.slice(4);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
    if (data.length) out.push({ id, event: JSON.parse(data.join("\n")) });
  }
  return out;
}

async function read(response, limit = Infinity) {
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  while (size < limit) {
    const { value, done } = await reader.read();
    if (done) break;
    const take = value.subarray(0, limit - size);
    chunks.push(take);
    size += take.length;
  }
  await reader.cancel().catch(() => {});
  return new TextDecoder().decode(Buffer.concat(chunks));
}

async function verified(events) {
  try {
    await lastValueFrom(from(events).pipe(verifyEvents(), toArray()));
    return null;
  } catch (error) {
    return String(error);
  }
}

if (mode === "run") {
  const agent = new HttpAgent({
    url: `${base}/v1/ag-ui`,
    threadId,
    initialMessages: input.messages,
  });
  const events = [];
  let text = "";
  let stopping = null;
  const subscriber = {
    onEvent({ event }) {
      events.push(event);
    },
    onTextMessageContentEvent({ event }) {
      text += event.delta;
      if (opts.stopAfter !== null && stopping === null && text.includes(opts.stopAfter)) {
        stopping = fetch(`${base}/v1/ag-ui/runs/${runId}/stop`, { method: "POST" }).then(
          async (r) => ({ status: r.status, body: await r.json() }),
        );
      }
    },
  };
  let error = null;
  try {
    await agent.runAgent({ runId, forwardedProps: { config: opts.config } }, subscriber);
  } catch (e) {
    error = String(e);
  }
  print({ events, error, messages: agent.messages, stop: stopping ? await stopping : null });
} else if (mode === "cut") {
  const post = () =>
    fetch(`${base}/v1/ag-ui`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(input),
    });
  const results = [];
  for (const cut of opts.cuts) {
    const first = blocks(await read(await post(), cut));
    const lastId = first.length ? first[first.length - 1].id : "";
    const response = await fetch(`${base}/v1/ag-ui/runs/${runId}/stream`, {
      headers: { "Last-Event-ID": lastId },
    });
    const resumed = response.status === 204 ? [] : blocks(await read(response));
    results.push({ cut, lastId, first: first.length, resumed, joined: [...first, ...resumed] });
  }
  const full = blocks(await read(await fetch(`${base}/v1/ag-ui/runs/${runId}/stream`)));
  const key = (b) => JSON.stringify(b);
  for (const r of results) {
    r.same = JSON.stringify(r.joined.map(key)) === JSON.stringify(full.map(key));
    r.verified = await verified(r.joined.map((b) => b.event));
    delete r.joined;
    r.resumed = r.resumed.length;
  }
  print({ full, fullVerified: await verified(full.map((b) => b.event)), cuts: results });
}
