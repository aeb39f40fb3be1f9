// Drives the real @rails/actioncable client (npm) against callwire's /cable, with `ws` as its
// WebSocket. Driven from tests/actioncable.rs, which asserts on what this prints.
//
//   node cable_official.js <ws-url> '<subscriptions as JSON: [{"name": ..., "params": {...}}]>'
//
// Prints one JSON line per thing seen:
//   {"event": "initialized"|"connected"|"disconnected"|"rejected"|"received", "sub": name, "data": ...}
//   {"event": "log", "text": ...}       the client's own logger (ActionCable.logger)
//   {"event": "raw", "data": ...}       every frame from the server except pings, as text
//   {"event": "stats", ...}             on the command `stats` (see below)
// Reads commands on stdin, one a line: `stats` prints what the connection monitor saw; `exit`
// (or the end of stdin) disconnects and exits 0.
//
// Browser globals the client uses that Node 20 lacks, shimmed here and nothing else:
// - `addEventListener` / `removeEventListener`: ConnectionMonitor.start()/stop() register a
//   `visibilitychange` listener on the window; there is no page to hide, so they do nothing.
// - `document` is NOT shimmed: the client needs it only to resolve a relative URL or read
//   <meta name="action-cable-url">, and this script always passes an absolute ws:// URL.
"use strict";

globalThis.addEventListener = () => {};
globalThis.removeEventListener = () => {};

const readline = require("readline");
const WebSocket = require("ws");
const ActionCable = require("@rails/actioncable");

const [url, subscriptionsJson] = process.argv.slice(2);
if (!url || !subscriptionsJson) {
  console.error("usage: cable_official.js <ws-url> <subscriptions JSON>");
  process.exit(2);
}

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

// Every server frame but pings, as text, and a count of pings: a listener on the socket the
// client opens, beside the client's own handler (which it installs as `onmessage`).
let pings = 0;
class WatchedWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols);
    this.addEventListener("message", (event) => {
      const text = String(event.data);
      let type;
      try {
        type = JSON.parse(text).type;
      } catch (_) {
        type = undefined;
      }
      if (type === "ping") {
        pings += 1;
      } else {
        print({ event: "raw", data: text });
      }
    });
  }
}

ActionCable.adapters.WebSocket = WatchedWebSocket;
ActionCable.adapters.logger = { log: (...parts) => print({ event: "log", text: parts.join(" ") }) };
ActionCable.logger.enabled = true;

const consumer = ActionCable.createConsumer(url);
const monitor = consumer.connection.monitor;
const counts = { connected: 0, disconnected: 0, rejected: 0, received: 0 };
// When the monitor last heard from the server as of each subscription's confirmation.
let heardAtConnect;

for (const { name, params } of JSON.parse(subscriptionsJson)) {
  consumer.subscriptions.create(params, {
    initialized() {
      print({ event: "initialized", sub: name, identifier: this.identifier });
    },
    connected(data) {
      counts.connected += 1;
      heardAtConnect = monitor.pingedAt;
      print({ event: "connected", sub: name, data });
    },
    disconnected(data) {
      counts.disconnected += 1;
      print({ event: "disconnected", sub: name, data });
    },
    rejected() {
      counts.rejected += 1;
      print({ event: "rejected", sub: name });
    },
    received(data) {
      counts.received += 1;
      print({ event: "received", sub: name, data });
    },
  });
}

const stats = () => ({
  event: "stats",
  ...counts,
  pings,
  reconnect_attempts: monitor.reconnectAttempts,
  stale: monitor.connectionIsStale(),
  heard_since_connect: heardAtConnect !== undefined && monitor.pingedAt > heardAtConnect,
  open: consumer.connection.isOpen(),
  protocol: consumer.connection.getProtocol() || null,
});

const exit = () => {
  consumer.disconnect();
  process.exit(0);
};

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  switch (line.trim()) {
    case "stats":
      print(stats());
      break;
    case "exit":
      exit();
      break;
    default:
      print({ event: "error", text: `unknown command ${line}` });
  }
});
commands.on("close", exit);
