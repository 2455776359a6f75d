"""Hostile handshakes over real sockets (issue 9).

Valid SOCKS4/4a requests come from a hypothesis strategy; a byte-level
mutator then damages most of them (flipped, inserted, deleted bytes, cuts,
junk tails, oversize fields, wrong versions and commands, SOCKS4a names with
bad characters), and the bytes are sent to a real sockssuite server on
127.0.0.1 in bounded, concurrent batches, sometimes split into pieces,
sometimes followed by a half-close.

For every connection the answer is predicted with the reference parser
(:class:`sockssuite.wire.socks4.RequestParser`) and the test's own policy:

* a request that parses, names 127.0.0.1 (directly or as ``localhost``) and
  the echo server's port is granted: 90, then its pipelined bytes echoed
  (BIND: 90, then 91 when --bind-timeout passes);
* everything else gets exactly one 91 and the connection is closed — a broken
  or incomplete request at the latest when --handshake-timeout passes.

Nothing may hang past a small bound, no log event may carry a failure or an
error level, and a normal client keeps being served during the run.

Every destination is on 127.0.0.0/8 and name resolution is a fake that
never leaves the process (SOCKS4a names would otherwise go to the system's
DNS server).  The same generator and oracle are used by
``bench/stress_handshakes.py`` for the million-request run.
"""

from __future__ import annotations

import random
import struct
import time

from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from twisted.internet import defer, error as ierror, reactor
from twisted.internet.interfaces import IResolverSimple
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from sockssuite.wire import socks4

from . import support
from .support import async_test
from .support import Echo, LogCapture, connect_raw, listen, start_server

#: Size of the CI run (the bench script runs a million).
REQUESTS = 4000
CONCURRENCY = 80
HANDSHAKE_TIMEOUT = 1.0
BIND_TIMEOUT = 1.0
#: No connection may stay open longer than this (seconds).
HANG_LIMIT = 6.0

#: SOCKS4a names the fake resolver knows; everything else fails to resolve.
NAMES = {"localhost": "127.0.0.1", "other.test": "127.0.0.2"}

BAD_NAMES = [
    b"a b", b"evil\r\nsession 1 forged", b"\x1b[31mred", b"-lead", b"trail-", b"..", b"a..b",
    b"a" * 64 + b".test", b"x" * 254, b"\xff\xfe.test", b"semi;colon", b"$(id)", b"%n%n",
    b"local\x00host", b"", b".", b"a/b", b"xn--", b"*",
]


def rules_for(echo_port: int) -> str:
    """Loopback clients may reach exactly 127.0.0.1:<echo port>; nothing else."""
    return f"permit 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq {echo_port}\n"


@implementer(IResolverSimple)
class FakeResolver:
    """Resolves NAMES only, at once; never asks a DNS server."""

    def getHostByName(self, name, timeout=None):
        address = NAMES.get(name.lower().rstrip("."))
        if address is None:
            return defer.fail(ierror.DNSLookupError(f"{name}: not a test name"))
        return defer.succeed(address)


# -- generating ---------------------------------------------------------------

def valid_requests(echo_port: int):
    """Hypothesis strategy: well-formed SOCKS4/4a requests, mostly aimed at
    the echo server, with pipelined bytes behind some of them."""
    userid = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"u"))
    port = st.one_of(st.just(echo_port), st.integers(0, 65535))
    command = st.sampled_from([socks4.CONNECT, socks4.CONNECT, socks4.CONNECT, socks4.BIND])
    address = st.one_of(st.just("127.0.0.1"), st.just("127.0.0.2"), st.just("0.0.0.0"),
                        st.just("10.1.2.3"), st.just("0.0.0.255"))
    plain = st.builds(lambda c, p, a, u: socks4.encode_request(c, p, a, userid=u),
                      command, port, address, userid)
    name = st.sampled_from(["localhost", "LocalHost.", "other.test", "unknown.test", "x-y.z_z"])
    named = st.builds(lambda c, p, n, u: socks4.encode_request(c, p, userid=u, hostname=n),
                      command, port, name, userid)
    extra = st.one_of(st.just(b""), st.binary(min_size=1, max_size=200))
    return st.tuples(st.one_of(plain, named), extra).map(lambda t: t[0] + t[1])


