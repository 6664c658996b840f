#!/usr/bin/env python3
"""The clients of the hostile-input suite (Tests/PortcullisCLITests/HostileInputTests.swift).

    python3 Tests/hostile_client.py --port PORT --dir GATEWAY_DIRECTORY --max-message-bytes N

Reads one JSON request a line on standard input and answers each with one JSON line on standard output:

    {"op": "case", "name": "ws.unmasked_frame"}  runs one hostile case and reports what the gateway did
    {"op": "good"}                               a well-behaved device: an echo and a broker round trip,
                                                 through the `websockets` library (not this file's framing)

A case reports observations, never verdicts: the Swift test holds the expectations. Every report has
`peers` (the client addresses of the connections the case opened, as the audit log's `peer` shows them; each
from a loopback address of its own)
and `error` (null, or the traceback of something this script did not expect). The other fields:

    alert        the TLS alert the gateway sent (`protocol_version`, `certificate_required`, ...)
    closed       the gateway closed the connection (end of file or reset) before the deadline
    status       the HTTP status of the first answer; `statuses` every answer read before the end
    close_code   the WebSocket close code of the gateway's close frame
    echoes       the text messages echoed before the close; `echoed` whether the message sent came back
    answer       the broker's answer: its `type`, and `:code` for an error (`error:invalid_topic`)
    pings/pongs  pings sent and pongs received; `sent` and `echoed_messages`, messages sent and echoed
    received     whatever the gateway sent where it should have sent nothing
    elapsed      seconds the case took from connecting to the observation that ends it

Certificates: the gateway's PKI in DIR/pki (`ca.crt`, `issued/NAME.crt`, `private/NAME.key`), and the
hostile ones the test makes in DIR/hostile (NAME.pem: certificate(s), NAME.key).
"""

import argparse
import json
import os
import random
import select
import socket
import ssl
import struct
import sys
import time
import traceback

from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.sync.client import connect as websocket_connect

DEADLINE = 10.0  # seconds any single wait may take: generous, the machine is shared
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    50: "decode_error", 51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security",
    80: "internal_error", 109: "missing_extension", 112: "unrecognized_name", 116: "certificate_required",
}

options = None


# MARK: Connections


class Conn:
    """A socket (plain or TLS) with a read buffer; reads wait at most DEADLINE."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        sock.settimeout(DEADLINE)

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the gateway closed the connection")
        self.buffer += chunk

    def until(self, marker):
        while marker not in self.buffer:
            self.fill()
        index = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:index], self.buffer[index:]
        return data

    def exact(self, count):
        while len(self.buffer) < count:
            self.fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, data):
        """Sends everything; a gateway that closed first is not an error here (what it sent is still read)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # reset, broken pipe, TLS error, timeout
            return False

    def closed(self):
        """Whether the gateway closes the connection within DEADLINE (what it still sends is discarded)."""
        self.buffer = b""
        try:
            while self.sock.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:  # reset, or TLS ended without close_notify
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# Every connection of a case comes from a loopback address of its own (127.0.0.2, 127.0.0.3, ...), so that its
# audit records are told apart by `peer` from the good client's (127.0.0.1) and from each other's, however
# soon a port is reused.
SOURCES = (f"127.0.{n >> 8}.{n & 255}" for n in range(2, 1 << 16) if 0 < n & 255 < 255)


