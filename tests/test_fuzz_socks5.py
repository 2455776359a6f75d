"""Hostile SOCKS5 handshakes over real sockets, like test_fuzz_sockets for SOCKS4.

Valid SOCKS5 conversations (greeting, optional RFC 1929 credentials, a
CONNECT, BIND or UDP ASSOCIATE request with an IPv4, IPv6 or name address,
pipelined bytes) come from a seeded generator; most are then damaged by a
byte-level mutator, and all are sent to a real server on 127.0.0.1 in
bounded, concurrent batches, sometimes in pieces, sometimes with a
half-close.

An undamaged conversation has a predicted answer (granted and echoed,
refused with the right code, or the auth failure).  For a damaged one the
answer must still be a well-formed SOCKS5 answer sequence (a method choice
or 0xFF; then, after method 2, an auth status; then at most one reply, read
by the client-side parser), or silence, and the connection must end in
bounded time.  No log event may carry a failure or an error level, no
session may end "internal-error", and a normal client is served throughout.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from sockssuite import passwords
from sockssuite.wire import socks5 as wire

from . import support
from .support import Echo, LogCapture, connect_raw, listen, start_server
from .test_fuzz_sockets import FakeResolver, bad_events, mutate, normal_client, run_cases, split

REQUESTS = 1500
CONCURRENCY = 60
HANG_LIMIT = 8.0
USER, PASSWORD = b"alice", b"wonderland"


def conversation(rng: random.Random, echo_port: int):
    """A valid conversation and what the server must answer to it:
    ("granted", pipelined) | ("udp", b"") | ("refused", code) | ("auth-failed", None)."""
    auth = rng.random() < 0.4
    methods = bytes(rng.sample([0, 1, 2, 0x80], rng.randint(1, 3)))
    if auth and 2 not in methods:
        methods += b"\x02"
    if not auth and 0 not in methods:
        methods += b"\x00"
    if not auth and 2 in methods:
        methods = bytes(m for m in methods if m != 2) or b"\x00"
    data = wire.encode_greeting(methods)
    outcome = None
    if auth:
        right = rng.random() < 0.8
        password = PASSWORD if right else b"wrong"
        data += bytes([1, len(USER)]) + USER + bytes([len(password)]) + password
        if not right:
            outcome = ("auth-failed", None)
    command = rng.choice([wire.CONNECT] * 6 + [wire.BIND, wire.UDP_ASSOCIATE])
    host = rng.choice(["127.0.0.1", "localhost", "::1", "127.0.0.2", "nowhere.test"])
    port = echo_port if rng.random() < 0.8 else rng.randint(1, 65535)
    pipelined = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 32)))
    if command == wire.UDP_ASSOCIATE:
        host, port, pipelined = "0.0.0.0", 0, b""
    data += wire.encode_request(command, host, port) + pipelined
    if outcome is None:
        if command == wire.UDP_ASSOCIATE:
            outcome = ("udp", b"")
        elif host == "nowhere.test":
            outcome = ("refused", wire.HOST_UNREACHABLE)
        elif command == wire.BIND:
            outcome = ("refused", wire.NOT_ALLOWED)  # the rules permit CONNECT and UDP only
        elif host in ("127.0.0.1", "localhost") and port == echo_port:
            outcome = ("granted", pipelined)
        elif host == "nowhere.test":
            outcome = ("refused", wire.HOST_UNREACHABLE)
        else:
            outcome = ("refused", wire.NOT_ALLOWED)
    return data, outcome


def generate(echo_port: int, n: int, seed: int = 5):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        data, outcome = conversation(rng, echo_port)
        if rng.random() < 0.75:
            data, outcome = mutate(rng, data), None
        cases.append((data, outcome, rng.choice([1, 1, 2, 3, 7]), rng.random() < 0.2))
    return cases


def well_formed(received: bytes) -> str | None:
    """None when ``received`` is a possible SOCKS5 answer (possibly cut
    short by the server closing), else what is wrong with it."""
    if not received:
        return None
    if received[:1] != b"\x05":
        return f"answer does not start with version 5: {received[:20]!r}"
    if len(received) < 2:
        return "half a method choice"
    method, rest = received[1], received[2:]
    if method == 0xFF:
        return None if not rest else f"bytes after 0xFF: {rest[:20]!r}"
    if method not in (0, 2):
        return f"method {method} chosen"
    if method == 2 and rest:
        if rest[:2] == b"\x01\x01":
            return None if len(rest) == 2 else f"bytes after an auth failure: {rest[2:22]!r}"
        if rest[:2] != b"\x01\x00":
            return f"bad auth status {rest[:2]!r}"
        rest = rest[2:]
    if not rest:
        return None
    parser = wire.ReplyParser()
    try:
        reply = parser.feed(rest)
    except wire.SOCKS5Error as e:
        return f"malformed reply {rest[:24]!r}: {e}"
    if reply is None:
        return f"truncated reply {rest[:24]!r}"
    if reply.code != wire.SUCCEEDED and parser.leftover:
        return f"bytes after refusal {reply.code}: {parser.leftover[:20]!r}"
    return None


def success_seen(received: bytes) -> bool:
    """Whether a complete success reply is in ``received``."""
    if received[:2] not in (b"\x05\x00", b"\x05\x02"):
        return False
    rest = received[2:]
    if received[1] == 2:
        if rest[:2] != b"\x01\x00":
            return False
        rest = rest[2:]
    try:
        reply = wire.ReplyParser().feed(rest)
    except wire.SOCKS5Error:
        return False
    return reply is not None and reply.code == wire.SUCCEEDED


def expected(outcome, received: bytes) -> str | None:
    kind, detail = outcome
    rest = received[2:]
    if received[1:2] == b"\x02":
        if kind == "auth-failed":
            return None if rest == b"\x01\x01" else f"expected auth failure, got {rest[:20]!r}"
        rest = rest[2:]
    parser = wire.ReplyParser()
    reply = parser.feed(rest) if rest else None
    if reply is None:
        return f"no reply (expected {kind}): {received[:40]!r}"
    if kind == "refused":
        return None if reply.code == detail else f"reply {reply.code}, expected {detail}"
    if reply.code != wire.SUCCEEDED:
        return f"reply {reply.code}, expected success ({kind})"
    if kind == "granted" and parser.leftover != detail:
        return f"pipelined bytes: got {parser.leftover[:40]!r}, expected {detail[:40]!r}"
    return None


async def one_case(proxy_port: int, case, rng: random.Random, logs=None) -> str | None:
    data, outcome, pieces, half_close = case
    client = await connect_raw(proxy_port)
    local = f"127.0.0.1:{client.transport.getHost().port}"
    timer = reactor.callLater(HANG_LIMIT, client.transport.abortConnection)
    try:
        parts = split(data, pieces, rng)
        for i, part in enumerate(parts):
            if not client.transport.connected:
                break
            client.transport.write(part)
            if i < len(parts) - 1:
                await support.deferLater(rng.random() * 0.03)
        if half_close and client.transport.connected and not (outcome and outcome[0] == "udp"):
            client.transport.loseWriteConnection()
        # Wait for the end, or for a success (then the echo of what was
        # pipelined, if any), and close: a granted session stays open.
        for _ in range(int(HANG_LIMIT / 0.02)):
            if client.closed.called or success_seen(bytes(client.received)):
                break
            await support.deferLater(0.02)
        if not client.closed.called:
            if outcome and outcome[0] == "granted":
                for _ in range(100):  # the pipelined bytes' echo, within 2 s
                    if expected(outcome, bytes(client.received)) is None or client.closed.called:
                        break
                    await support.deferLater(0.02)
            client.transport.loseConnection()
        await client.closed
    finally:
        hung = not timer.active()
        if not hung:
            timer.cancel()
    received = bytes(client.received)
    if hung:
        return f"still open after {HANG_LIMIT}s: got {received[:40]!r} for {data[:60]!r}"
    if data[:1] == b"\x05":
        problem = well_formed(received)
        if problem is None and outcome is not None:
            problem = expected(outcome, received)
        if problem is not None:
            said = ""
            if logs is not None:  # what the server made of it, to tell a fault from a timing
                await support.deferLater(0.2)
                said = [(e.get("outcome"), e.get("detail")) for e in logs.named("session-closed")
                        if e.get("client") == local]
            return f"{problem} for {data[:70]!r} (pieces={pieces} half_close={half_close}; server: {said})"
    return None


class HostileSOCKS5Tests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_mutated_socks5_conversations(self):
        yield defer.ensureDeferred(self._fuzz())

    async def _fuzz(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo)
        echo_port = echo.getHost().port
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "passwords")
        passwords.set_password(path, USER.decode(), PASSWORD, rounds=4)
        server = await start_server(
            self, f"permit cmd=connect 127.0.0.0/8 127.0.0.1/32 eq {echo_port}\n"
                  "permit cmd=udp 127.0.0.0/8\n",
            handshake_timeout=3.0, bind_timeout=1.0, resolve_timeout=1.0, connect_timeout=2.0,
            passwords=passwords.load_passwords(path))
        server.factory.resolver = FakeResolver()
        port = support.port_of(server)
        cases = generate(echo_port, REQUESTS)
        kinds = [c[1][0] for c in cases if c[1] is not None]
        self.assertGreater(kinds.count("granted"), 50)
        self.assertGreater(kinds.count("auth-failed"), 5)
        self.assertGreater(kinds.count("udp"), 5)
        stop, latencies, normal_failures = [], [], []
        normal = defer.ensureDeferred(normal_client(port, echo_port, stop, latencies, normal_failures))
        rng = random.Random(11)
        started = time.monotonic()
        problems = await run_cases(cases, CONCURRENCY, lambda case: one_case(port, case, rng, logs))
        elapsed = time.monotonic() - started
        stop.append(True)
        await normal
        self.assertEqual(problems[:10], [], f"{len(problems)} of {REQUESTS} wrong")
        self.assertEqual(normal_failures, [])
        self.assertLess(max(latencies), 2.0, f"normal client's slowest handshake during {elapsed:.1f}s")
        await logs.wait_for("session-closed", REQUESTS + len(latencies), timeout=10)
        self.assertEqual(bad_events(logs.events), [])
        outcomes = {}
        for e in logs.named("session-closed"):
            outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        self.assertNotIn("internal-error", outcomes)
        self.assertGreater(outcomes.get("protocol-error", 0), REQUESTS // 10)
        self.assertGreater(outcomes.get("auth-failed", 0), 5)
        self.assertGreater(outcomes.get("closed", 0), 50)
