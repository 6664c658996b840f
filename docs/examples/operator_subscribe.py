"""The demo operator subscribes to every device's telemetry and prints what arrives.

Usage (next to a running `portcullis serve --dev`):  python3 docs/examples/operator_subscribe.py [COUNT]
Stops after COUNT messages (default: never). Needs `pip install websockets`.
"""
import asyncio, json, os, ssl, sys
import websockets

PKI = os.environ.get("PORTCULLIS_PKI", "pki")
URL = os.environ.get("PORTCULLIS_URL", "wss://localhost:8443/v1/messages")


async def main(count):
    tls = ssl.create_default_context(cafile=f"{PKI}/ca.crt")
    tls.load_cert_chain(f"{PKI}/issued/demo-operator.crt", f"{PKI}/private/demo-operator.key")
    async with websockets.connect(URL, ssl=tls) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "devices/+/telemetry", "id": "sub-1"}))
        print("operator:", await ws.recv(), flush=True)  # {"type":"ack","id":"sub-1"}
        received = 0
        async for frame in ws:
            message = json.loads(frame)
            print(f"operator: {message['topic']} from {message['from']}: {json.dumps(message['payload'])}", flush=True)
            received += 1
            if count and received >= count:
                return


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
