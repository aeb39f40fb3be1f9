// Drives the real @anycable/core client (npm) with AnyCable's extended protocol
// (`actioncable-v1-ext-json`) against callwire's /cable, with `ws` as its WebSocket. Driven
// from tests/resume.rs, which asserts on what this prints.
//
//   node anycable_ext.mjs <ws-url> '<ApiChannel params as JSON>'
//
// Prints one JSON line per thing seen:
//   {"event": "connect", "reconnect": bool, "restored": bool}   the cable (re)connected
//   {"event": "disconnect"}                                   the cable lost its connection
//   {"event": "channel", "state": "connect"|"disconnect"|..., "restored": bool}
//   {"event": "message", "data": <message>, "meta": {"stream", "epoch", "offset"}}
//   {"event": "info", "type": "history_received"|"history_not_found"}
//   {"event": "frame", "data": <frame>}   every server frame with a `type` but pings, parsed
// Reads `exit` (or the end of stdin) to disconnect and exit 0.
import readline from "node:readline";
import WebSocket from "ws";
import { createCable } from "@anycable/core";

const [url, paramsJson] = process.argv.slice(2);
if (!url || !paramsJson) {
  console.error("usage: anycable_ext.mjs <ws-url> <params JSON>");
  process.exit(2);
}

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

// The protocol frames (welcome, confirmations, history answers) as the server sent them, from
// a listener beside the client's own.
class WatchedWebSocket extends WebSocket {
  constructor(address, protocols, options) {
    super(address, protocols, options);
    this.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(String(event.data));
      } catch (_) {
        return;
      }
      if (frame.type && frame.type !== "ping") print({ event: "frame", data: frame });
    });
  }
}

const cable = createCable(url, {
  protocol: "actioncable-v1-ext-json",
  websocketImplementation: WatchedWebSocket,
  logLevel: "error",
});
cable.on("connect", ({ reconnect, restored }) => print({ event: "connect", reconnect, restored }));
cable.on("disconnect", () => print({ event: "disconnect" }));

const channel = cable.subscribeTo("ApiChannel", JSON.parse(paramsJson));
for (const state of ["connect", "disconnect", "close"]) {
  channel.on(state, (info) => print({ event: "channel", state, restored: !!(info && info.restored) }));
}
channel.on("message", (data, meta) => print({ event: "message", data, meta }));
channel.on("info", (info) => print({ event: "info", type: info.type }));

const exit = () => {
  cable.disconnect();
  process.exit(0);
};
const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (line.trim() === "exit") exit();
});
commands.on("close", exit);
