"""A Blackhole client over wss:// with Python `websockets` and Python's own TLS (ssl).

Usage: wss_blackhole.py URL CAFILE|-

Trusts only the CA in CAFILE (with `-`, the system's roots). Prints
{"event": "connected", "cert_sha256": <hex>} with the fingerprint of the certificate the
server presented, subscribes to `call.#`, then prints {"event": "event", "name": ...} per event
until killed. A refused handshake prints {"event": "refused", "error": <text>} and exits 0.
"""
import asyncio
import hashlib
import json
import ssl
import sys

import websockets


def out(line: dict) -> None:
    print(json.dumps(line), flush=True)


async def main(url: str, cafile: str) -> None:
    context = ssl.create_default_context(cafile=None if cafile == "-" else cafile)
    try:
        ws = await websockets.connect(url, ssl=context, open_timeout=10)
    except ssl.SSLCertVerificationError as err:
        out({"event": "refused", "error": str(err)})
        return
    # Read until killed: the connection is never closed from this side.
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    out({"event": "connected", "cert_sha256": hashlib.sha256(der).hexdigest()})
    request = {"action": "subscribe", "request_id": "wss", "data": {"binding": "call.#"}}
    await ws.send(json.dumps(request))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("action") == "event":
            out({"event": "event", "name": frame["name"]})
        elif frame.get("action") == "reply":
            out({"event": "reply", "status": frame["status"]})


asyncio.run(main(sys.argv[1], sys.argv[2]))