def generate(echo_port: int, count: int, seed: int = 0) -> list[tuple[bytes, int, bool]]:
    """``count`` (request bytes, pieces, half-close) cases: hypothesis draws
    the valid request and a random source; :func:`mutate` damages ~80%."""
    cases = []

    @settings(max_examples=count, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(valid_requests(echo_port), st.randoms(use_true_random=False))
    def collect(request, rng):
        cases.append(mutated_case(rng, request))

    collect()
    # Hypothesis may stop early when it runs out of distinct inputs: top up
    # with the plain random mutator so the count is what was asked.
    rng = random.Random(seed)
    while len(cases) < count:
        cases.append(mutated_case(rng, random_valid(rng, echo_port)))
    return cases[:count]


def random_valid(rng: random.Random, echo_port: int) -> bytes:
    """A valid request without hypothesis (the bench's million)."""
    command = socks4.CONNECT if rng.random() < 0.8 else socks4.BIND
    port = echo_port if rng.random() < 0.6 else rng.randrange(65536)
    userid = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(12)))
    if rng.random() < 0.3:
        request = socks4.encode_request(command, port, userid=userid,
                                        hostname=rng.choice(["localhost", "other.test", "no.test"]))
    else:
        request = socks4.encode_request(command, port, rng.choice(["127.0.0.1", "127.0.0.2", "10.9.8.7"]),
                                        userid=userid)
    if rng.random() < 0.3:
        request += rng.randbytes(rng.randrange(1, 100))
    return request


