// Types of streamctl.js and of the events on the wire. Checked against the server's event
// schema (GET /v1/schema/events) by tests/test_static.py.

export type RunStatus = "queued" | "running" | "completed" | "cancelled" | "failed" | "timed_out" | "interrupted";
export type TerminalStatus = "completed" | "cancelled" | "failed" | "timed_out" | "interrupted";

export interface RunData { run_id: string; thread_id: string; status: RunStatus }
export interface MessageChunkData { role: "assistant"; content: string; message_id: string }
export interface ToolStartData { name: string; args: Record<string, unknown>; call_id: string }
export interface ToolEndData { name: string; output: unknown; call_id: string }
export interface ReasoningChunkData { content: string; message_id: string }
export interface CustomData { name: string; data: unknown }
export interface InterruptData { value: unknown; interrupt_id: string | null }
export interface ErrorData { code: string; message: string }
/** Model tokens, when the agent's model reported them. */
export interface TokenUsage { input_tokens: number; output_tokens: number }
/** `tokens` counts the run's `message_chunk` events (chunks, not model tokens); `usage` has model tokens. */
export interface DoneData { run_id: string; thread_id: string; status: TerminalStatus; reason: string; tokens: number; usage: TokenUsage | null }

/** One event of a stream: `type` is the SSE event name, `id` its id (`seq`, or `run_id:seq`). */
export type StreamEvent =
  | { type: "run"; id: string; data: RunData }
  | { type: "message_chunk"; id: string; data: MessageChunkData }
  | { type: "reasoning_chunk"; id: string; data: ReasoningChunkData }
  | { type: "tool_start"; id: string; data: ToolStartData }
  | { type: "tool_end"; id: string; data: ToolEndData }
  | { type: "custom"; id: string; data: CustomData }
  | { type: "interrupt"; id: string; data: InterruptData }
  | { type: "error"; id: string; data: ErrorData }
  | { type: "done"; id: string; data: DoneData };

export interface ToolCall { call_id: string; name: string; args: Record<string, unknown>; output: unknown; seq: number; end_seq?: number | null }
export interface RunOutput {
  text: string;
  messages: { message_id: string; role: "assistant"; content: string; seq: number }[];
  tool_calls: ToolCall[];
  reasoning?: { message_id: string; content: string; seq: number }[];
  interrupt?: InterruptData | null;
}

export interface Run {
  run_id: string;
  thread_id: string;
  status: RunStatus;
  reason: string | null;
  last_seq: number;
  output: RunOutput;
  error: ErrorData | null;
  created_at: string | null;
  started_at: string | null;
  ended_at: string | null;
  usage: { tokens: number; input_tokens?: number; output_tokens?: number };
  events_purged_at: string | null;
  stopping?: boolean;
}

/** A chat message; an assistant message may carry the tool calls it made, a tool message answers one. */
export interface Message {
  role: "user" | "assistant" | "system" | "tool";
  content: string;
  tool_calls?: { id: string; name: string; args: Record<string, unknown> }[];
  tool_call_id?: string;
  name?: string;
}

export interface ThreadMessage extends Message { run_id: string; status?: RunStatus; output?: RunOutput }

export interface Thread {
  thread_id: string;
  created_at: string;
  /** In order: each run's input, then one message per model message and per tool result; the run's last message carries its status and output. */
  messages: ThreadMessage[];
  active_run: Run | null;
  last_run: Run | null;
}

export interface RunCreate {
  thread_id?: string;
  input: { messages: Message[] };
  config?: { recursion_limit?: number; [agentOption: string]: unknown };
  multitask?: "reject" | "interrupt" | "enqueue";
  on_disconnect?: "continue" | "cancel";
  granularity?: "low" | "batched" | "message";
}

export class StreamctlError extends Error {
  status: number;
  code: string;
}

export class SSEParser {
  lastEventId: string;
  retry: number | null;
  feed(bytes: Uint8Array): { type: string; data: string; id: string }[];
}

export class StreamctlClient {
  constructor(options?: { baseUrl?: string; token?: string | null; maxRetries?: number; maxBackoffMs?: number });
  reconnects: number;
  createRun(body: RunCreate): Promise<Run>;
  getRun(runId: string): Promise<Run>;
  getThread(threadId: string): Promise<Thread>;
  stop(runId: string): Promise<Run>;
  startStream(body: RunCreate, options?: { signal?: AbortSignal }): AsyncGenerator<StreamEvent>;
  stream(
    runId: string,
    options?: { after?: number; granularity?: "low" | "batched" | "message"; signal?: AbortSignal; retry?: number },
  ): AsyncGenerator<StreamEvent>;
}