def tcp(receive_buffer=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((next(SOURCES), 0))
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", options.port))
    host, port = sock.getsockname()[:2]
    return sock, f"{host}:{port}"


def pki(name):
    return f"{options.dir}/pki/issued/{name}.crt", f"{options.dir}/pki/private/{name}.key"


def hostile(name):
    return f"{options.dir}/hostile/{name}.pem", f"{options.dir}/hostile/{name}.key"


def tls_context(credential=None):
    context = ssl.create_default_context(cafile=f"{options.dir}/pki/ca.crt")
    if credential:
        context.load_cert_chain(*credential)
    return context


def mtls(credential=None, receive_buffer=None):
    """A TLS connection presenting `credential` (default: the demo device's certificate)."""
    sock, peer = tcp(receive_buffer)
    wrapped = tls_context(credential or pki("demo-device")).wrap_socket(sock, server_hostname="localhost")
    return Conn(wrapped, peer)


# MARK: TLS by hand


def u16(value):
    return struct.pack(">H", value)


def client_hello(version, suites, record_version=0x0301):
    """A ClientHello (without `supported_versions`: `version` is what it offers) with the extensions a
    TLS 1.2 client sends: SNI, groups (x25519, P-256), point formats, signature algorithms."""
    def extension(kind, data):
        return u16(kind) + u16(len(data)) + data

    name = b"localhost"
    extensions = (
        extension(0x0000, u16(len(name) + 3) + b"\x00" + u16(len(name)) + name)
        + extension(0x000A, u16(4) + u16(0x001D) + u16(0x0017))
        + extension(0x000B, b"\x01\x00")
        + extension(0x000D, u16(6) + u16(0x0403) + u16(0x0804) + u16(0x0401))
    )
    body = (
        u16(version) + random.Random(version).randbytes(32) + b"\x00"
        + u16(2 * len(suites)) + b"".join(u16(suite) for suite in suites)
        + b"\x01\x00" + u16(len(extensions)) + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + u16(record_version) + u16(len(handshake)) + handshake


def raw_tls(data, then_shutdown=False):
    """Sends `data` on a plain TCP connection to the TLS port; reports the TLS records that come back."""
    sock, peer = tcp()
    conn = Conn(sock, peer)
    started = time.monotonic()
    conn.send(data)
    if then_shutdown:
        sock.shutdown(socket.SHUT_WR)
    alert, server_hello, closed, received = None, False, False, b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            received += chunk
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    while len(received) >= 5:
        kind, length = received[0], struct.unpack(">H", received[3:5])[0]
        record, received = received[5:5 + length], received[5 + length:]
        if kind == 0x15 and len(record) >= 2 and alert is None:
            alert = ALERTS.get(record[1], str(record[1]))
        elif kind == 0x16:
            server_hello = True
    conn.close()
    return {"peers": [peer], "alert": alert, "server_hello": server_hello, "closed": closed,
            "elapsed": time.monotonic() - started}


def alert_name(error):
    """`TLSV13_ALERT_CERTIFICATE_REQUIRED` -> `certificate_required`; other TLS errors as OpenSSL names them."""
    reason = getattr(error, "reason", None) or str(error)
    for prefix in ("SSLV3_ALERT_", "TLSV13_ALERT_", "TLSV1_ALERT_"):
        if reason.startswith(prefix):
            return reason[len(prefix):].lower()
    return reason


def presenting(credential):
    """A full handshake presenting `credential` (None: no certificate), then waiting without sending
    anything: the gateway verifies the certificate at the client's Finished, and answers with an alert."""
    sock, peer = tcp()
    context = tls_context(credential)
    started = time.monotonic()
    alert, closed = None, False
    try:
        wrapped = context.wrap_socket(sock, server_hostname="localhost")
        wrapped.settimeout(DEADLINE)
        if wrapped.recv(1) == b"":
            closed = True
    except ssl.SSLError as error:
        alert, closed = alert_name(error), True
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    sock.close()
    return {"peers": [peer], "alert": alert, "closed": closed, "elapsed": time.monotonic() - started}


# MARK: HTTP


def request(path="/v1/echo", method="GET", version="HTTP/1.1", omit=(), extra=()):
    fields = [("Host", "localhost"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]
    fields = [field for field in fields if field[0] not in omit] + list(extra)
    head = f"{method} {path} {version}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    return head.encode("latin-1")


def response(conn, head_only=False):
    """One HTTP answer: (status, headers with lowercase names, body)."""
    head = conn.until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = 0 if head_only or status == 101 else int(headers.get("content-length", "0"))
    return status, headers, conn.exact(length)


def http_case(data, head_only=False):
    """Sends `data` after a good mTLS handshake; reads every answer until the gateway closes."""
    conn = mtls()
    started = time.monotonic()
    conn.send(data)
    statuses, result = [], {"peers": [conn.peer]}
    try:
        while True:
            status, headers, body = response(conn, head_only)
            statuses.append(status)
            if len(statuses) == 1:
                result.update(status=status, body=body.decode("utf-8", "replace").strip(), allow=headers.get("allow"))
            if status == 101:
                result["close_code"], before = await_close(conn)
                result["echoes"] = [payload.decode("utf-8", "replace") for opcode, payload in before if opcode == TEXT]
                break
    except EOFError:
        result["closed"] = True
    except (socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    result.setdefault("closed", conn.closed())
    result.update(statuses=statuses, elapsed=time.monotonic() - started)
    conn.close()
    return result


def slowloris():
    """The upgrade request one byte every 300 ms: the handshake deadline must end it."""
    conn = mtls()
    started = time.monotonic()
    result = {"peers": [conn.peer], "closed": False}
    for byte in request():
        if not conn.send(bytes([byte])):
            result["closed"] = True
            break
        readable, _, _ = select.select([conn.sock], [], [], 0.3)
        if readable or conn.sock.pending():
            try:
                data = conn.sock.recv(65536)
                if data:
                    result["received"] = data.decode("latin-1")
            except OSError:
                pass
            result["closed"] = True
            break
        if time.monotonic() - started > 3 * DEADLINE:
            break
    result["elapsed"] = time.monotonic() - started
    conn.close()
    return result


# MARK: WebSocket


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
    """A client frame; `length` overrides the length field (the payload sent is still `payload`)."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    masked = 0x80 if mask else 0
    if length < 126:
        head += bytes([masked | length])
    elif length < 1 << 16:
        head += bytes([masked | 126]) + u16(length)
    else:
        head += bytes([masked | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    stream = (key * (len(payload) // 4 + 1))[:len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(payload), "big")
    return head + key + masked


def close_frame(code, reason=b""):
    return frame(CLOSE, u16(code) + reason)


def read_frame(conn):
    first, second = conn.exact(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", conn.exact(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", conn.exact(8))[0]
    if second & 0x80:
        conn.exact(4)  # a server never masks; read past it anyway
    return first & 0x0F, conn.exact(length)


def upgraded(path="/v1/echo", credential=None, receive_buffer=None):
    conn = mtls(credential, receive_buffer)
    conn.send(request(path))
    status, _, _ = response(conn)
    if status != 101:
        raise RuntimeError(f"the upgrade to {path} was answered {status}")
    return conn


def await_close(conn):
    """Reads up to the gateway's close frame and answers it; returns (its code, frames read before it)."""
    before = []
    try:
        while True:
            opcode, payload = read_frame(conn)
            if opcode == CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                conn.send(close_frame(code) if code else frame(CLOSE))
                return code, before
            before.append((opcode, payload))
    except (EOFError, socket.timeout, ConnectionResetError, ssl.SSLError):
        return None, before


def ws_case(*frames, path="/v1/echo", credential=None):
    """Sends `frames` on a fresh session; reports the gateway's close code and that it then closed."""
    conn = upgraded(path, credential)
    started = time.monotonic()
    conn.send(b"".join(frames))
    code, before = await_close(conn)
    result = {"peers": [conn.peer], "close_code": code, "frames_before_close": len(before),
              "closed": conn.closed(), "elapsed": time.monotonic() - started}
    conn.close()
    return result


def ping_flood(pings=16000):
    """Pings (125-byte payloads) in batches without reading; then reads everything back, asks for an
    echo to know it has, and closes. The gateway answers only the latest of the pings that wait."""
    conn = upgraded(receive_buffer=4096)
    started = time.monotonic()
    batch = b"".join(frame(PING, b"p" * 125) for _ in range(500))
    sent = 0
    while sent < pings:
        if not conn.send(batch):
            break
        sent += 500
    conn.send(frame(TEXT, b"after the flood"))
    pongs, echoed, code = 0, False, None
    try:
        while not echoed:
            opcode, payload = read_frame(conn)
            if opcode == PONG:
                pongs += 1
            elif opcode == TEXT:
                echoed = payload == b"after the flood"
            elif opcode == CLOSE:
                code = struct.unpack(">H", payload[:2])[0]
                break
    except (EOFError, socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    if echoed:
        conn.send(close_frame(1000))
        code, _ = await_close(conn)
    result = {"peers": [conn.peer], "pings": sent, "pongs": pongs, "echoed": echoed, "close_code": code,
              "closed": conn.closed(), "elapsed": time.monotonic() - started}
    conn.close()
    return result


def audited(peer, event):
    """Waits up to DEADLINE for the gateway's audit record of `event` for the connection from `peer`."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with open(f"{options.dir}/audit/audit.jsonl", "rb") as log:
            for line in log:
                if f'"peer":"{peer}"'.encode() in line and f'"event":"{event}"'.encode() in line:
                    return True
        time.sleep(0.05)
    return False


def echo_without_reading(messages=20):
    """Messages of max_message_bytes that the echo route sends back to a client that does not read: once the
    kernel's buffers are full, what waits in the gateway reaches max_outbound_bytes and the session is closed.
    The client reads only once the gateway has decided (its audit record says so), or gave up deciding: the
    gateway's receive buffer may still hold messages when the last is sent, and reading then would drain it."""
    conn = upgraded(receive_buffer=4096)
    started = time.monotonic()
    message = frame(BINARY, b"e" * MAX)
    sent = 0
    while sent < messages and conn.send(message):
        sent += 1
    audited(conn.peer, "session_slow_consumer")
    echoes, code = 0, None
    try:
        while True:
            opcode, payload = read_frame(conn)
            if opcode == BINARY:
                echoes += 1
            elif opcode == CLOSE:
                code = struct.unpack(">H", payload[:2])[0]
                conn.send(close_frame(code))
                break
    except (EOFError, socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    result = {"peers": [conn.peer], "sent": sent, "echoed_messages": echoes, "close_code": code, "closed": conn.closed(),
              "elapsed": time.monotonic() - started}
    conn.close()
    return result


def at_limit(size):
    """A binary message of `size` bytes: echoed whole when it is within max_message_bytes."""
    conn = upgraded()
    payload = random.Random(size).randbytes(size)
    conn.send(frame(BINARY, payload))
    opcode, echo = read_frame(conn)
    conn.send(close_frame(1000))
    code, _ = await_close(conn)
    result = {"peers": [conn.peer], "echoed": opcode == BINARY and echo == payload, "close_code": code,
              "closed": conn.closed()}
    conn.close()
    return result


# MARK: Broker


def broker(message, binary=False):
    """One request from the demo operator on /v1/messages; reports the answer, then closes normally."""
    conn = upgraded("/v1/messages", pki("demo-operator"))
    started = time.monotonic()
    conn.send(frame(BINARY if binary else TEXT, message))
    result = {"peers": [conn.peer]}
    opcode, payload = read_frame(conn)
    result["elapsed"] = time.monotonic() - started
    if opcode == TEXT:
        answer = json.loads(payload)
        result["answer"] = answer.get("type") + (f":{answer['code']}" if "code" in answer else "")
        result["answer_id"] = answer.get("id")
    elif opcode == CLOSE:
        result["close_code"] = struct.unpack(">H", payload[:2])[0]
    if "close_code" not in result:
        conn.send(close_frame(1000))
        result["close_code"], _ = await_close(conn)
    result["closed"] = conn.closed()
    conn.close()
    return result


def publish(topic, payload=b"1", id=b'"p"'):
    return b'{"type":"publish","topic":' + json.dumps(topic).encode() + b',"payload":' + payload + b',"id":' + id + b"}"


def distinct_keys(count):
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    keys = (a + b + c + d for a in alphabet for b in alphabet for c in alphabet for d in alphabet)
    return b",".join(f'"{key}":0'.encode() for key, _ in zip(keys, range(count)))


# MARK: The cases

MAX = None  # max_message_bytes, from the command line

CASES = {
    # Malformed TLS, before any certificate.
    "tls.garbage": lambda: raw_tls(random.Random(14).randbytes(4096)),
    "tls.plain_http": lambda: raw_tls(b"GET /v1/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    "tls.oversized_record": lambda: raw_tls(b"\x16\x03\x01\xff\xff" + random.Random(1).randbytes(4096)),
    "tls.truncated_hello": lambda: raw_tls(client_hello(0x0303, [0xC02B])[:60], then_shutdown=True),
    "tls.stalled_hello": lambda: raw_tls(client_hello(0x0303, [0xC02B])[:60]),
    "tls.sslv3_hello": lambda: raw_tls(client_hello(0x0300, [0x002F, 0x000A], record_version=0x0300)),
    "tls.tls10_hello": lambda: raw_tls(client_hello(0x0301, [0xC009, 0xC013, 0x002F])),
    "tls.tls11_hello": lambda: raw_tls(client_hello(0x0302, [0xC009, 0xC013, 0x002F])),
    # TLS 1.2 offers of nothing but suites the gateway refuses: RSA key exchange (no forward secrecy),
    # ECDHE with CBC, and the legacy rest (DHE, 3DES, RC4, NULL, export).
    "tls.rsa_key_exchange_only": lambda: raw_tls(client_hello(0x0303, [0x009C, 0x009D, 0x002F, 0x0035])),
    "tls.ecdhe_cbc_only": lambda: raw_tls(client_hello(0x0303, [0xC009, 0xC00A, 0xC023, 0xC013, 0xC027])),
    "tls.legacy_suites_only": lambda: raw_tls(client_hello(0x0303, [0x009E, 0x000A, 0x0005, 0x0004, 0x0002, 0x0003])),
    # Full handshakes with certificates the gateway must refuse.
    "tls.no_client_certificate": lambda: presenting(None),
    "tls.expired_certificate": lambda: presenting(hostile("expired")),
    "tls.wrong_ca_certificate": lambda: presenting(hostile("foreign")),
    "tls.server_auth_only_certificate": lambda: presenting(pki("server-auth-only")),
    "tls.self_signed_certificate": lambda: presenting(hostile("self-signed")),
    "tls.long_chain": lambda: presenting(hostile("long-chain")),
    # HTTP after a good mTLS handshake.
    "http.slowloris": slowloris,
    "http.huge_header_block": lambda: http_case(request(extra=[(f"X-Filler-{i}", "f" * 1000) for i in range(120)])),
    "http.header_block_over_limit": lambda: http_case(request(extra=[("X-Filler", "f" * 9000)])),
    "http.duplicate_host": lambda: http_case(request(extra=[("Host", "evil.example")])),
    "http.duplicate_websocket_key": lambda: http_case(request(extra=[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")])),
    "http.duplicate_upgrade": lambda: http_case(request(extra=[("Upgrade", "websocket")]) + close_frame(1000)),
    "http.missing_host": lambda: http_case(request(omit=["Host"])),
    "http.missing_websocket_key": lambda: http_case(request(omit=["Sec-WebSocket-Key"])),
    "http.asterisk_target": lambda: http_case(request(path="*")),
    "http.absolute_form_target": lambda: http_case(
        request(path=f"https://localhost:{options.port}/v1/echo?from=absolute") + close_frame(1000)),
    "http.path_of_10k": lambda: http_case(request(path="/v1/echo/" + "a" * 10240)),
    "http.percent_nul_path": lambda: http_case(request(path="/v1/echo%00")),
    "http.raw_nul_path": lambda: http_case(request(path="/v1/echo\x00")),
    "http.post": lambda: http_case(request(method="POST")),
    "http.put": lambda: http_case(request(method="PUT")),
    "http.delete": lambda: http_case(request(method="DELETE")),
    "http.head": lambda: http_case(request(method="HEAD"), head_only=True),
    "http.options": lambda: http_case(request(method="OPTIONS")),
    "http.connect": lambda: http_case(request(path="localhost:443", method="CONNECT")),
    "http.invalid_method": lambda: http_case(request(method="BREW")),
    "http.http_1_0": lambda: http_case(request(version="HTTP/1.0")),
    "http.pipelined_after_refusal": lambda: http_case(request(path="/nowhere") + request()),
    "http.pipelined_upgrades": lambda: http_case(request() + request()),
    "http.upgrade_with_body": lambda: http_case(
        request(extra=[("Content-Length", "10")]) + b"0123456789" + frame(TEXT, b"after the body") + close_frame(1000)),
    # WebSocket frames after a good upgrade on /v1/echo.
    "ws.unmasked_frame": lambda: ws_case(frame(TEXT, b"hello", mask=False)),
    "ws.reserved_data_opcode": lambda: ws_case(frame(0x3, b"x")),
    "ws.reserved_control_opcode": lambda: ws_case(frame(0xB, b"x")),
    "ws.rsv1": lambda: ws_case(frame(TEXT, b"x", rsv=4)),
    "ws.rsv2": lambda: ws_case(frame(TEXT, b"x", rsv=2)),
    "ws.rsv3": lambda: ws_case(frame(BINARY, b"x", rsv=1)),
    "ws.length_2_63_minus_1": lambda: ws_case(frame(BINARY, b"x" * 64, length=(1 << 63) - 1)),
    "ws.length_2_64_minus_1": lambda: ws_case(frame(BINARY, b"x" * 64, length=(1 << 64) - 1)),
    "ws.control_frame_of_126": lambda: ws_case(frame(PING, b"p" * 126)),
    "ws.fragmented_ping": lambda: ws_case(frame(PING, b"p", fin=False), frame(CONTINUATION, b"q")),
    "ws.continuation_without_start": lambda: ws_case(frame(CONTINUATION, b"x")),
    "ws.new_message_inside_fragmented": lambda: ws_case(frame(TEXT, b"a", fin=False), frame(TEXT, b"b")),
    "ws.invalid_utf8": lambda: ws_case(frame(TEXT, b"caf\xc3\x28")),
    "ws.invalid_utf8_fragment": lambda: ws_case(frame(TEXT, b"ok", fin=False), frame(CONTINUATION, b"\xff", fin=False)),
    "ws.close_of_one_byte": lambda: ws_case(frame(CLOSE, b"\x03")),
    "ws.close_code_1005": lambda: ws_case(close_frame(1005)),
    "ws.close_code_5000": lambda: ws_case(close_frame(5000)),
    "ws.close_reason_not_utf8": lambda: ws_case(close_frame(1000, b"\xff\xfe")),
    "ws.ping_flood": ping_flood,
    "ws.echo_without_reading": echo_without_reading,
    "ws.message_at_max": lambda: at_limit(MAX),
    "ws.message_just_over_max": lambda: ws_case(frame(BINARY, b"x" * (MAX + 1))),
    "ws.fragments_just_over_max": lambda: ws_case(
        frame(BINARY, b"x" * (MAX // 2), fin=False), frame(CONTINUATION, b"y" * (MAX - MAX // 2 + 1))),
    # Broker requests from the demo operator on /v1/messages.
    "broker.malformed_json": lambda: broker(b'{"type":"publish","topic":"devices/d/commands/a","payload":{"a":'),
    "broker.not_an_object": lambda: broker(b'["publish"]'),
    "broker.deep_nesting": lambda: broker(publish("devices/d/commands/a", b"[" * 100000 + b"]" * 100000)),
    "broker.30000_keys": lambda: broker(b"{" + distinct_keys(30000) + b"}"),
    "broker.30000_keys_in_payload": lambda: broker(publish("devices/d/commands/a", b"{" + distinct_keys(30000) + b"}")),
    "broker.duplicate_keys": lambda: broker(
        b'{"type":"publish","topic":"devices/d/commands/a","topic":"devices/e/commands/a","payload":1,"id":"d"}'),
    "broker.huge_topic": lambda: broker(publish("devices/d/commands/" + "a" * 100000)),
    "broker.topic_with_nul": lambda: broker(publish("devices/d/commands/a\x00b")),
    "broker.publish_to_plus": lambda: broker(publish("devices/+/commands/a")),
    "broker.publish_to_hash": lambda: broker(publish("devices/d/commands/#")),
    "broker.binary_topic_past_end": lambda: broker(b"\x01\xff\xff" + b"devices/d/commands/a", binary=True),
    "broker.binary_header_cut": lambda: broker(b"\x01\x00", binary=True),
    "broker.binary_topic_not_utf8": lambda: broker(b"\x01\x00\x02\xff\xfe" + b"payload", binary=True),
    "broker.binary_unknown_kind": lambda: broker(b"\x07\x00\x01a", binary=True),
}


def good(counter=[0]):
    """A well-behaved device, through the websockets library: an echo on /v1/echo and a publish on
    /v1/messages answered with an ack. Retries only what is not an answer from the gateway (a reset, a
    timeout, a connection closed before any answer: the 2 s handshake deadline on a loaded machine) until
    DEADLINE; an HTTP refusal fails at once, and so does a session that fails after the upgrade."""
    counter[0] += 1
    context = tls_context(pki("demo-device"))
    base = f"wss://127.0.0.1:{options.port}"
    started = time.monotonic()
    attempts, last = 0, None
    while time.monotonic() - started < DEADLINE:
        attempts += 1
        try:
            with websocket_connect(f"{base}/v1/echo", ssl=context, open_timeout=DEADLINE,
                                   close_timeout=DEADLINE) as session:
                text = f"good {counter[0]}"
                session.send(text)
                echo = session.recv(timeout=DEADLINE)
            with websocket_connect(f"{base}/v1/messages", ssl=context, open_timeout=DEADLINE,
                                   close_timeout=DEADLINE) as session:
                session.send(json.dumps({"type": "publish", "topic": "devices/demo-device/telemetry",
                                         "payload": {"n": counter[0]}, "id": counter[0]}))
                ack = json.loads(session.recv(timeout=DEADLINE))
            return {"echoed": echo == text, "acked": ack == {"type": "ack", "id": counter[0]},
                    "attempts": attempts, "elapsed": time.monotonic() - started}
        except InvalidStatus as refusal:
            return {"error": f"refused: HTTP {refusal.response.status_code}", "attempts": attempts}
        except (OSError, TimeoutError, EOFError, InvalidMessage) as error:
            last = repr(error)
            time.sleep(0.2)
    return {"error": f"no answer within {DEADLINE} s: {last}", "attempts": attempts}


def main():
    global options, MAX
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--max-message-bytes", type=int, required=True)
    options = parser.parse_args()
    MAX = options.max_message_bytes
    print(json.dumps({"ready": True, "cases": sorted(CASES)}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "good":
                report = good()
            else:
                report = CASES[command["name"]]()
            report.setdefault("error", None)
        except Exception:
            report = {"error": traceback.format_exc()}
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
