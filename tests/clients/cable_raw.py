"""A raw ActionCable client: Python `websockets`, no subprotocol, the JSON spoken by hand.

Usage: cable_raw.py PORT IDENTIFIER CALL_ID

Subscribes with IDENTIFIER exactly as given (any spacing), checks the welcome and the
confirmation byte for byte, prints {"event": "subscribed"}, then reads frames until the
`destroy` of CALL_ID, checking that every message frame starts with the identifier echoed
byte for byte. Prints each message frame as {"event": "frame", "raw": <text>} and, at the end,
{"event": "done"}. Pings in between must have the contract's shape.
"""
import asyncio
import json
import sys

import websockets


def out(line: dict) -> None:
    print(json.dumps(line), flush=True)


async def main(port: int, identifier: str, call_id: str) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/cable") as ws:
        assert ws.subprotocol is None, ws.subprotocol
        welcome = await asyncio.wait_for(ws.recv(), 5)
        assert welcome == '{"type":"welcome"}', welcome

        await ws.send(json.dumps({"command": "subscribe", "identifier": identifier}))
        echoed = json.dumps(identifier)  # the identifier as a JSON string, as callwire writes it
        confirm = await asyncio.wait_for(ws.recv(), 5)
        assert confirm == '{"identifier":' + echoed + ',"type":"confirm_subscription"}', confirm
        out({"event": "subscribed"})

        prefix = '{"identifier":' + echoed + ',"message":'
        while True:
            raw = await asyncio.wait_for(ws.recv(), 15)
            frame = json.loads(raw)
            if frame.get("type") == "ping":
                assert set(frame) == {"type", "message"}, raw
                assert isinstance(frame["message"], int), raw
                continue
            assert raw.startswith(prefix), raw
            assert frame["identifier"] == identifier, raw
            assert set(frame) == {"identifier", "message"}, raw
            out({"event": "frame", "raw": raw})
            message = frame["message"]
            if message["event_type"] == "destroy" and message["object"]["id"] == call_id:
                break
        out({"event": "done"})


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
