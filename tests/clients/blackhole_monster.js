// A Blackhole client that behaves as Monster UI's socket library (monster-ui
// src/js/lib/monster.socket.js, 4.3 onwards) and its apps do, on Node with `ws`. Driven from
// tests/blackhole.rs, which asserts on what this prints.
//
//   node blackhole_monster.js <ws-url> <account_id> <auth_token> <binding>...
//
// What it copies from Monster UI, because that is what breaks on a server that differs:
// - one `subscribe` per binding, `{action, auth_token, request_id, data: {account_id, binding}}`;
// - on a reply it iterates `data.subscribed` (and `data.unsubscribed`) with `forEach` and
//   registers (or drops) each binding listed; a bare string there throws, as in the browser;
// - events are dispatched by `subscribed_key` to the listeners of a registered binding, and a
//   listener reads the event data by Kazoo's names (`call_id`, `to`, `caller_id_number`), as
//   Monster UI's apps do.
//
// Prints one JSON line per step: {"event": "registered"|"unregistered"|"received"|"error", ...}.
// Commands on stdin, one a line: `unbind <binding>` unsubscribes it; `exit` closes and exits 0.
"use strict";

const readline = require("readline");
const WebSocket = require("ws");

const [url, accountId, authToken, ...bindings] = process.argv.slice(2);
if (!url || !accountId || !authToken || bindings.length === 0) {
  console.error("usage: blackhole_monster.js <ws-url> <account_id> <auth_token> <binding>...");
  process.exit(2);
}

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const registered = new Map(); // binding -> listeners
const commands = new Map(); // request_id -> onReply
let nextId = 0;
const guid = () => `monster-${process.pid}-${++nextId}`;

const socket = new WebSocket(url);

function send(action, binding, onReply) {
  const requestId = guid();
  commands.set(requestId, onReply);
  socket.send(
    JSON.stringify({
      action,
      auth_token: authToken,
      request_id: requestId,
      data: { account_id: accountId, binding },
    }),
  );
}

// What an app's callback does with an event: read it by Kazoo's names.
function listener(binding) {
  return (data) => {
    if (typeof data.call_id !== "string") {
      throw new TypeError(`event without call_id: ${JSON.stringify(data)}`);
    }
    print({
      event: "received",
      binding,
      call_id: data.call_id,
      to: data.to,
      caller_id_number: data.caller_id_number,
      keys: Object.keys(data).sort(),
    });
  };
}

function onReply(reply) {
  const handler = commands.get(reply.request_id);
  if (handler) {
    commands.delete(reply.request_id);
    handler(reply);
  }
}

function onEvent(frame) {
  const bindingId = frame.subscribed_key;
  frame.data.binding = bindingId;
  const listeners = registered.get(bindingId) || [];
  listeners.forEach((callback) => callback(frame.data));
}

socket.on("open", () => {
  for (const binding of bindings) {
    send("subscribe", binding, (reply) => {
      if (reply.status !== "success") {
        print({ event: "error", binding, reply });
        return;
      }
      reply.data.subscribed.forEach((listed) => {
        if (!registered.has(listed)) {
          registered.set(listed, [listener(listed)]);
          print({ event: "registered", binding: listed });
        }
      });
    });
  }
});

socket.on("message", (raw) => {
  const frame = JSON.parse(String(raw));
  try {
    if (frame.action === "reply") {
      onReply(frame);
    } else if (frame.action === "event") {
      onEvent(frame);
    }
  } catch (err) {
    print({ event: "error", text: String(err), frame });
  }
});

socket.on("error", (err) => print({ event: "error", text: String(err) }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, binding] = line.trim().split(/\s+/);
  if (command === "unbind") {
    send("unsubscribe", binding, (reply) => {
      try {
        reply.data.unsubscribed.forEach((gone) => {
          registered.delete(gone);
          print({ event: "unregistered", binding: gone });
        });
        const left = [];
        reply.data.subscribed.forEach((still) => left.push(still));
        print({ event: "left", bindings: left });
      } catch (err) {
        print({ event: "error", text: String(err), reply });
      }
    });
  } else if (command === "exit") {
    socket.close();
    process.exit(0);
  }
});
