// Drive a streamctl server's /v1/ai-sdk endpoints with the real `ai` package, the way `useChat`
// does: an AbstractChat (the class @ai-sdk/react's useChat wraps) over DefaultChatTransport.
//
//   node ai_sdk.mjs BASE_URL CHAT_ID MODE [--config JSON] [--after TEXT] [--usage-schema]
//
// MODE: send     send one user message and wait for the answer
//       stop     send; once TEXT has streamed, POST the chat's stop endpoint (what a Stop button
//                does) and wait for the stream to end
//       resume   send; once TEXT has streamed, drop the connection (chat.stop(): the client's own
//                abort), then chat.resumeStream() as useChat({resume: true}) does on mount
//       reconnect  only chat.resumeStream() (no active run: the server answers 204)
// --usage-schema: the chat validates message metadata against a strict zod schema of the token
// usage streamctl sends (`{totalUsage: {inputTokens, outputTokens, totalTokens}}`).
// Prints one JSON line: {status, error, messages, chunks, resumed}.
import { AbstractChat, DefaultChatTransport } from "ai";
import { z } from "zod";

const [base, chatId, mode, ...rest] = process.argv.slice(2);
const opts = { config: {}, after: null, usageSchema: false };
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--config") opts.config = JSON.parse(rest[++i]);
  else if (rest[i] === "--after") opts.after = rest[++i];
  else if (rest[i] === "--usage-schema") opts.usageSchema = true;
}
const count = z.number().int().nonnegative();
const usageSchema = z.strictObject({
  totalUsage: z.strictObject({ inputTokens: count, outputTokens: count, totalTokens: count }),
});

class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage = (m) => {
    this.messages = this.messages.concat(m);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (i, m) => {
    this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new State() });
  }
}

// Every chunk type the transport parsed (it validates each one against the ai schema).
const chunks = [];
let seen = "";
let reached;
const reachedText = new Promise((resolve) => (reached = resolve));

const transport = new DefaultChatTransport({
  api: `${base}/v1/ai-sdk/chat`,
  body: { config: opts.config },
});
const process_ = transport.processResponseStream.bind(transport);
transport.processResponseStream = (stream) =>
  process_(stream).pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        chunks.push(chunk.type);
        if (chunk.type === "text-delta") {
          seen += chunk.delta;
          if (opts.after !== null && seen.includes(opts.after)) reached();
        }
        controller.enqueue(chunk);
      },
    }),
  );

const errors = [];
const chat = new Chat({
  id: chatId,
  transport,
  onError: (e) => errors.push(String(e)),
  ...(opts.usageSchema ? { messageMetadataSchema: usageSchema } : {}),
});
let resumed = null;

if (mode === "reconnect") {
  await chat.resumeStream();
} else {
  const sent = chat.sendMessage({ text: "What is the weather in Tokyo?" });
  if (mode === "stop") {
    await reachedText;
    const response = await fetch(`${base}/v1/ai-sdk/chat/${chatId}/stop`, { method: "POST" });
    resumed = { stopStatus: response.status, stop: await response.json() };
  } else if (mode === "resume") {
    await reachedText;
    await chat.stop(); // the client's abort: the connection drops, the run goes on
    const before = structuredClone(chat.messages);
    chunks.push("--resume--");
    await chat.resumeStream();
    resumed = { before };
  }
  await sent;
}

process.stdout.write(
  JSON.stringify({
    status: chat.status,
    error: chat.error ? String(chat.error) : null,
    errors,
    messages: chat.messages,
    chunks,
    resumed,
  }) + "\n",
);
