// WebSocket echo app and load client for benches/load/ws.sh.
//   node ws.mjs serve PORT                 echo every message back
//   node ws.mjs load URL CONNS SECONDS BYTES
// The load client keeps CONNS sockets, each sending one BYTES-byte binary message and
// waiting for its echo before the next (ping-pong), for SECONDS; it prints
// "messages <round trips> seconds <elapsed>" on stdout.
import { WebSocket, WebSocketServer } from "ws";

const [mode, ...args] = process.argv.slice(2);
if (mode === "serve") {
  const server = new WebSocketServer({ host: "127.0.0.1", port: Number(args[0]), perMessageDeflate: false });
  server.on("connection", (socket) => {
    socket.on("message", (data, binary) => socket.send(data, { binary }));
  });
} else if (mode === "load") {
  const [url, conns, seconds, bytes] = [args[0], Number(args[1]), Number(args[2]), Number(args[3])];
  const payload = Buffer.alloc(bytes, 120);
  let messages = 0;
  let stop = false;
  const started = process.hrtime.bigint();
  const sockets = [];
  await Promise.all(
    Array.from({ length: conns }, () => new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { perMessageDeflate: false });
      sockets.push(socket);
      socket.on("open", () => { socket.send(payload); resolve(); });
      socket.on("message", () => { messages += 1; if (!stop) socket.send(payload); });
      socket.on("error", reject);
    })),
  );
  setTimeout(() => {
    stop = true;
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(`messages ${messages} seconds ${elapsed.toFixed(3)}`);
    for (const socket of sockets) socket.terminate();
    process.exit(0);
  }, seconds * 1000);
} else {
  console.error("usage: node ws.mjs serve PORT | load URL CONNS SECONDS BYTES");
  process.exit(2);
}
