"""A new user's first session: the Python `websockets` client against `callwire --demo`.

Subscribes to `call.*.*`, expects the success reply of blackhole.md, then event frames of the
exact shape blackhole.md gives. Usage: blackhole_demo.py PORT [EVENTS]
"""
import asyncio
import json
import sys

import websockets

EVENT_KEYS = {"action", "subscribed_key", "subscription_key", "name", "routing_key", "data"}


async def main(port: int, wanted: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"action": "subscribe", "request_id": "r1",
                                  "data": {"binding": "call.*.*"}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply == {"action": "reply", "request_id": "r1", "status": "success",
                         "data": {"subscribed": "call.*.*", "subscriptions": ["call.*.*"]}}, reply
        for _ in range(wanted):
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert set(event) == EVENT_KEYS, sorted(event)
            assert event["action"] == "event"
            assert event["subscribed_key"] == "call.*.*"
            segments = event["routing_key"].split(".")
            assert len(segments) == 3 and segments[0] == "call", event["routing_key"]
            assert event["name"] == event["data"]["Event-Name"] == segments[1], event
            # Without --auth the socket acts for every account, so `*` is inserted.
            assert event["subscription_key"] == "call.*.*.*", event["subscription_key"]
            assert event["data"]["Call-ID"] == segments[2]
        print(f"received {wanted} events of the blackhole.md shape")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10))