def mutated_case(rng: random.Random, request: bytes) -> tuple[bytes, int, bool]:
    data = request if rng.random() < 0.2 else mutate(rng, request)
    pieces = 1 if rng.random() < 0.7 else rng.randrange(2, 5)
    half_close = rng.random() < 0.2
    return data, pieces, half_close


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Damage a request with one to three byte-level mutations."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(11)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 2 and buf:  # delete a slice
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randrange(1, 8)]
        elif op == 3:  # truncate
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 4:  # extend with junk (NULs or not)
            buf += rng.randbytes(rng.randrange(1, 3000))
        elif op == 5:  # oversize USERID, around the limit or far past it
            size = rng.choice([socks4.MAX_FIELD - 1, socks4.MAX_FIELD, socks4.MAX_FIELD + 1, 5000])
            buf[8:] = b"U" * size + (b"\0" if rng.random() < 0.7 else b"")
        elif op == 6:  # wrong version
            if buf:
                buf[0] = rng.choice([0, 3, 5, 0x16, 0x47, 0xFF])
            else:
                buf += b"\x05\x01\x00"
        elif op == 7 and len(buf) > 1:  # wrong command
            buf[1] = rng.choice([0, 3, 4, 0x80, 0xFF])
        elif op == 8:  # SOCKS4a with a bad name
            name = rng.choice(BAD_NAMES)
            buf[:] = struct.pack("!BBH4s", 4, socks4.CONNECT, rng.randrange(65536), b"\0\0\0\1")
            buf += b"user\0" + name + (b"\0" if rng.random() < 0.9 else b"")
        elif op == 9:  # oversize SOCKS4a name
            size = rng.choice([253, 254, socks4.MAX_FIELD, socks4.MAX_FIELD + 1, 4000])
            label = b"a" * 63 + b"."
            name = (label * (size // 64 + 1))[:size]
            buf[:] = struct.pack("!BBH4s", 4, socks4.CONNECT, 80, b"\0\0\0\7") + b"\0" + name + b"\0"
        elif op == 10:  # another protocol altogether
            buf[:] = rng.choice([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x05\x01\x00",
                                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\r\n\r\n",
                                 b"\x04", b"\x04\x01", b"\x04\x01\x00\x50\x7f\x00\x00"])
    return bytes(buf)


def predict(data: bytes, echo_port: int) -> tuple[str, bytes]:
    """("granted" | "bind" | "refused", the pipelined bytes for a granted CONNECT)."""
    parser = socks4.RequestParser()
    try:
        request = parser.feed(data)
    except socks4.ProtocolError:
        return "refused", b""
    if request is None:
        return "refused", b""  # incomplete: 91 at the handshake timeout (or half-close)
    address = request.address
    if request.hostname is not None:
        address = NAMES.get(request.hostname)
    if address != "127.0.0.1" or request.port != echo_port:
        return "refused", b""
    if request.command == socks4.BIND:
        return "bind", b""
    return "granted", parser.leftover


def split(data: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    if pieces <= 1 or len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


GRANTED = socks4.encode_reply(socks4.GRANTED)[:2]
REJECTED_REPLY = socks4.encode_reply(socks4.REJECTED)


def check(kind: str, leftover: bytes, received: bytes, pieces: int = 1) -> str | None:
    """None if ``received`` is what ``kind`` allows, else what was wrong.

    A refused request sent in pieces may also end with nothing received: the
    server answered 91 and closed after an early piece, the later pieces
    then met a closed socket, and the RST that the kernel sends for them
    purges the 91 from the client's receive queue if it had not been read."""
    if kind == "refused":
        if received == REJECTED_REPLY or (received == b"" and pieces > 1):
            return None
        return f"expected one 91, got {received[:40]!r}"
    if received[:2] != GRANTED:
        return f"expected 90, got {received[:40]!r}"
    if kind == "bind":
        if len(received) == 16 and received[8:] == REJECTED_REPLY:
            return None
        return f"expected 90 then 91 (bind timeout), got {received[:40]!r}"
    if received[8:] != leftover:
        return f"expected the pipelined {len(leftover)} bytes echoed, got {len(received) - 8}"
    return None


# -- sending --------------------------------------------------------------------

async def one_case(proxy_port: int, echo_port: int, case, rng: random.Random) -> str | None:
    """Send one case; return None when the answer is right, else a complaint."""
    data, pieces, half_close = case
    kind, leftover = predict(data, echo_port)
    started = reactor.seconds()
    client = await connect_raw(proxy_port)
    timer = reactor.callLater(HANG_LIMIT, client.transport.abortConnection)
    try:
        parts = split(data, pieces, rng)
        for i, part in enumerate(parts):
            if not client.transport.connected:
                break
            client.transport.write(part)
            if i < len(parts) - 1:
                await support.deferLater(rng.random() * 0.05)
        if half_close and client.transport.connected:
            client.transport.loseWriteConnection()
        if kind == "granted":
            await client.wait_bytes(8 + len(leftover), timeout=HANG_LIMIT)
            client.transport.loseConnection()
        await client.closed
    finally:
        hung = not timer.active()
        if not hung:
            timer.cancel()
    received = bytes(client.received)
    if hung:
        return f"still open after {HANG_LIMIT}s ({kind}; got {received[:40]!r}) for {data[:60]!r}"
    problem = check(kind, leftover, received, pieces)
    if problem is not None:
        return f"{problem} for {data[:60]!r} (pieces={pieces} half_close={half_close}, " \
               f"{reactor.seconds() - started:.2f}s)"
    return None


async def normal_client(proxy_port: int, echo_port: int, stop: list, latencies: list, failures: list):
    """A well-behaved client, over and over until told to stop: handshake,
    16 bytes echoed, close; its handshake latencies are noted."""
    for _ in range(10000):  # bounded; the run is much shorter
        if stop:
            return
        started = time.monotonic()
        try:
            client, reply = await support.socks_connect(proxy_port, "127.0.0.1", echo_port)
            latencies.append(time.monotonic() - started)
            if reply.code != socks4.GRANTED:
                failures.append(f"normal client got {reply.code}")
            else:
                client.transport.write(b"0123456789abcdef")
                if await client.wait_bytes(16, timeout=5) != b"0123456789abcdef":
                    failures.append("normal client: echo incomplete")
            client.transport.loseConnection()
            await client.closed
        except Exception as e:  # noqa: BLE001 - every failure counts
            failures.append(f"normal client: {e!r}")
        await support.deferLater(0.05)


async def run_cases(cases, concurrency: int, run_one) -> list:
    """Run ``run_one(case)`` (a coroutine: None, or what is wrong) over the
    cases, ``concurrency`` at a time; the complaints."""
    problems = []
    queue = iter(cases)

    async def worker():
        for case in queue:
            try:
                problem = await run_one(case)
            except Exception as e:  # noqa: BLE001 - every failure counts
                problem = f"{e!r} for {case[0][:60]!r}"
            if problem is not None:
                problems.append(problem)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    return problems


def bad_events(events) -> list:
    return [e for e in events
            if "log_failure" in e
            or getattr(e.get("log_level"), "name", "") in ("error", "critical")]


class HostileHandshakeTests(TestCase):
    timeout = 120

    async def _server(self):
        echo = await listen(self, Echo)
        echo_port = echo.getHost().port
        server = await start_server(self, rules_for(echo_port), handshake_timeout=HANDSHAKE_TIMEOUT,
                                    bind_timeout=BIND_TIMEOUT, resolve_timeout=1.0,
                                    connect_timeout=2.0,
                                  socks_versions=(4,))
        server.factory.resolver = FakeResolver()
        return support.port_of(server), echo_port

    @async_test
    async def test_oracle_sanity(self):
        """The oracle itself: valid requests to the echo server are granted,
        the rest refused; the mutator really damages requests."""
        self.assertEqual(predict(socks4.encode_request(1, 7, "127.0.0.1") + b"x", 7), ("granted", b"x"))
        self.assertEqual(predict(socks4.encode_request(1, 7, hostname="localhost"), 7)[0], "granted")
        self.assertEqual(predict(socks4.encode_request(2, 7, "127.0.0.1"), 7)[0], "bind")
        self.assertEqual(predict(socks4.encode_request(1, 8, "127.0.0.1"), 7)[0], "refused")
        self.assertEqual(predict(b"\x05\x01\x00", 7)[0], "refused")
        rng = random.Random(1)
        request = socks4.encode_request(1, 7, "127.0.0.1")
        changed = sum(mutate(rng, request) != request for _ in range(200))
        self.assertGreater(changed, 180)

    @async_test
    async def test_mutated_handshakes_are_answered_91_90_or_closed(self):
        logs = LogCapture(self)
        proxy_port, echo_port = await self._server()
        cases = generate(echo_port, REQUESTS)
        kinds = [predict(c[0], echo_port)[0] for c in cases]
        # The mix is meaningful: many refusals, but grants and BINDs too.
        self.assertGreater(kinds.count("granted"), REQUESTS // 50)
        self.assertGreater(kinds.count("bind"), 5)
        stop, latencies, normal_failures = [], [], []
        normal = defer.ensureDeferred(normal_client(proxy_port, echo_port, stop, latencies,
                                                    normal_failures))
        rng = random.Random(9)
        started = time.monotonic()
        problems = await run_cases(cases, CONCURRENCY,
                                   lambda case: one_case(proxy_port, echo_port, case, rng))
        elapsed = time.monotonic() - started
        stop.append(True)
        await normal
        self.assertEqual(problems[:10], [], f"{len(problems)} of {REQUESTS} wrong")
        self.assertEqual(normal_failures, [])
        self.assertGreater(len(latencies), 5)
        self.assertLess(max(latencies), 2.0, f"normal client's slowest handshake during {elapsed:.1f}s")
        # Every session ended with its one close event, and none was an error.
        await logs.wait_for("session-closed", REQUESTS + len(latencies), timeout=10)
        self.assertEqual(bad_events(logs.events), [])
        outcomes = {}
        for e in logs.named("session-closed"):
            outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        self.assertNotIn("internal-error", outcomes)
        self.assertGreater(outcomes.get("protocol-error", 0), REQUESTS // 10)
        self.assertGreater(outcomes.get("handshake-timeout", 0), 10)
