// Stream a run from /v1/graph/stream as AgentFlow's TypeScript client does: its request (a
// message of content blocks, a top-level recursion_limit, `Accept: application/x-ndjson,
// application/json`) and its way of reading the answer: decode chunks as they come, split on
// newlines, skip blank lines, JSON.parse each line into a StreamChunk.
//
//   node agentflow.mjs BASE_URL [--body JSON] [--stop-after TEXT]
// --stop-after: once TEXT has streamed, POST /v1/graph/stop {thread_id} (AgentFlow's stopGraph).
// Prints {status, contentType, chunks, unparsed, stop}.
const [base, ...rest] = process.argv.slice(2);
const opts = { body: {}, stopAfter: null };
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--body") opts.body = JSON.parse(rest[++i]);
  else if (rest[i] === "--stop-after") opts.stopAfter = rest[++i];
}
const body = {
  messages: [
    { role: "user", content: [{ type: "text", text: "What is the weather in Tokyo?" }], message_id: "0" },
  ],
  recursion_limit: 25,
  response_granularity: "low",
  ...opts.body,
};
const response = await fetch(`${base}/v1/graph/stream`, {
  method: "POST",
  headers: { "Content-Type": "application/json", Accept: "application/x-ndjson, application/json" },
  body: JSON.stringify(body),
});
const chunks = [];
const unparsed = [];
let stop = null;
let text = "";
if (response.ok) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const take = (line) => {
    line = line.trim();
    if (!line) return; // a keep-alive
    try {
      const chunk = JSON.parse(line);
      chunks.push(chunk);
      const message = chunk.message;
      if (message && message.delta) text += message.content.map((b) => b.text ?? "").join("");
    } catch {
      unparsed.push(line.slice(0, 200));
    }
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let at;
    while ((at = buffer.indexOf("\n")) >= 0) {
      take(buffer.slice(0, at));
      buffer = buffer.slice(at + 1);
    }
    if (opts.stopAfter !== null && stop === null && text.includes(opts.stopAfter)) {
      const threadId = chunks[0].thread_id;
      const r = await fetch(`${base}/v1/graph/stop`, {
        method: "POST",
        headers: { "Content-Type": "application/json", accept: "application/json" },
        body: JSON.stringify({ thread_id: threadId }),
      });
      stop = { status: r.status, body: await r.json() };
    }
  }
  take(buffer + decoder.decode());
} else {
  unparsed.push(await response.text());
}
process.stdout.write(
  JSON.stringify({
    status: response.status,
    contentType: response.headers.get("content-type"),
    chunks,
    unparsed,
    stop,
  }) + "\n",
);
