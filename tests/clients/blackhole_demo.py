"""A new user's first session: the Python `websockets` client against `callwire --demo`.

Subscribes to `call.*.*`, expects the success reply of blackhole.md, then event frames of the
exact shape blackhole.md gives, their data in Kazoo's public, normalised form (`call_id`, not
`Call-ID`). Usage: blackhole_demo.py PORT [EVENTS]
"""
import asyncio
import json
import sys

import websockets

EVENT_KEYS = {"action", "subscribed_key", "subscription_key", "name", "routing_key", "epoch",
              "offset", "data"}


async def main(port: int, wanted: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"action": "subscribe", "request_id": "r1",
                                  "data": {"binding": "call.*.*"}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply == {"action": "reply", "request_id": "r1", "status": "success",
                         "data": {"subscribed": ["call.*.*"]}}, reply
        for _ in range(wanted):
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert set(event) == EVENT_KEYS, sorted(event)
            assert event["action"] == "event"
            # delivery.md: the event's position.
            assert isinstance(event["offset"], int) and event["epoch"], event
            assert event["subscribed_key"] == "call.*.*"
            segments = event["routing_key"].split(".")
            assert len(segments) == 3 and segments[0] == "call", event["routing_key"]
            data = event["data"]
            assert event["name"] == data["event_name"] == segments[1], event
            # Kazoo's names only: lower case, `_` for `-`, private headers such as Node gone.
            assert all(k == k.lower() and "-" not in k for k in data), sorted(data)
            assert "node" not in data and "server_id" not in data, sorted(data)
            # Without --auth the socket acts for every account, so `*` is inserted.
            assert event["subscription_key"] == "call.*.*.*", event["subscription_key"]
            assert data["call_id"] == segments[2]
        print(f"received {wanted} events of the blackhole.md shape")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10))
