"""The seed's four filter examples (seeds/001_5edc152afeaacf2a.txt) with Python's `websockets`
client, connecting the way the seed does: ws://name:secret@host:port/communication_manager/ws/event.
The client sends the URL's userinfo as an HTTP Basic header on the upgrade; the server runs with
--auth, so a wrong password must be refused with 401 and the right one let in.

Events are published with the real `mosquitto_pub` on TOPIC_PREFIX/... . An unfiltered witness
socket proves every event went through the bridge; then each filtered socket switches to a
sentinel filter and a sentinel event is published: what a socket received before the sentinel
is exactly what its filters let in.

Usage: isymphony_filters.py PORT BROKER_PORT TOPIC_PREFIX NAME SECRET
"""
import asyncio
import json
import subprocess
import sys

import websockets
from websockets.exceptions import InvalidHandshake

PATH = "/communication_manager/ws/event"
T0 = 1_700_000_000_000  # epoch milliseconds, as iSymphony stamps its events

# A mixed stream of iSymphony-shaped events, plus one payload that is not JSON.
STREAM = [
    {"type": "login", "time": T0 + 1, "username": "mikey", "userId": "0b9e6c1e-3f1a-4d53-9c1f-5d1b2a7e0c01"},
    {"type": "logout", "time": T0 + 2, "username": "mikey", "userId": "0b9e6c1e-3f1a-4d53-9c1f-5d1b2a7e0c01"},
    {"type": "login", "time": T0 + 3, "username": "bob"},
    {"type": "dial", "time": T0 + 4, "username": "mikey", "callId": "c1"},
    {"type": "dial", "time": T0 + 5, "callId": "c2"},
    {"type": "userStatus", "time": T0 + 6, "username": "bob", "status": "away"},
    {"type": "linkEnd", "time": T0 + 7, "linkId": "l1"},
    "plain text, not JSON",
    {"type": "logout", "time": T0 + 8, "username": "bob"},
    {"type": "agentLogin", "time": T0 + 9, "username": "eve"},
    {"type": "login", "time": T0 + 10, "username": "mikey"},
]

# The seed's examples, in the JSON form the seed means, and the events (by `time`) each lets in.
EXAMPLES = {
    "type dial": ([{"property": "type", "value": "dial"}], [4, 5]),
    "login or logout": (
        [{"property": "type", "value": "login"}, {"property": "type", "value": "logout"}],
        [1, 2, 3, 8, 10],
    ),
    "login or logout, for mikey": (
        [{"property": "type", "value": "login"}, {"property": "type", "value": "logout"},
         {"property": "username", "value": "mikey"}],
        [1, 2, 10],
    ),
    "references a user": ([{"property": "username", "value": "*"}], [1, 2, 3, 4, 6, 8, 9, 10]),
}


def publish(broker_port: int, topic: str, payload: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker_port), "-q", "1",
                    "-t", topic, "-m", payload], check=True)


async def recv(ws) -> str:
    return await asyncio.wait_for(ws.recv(), 10)


async def set_filters(ws, filters) -> None:
    await ws.send(json.dumps({"type": "filter", "filters": filters}))
    response = json.loads(await recv(ws))
    assert response == {"type": "filterResponse", "status": "success", "filters": filters}, response


async def main(port: int, broker_port: int, prefix: str, name: str, secret: str) -> None:
    # A wrong password is refused before the upgrade.
    try:
        async with websockets.connect(f"ws://{name}:wrong-{secret}@127.0.0.1:{port}{PATH}"):
            raise AssertionError("a wrong password was let in")
    except InvalidHandshake as err:
        status = getattr(err, "status_code", None) or err.response.status_code
        assert status == 401, err
    print("wrong password: 401")

    url = f"ws://{name}:{secret}@127.0.0.1:{port}{PATH}"
    witness = await websockets.connect(url)
    sockets = {label: await websockets.connect(url) for label in EXAMPLES}
    for label, (filters, _) in EXAMPLES.items():
        await set_filters(sockets[label], filters)

    payloads = [item if isinstance(item, str) else json.dumps(item) for item in STREAM]
    for n, payload in enumerate(payloads):
        publish(broker_port, f"{prefix}/isymphony/event/{n}", payload)
    # The witness has no filters: it receives every event, the JSON ones byte for byte and the
    # other as a JSON string, in order.
    for payload, item in zip(payloads, STREAM):
        frame = await recv(witness)
        expected = json.dumps(item) if isinstance(item, str) else payload
        assert frame == expected, (frame, expected)
    print(f"witness: {len(payloads)} events verbatim")

    # Each socket switches to a sentinel filter. Events already on their way may come before the
    # response; they count. The sentinel is published once every socket has its response.
    sentinel = [{"property": "sentinel", "value": "*"}]
    received = {}
    for label, ws in sockets.items():
        await ws.send(json.dumps({"type": "filter", "filters": sentinel}))
        received[label] = []
        while True:
            frame = json.loads(await recv(ws))
            if frame.get("type") == "filterResponse":
                assert frame == {"type": "filterResponse", "status": "success",
                                 "filters": sentinel}, frame
                break
            received[label].append(frame["time"] - T0)
    publish(broker_port, f"{prefix}/isymphony/sentinel", json.dumps({"sentinel": True}))
    for label, (_, wanted) in EXAMPLES.items():
        got = received[label]
        while True:
            event = json.loads(await recv(sockets[label]))
            if "sentinel" in event:
                break
            got.append(event["time"] - T0)
        assert got == wanted, (label, got, wanted)
        print(f"{label}: {got}")

    for ws in [witness, *sockets.values()]:
        await ws.close()
    print("seed examples: ok")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
