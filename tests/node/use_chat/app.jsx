// A React page on @ai-sdk/react's useChat, the setup docs/frontends.md shows: the chat's id is
// the thread, `resume: true` rejoins a run going on after a reload, and Stop calls streamctl's
// stop endpoint. Bundled with esbuild by tests/test_use_chat_browser.py.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { createRoot } from "react-dom/client";

const chatId = new URLSearchParams(location.search).get("chat");

function App() {
  const { messages, sendMessage, status, error } = useChat({
    id: chatId,
    resume: true,
    transport: new DefaultChatTransport({ api: "/v1/ai-sdk/chat" }),
  });
  const stop = () => fetch(`/v1/ai-sdk/chat/${chatId}/stop`, { method: "POST" });
  return (
    <main>
      <p id="status">{status}</p>
      {error ? <p id="error">{String(error)}</p> : null}
      {messages.map((m) => (
        <div key={m.id} className={`msg ${m.role}`} data-id={m.id}>
          {m.parts.map((p, i) => (p.type === "text" ? <span key={i}>{p.text}</span> : null))}
        </div>
      ))}
      <button id="send" onClick={() => sendMessage({ text: "What is the weather in Tokyo?" })}>
        Send
      </button>
      <button id="stop" onClick={stop}>
        Stop
      </button>
    </main>
  );
}

createRoot(document.getElementById("root")).render(<App />);
