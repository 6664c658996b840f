"""The demo device publishes a few telemetry readings to its own topic.

Usage (next to a running `portcullis serve --dev`):  python3 docs/examples/device_publish.py [COUNT]
Needs `pip install websockets`.
"""
import asyncio, json, os, ssl, sys
import websockets

PKI = os.environ.get("PORTCULLIS_PKI", "pki")
URL = os.environ.get("PORTCULLIS_URL", "wss://localhost:8443/v1/messages")


async def main(count):
    tls = ssl.create_default_context(cafile=f"{PKI}/ca.crt")
    tls.load_cert_chain(f"{PKI}/issued/demo-device.crt", f"{PKI}/private/demo-device.key")
    async with websockets.connect(URL, ssl=tls) as ws:
        for n in range(count):
            reading = {"seq": n, "celsius": 20 + n / 10}
            await ws.send(json.dumps({"type": "publish", "topic": "devices/demo-device/telemetry",
                                      "payload": reading, "id": f"pub-{n}"}))
            print("device:", await ws.recv(), flush=True)  # {"type":"ack","id":"pub-N"}
        # Another device's topic is not ours: the gateway answers an error and the session stays open.
        await ws.send(json.dumps({"type": "publish", "topic": "devices/device-9/telemetry", "payload": 1, "id": "x"}))
        print("device:", await ws.recv(), flush=True)


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
