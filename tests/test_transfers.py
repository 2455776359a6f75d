"""Nothing lost (issue 9): concurrent byte-exact transfers through the proxy.

Each transfer sends pseudo-random bytes both ways at once through a real
sockssuite server on 127.0.0.1: the client uploads ``up`` bytes while the
destination downloads ``down`` bytes to it.  Both ends read in random-sized
slices (the transport's recv size changes after every read), pause reading
and writing at random, and hash what they send and receive; every transfer
must end with both SHA-256 pairs equal, both counts exact and both ends
closed cleanly (half-close in each direction, then close).

Then the destinations reset mid-stream (``abortConnection`` after a random
number of bytes): each client must see an abortive close — never a clean
FIN, never the session's end reported as a success with fewer bytes.

Both relay engines run the same tests (``relay_engine`` on the class, honoured
by :func:`tests.support.start_server`).  The full-size run (500 transfers up
to 64 MiB) is ``bench/stress_transfers.py``.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from sockssuite import splice
from sockssuite.wire import socks4

from . import support
from .support import async_test
from .support import listen, start_server

TRANSFERS = 40
MAX_SIZE = 8 << 20
RESETS = 30
#: Every transfer batch must finish within this (seconds); then all is aborted.
DEADLINE = 60.0

_HEADER = struct.Struct("!I")


def random_size(rng: random.Random, largest: int) -> int:
    """Sizes from 0 to ``largest``: mostly uniform, a quarter log-uniform (so
    that empty and tiny transfers are there too)."""
    if rng.random() < 0.75:
        return rng.randrange(largest + 1)
    if rng.random() < 0.1:
        return 0
    return min(largest, int(2 ** rng.uniform(0, math.log2(largest + 1))))


def slice_size(rng: random.Random) -> int:
    """A recv/send size from 1 byte to 256 KiB, log-uniform."""
    return max(1, int(2 ** rng.uniform(0, 18)))


@implementer(IHalfCloseableProtocol, IPushProducer)
class Party(protocol.Protocol):
    """One end of a transfer: sends ``send_size`` pseudo-random bytes (seeded),
    hashes everything both ways, reads in random slices, pauses at random.
    With ``abort_after`` it resets the connection once it has sent that many."""

    def __init__(self, rng: random.Random, send_size: int, seed: int, abort_after: int | None = None):
        self.rng = rng
        self.send_size = send_size
        self.stream = random.Random(seed)
        self.abort_after = abort_after
        self.sent = 0
        self.received = 0
        self.sent_hash = hashlib.sha256()
        self.recv_hash = hashlib.sha256()
        self.flow_paused = False
        self.sleeping = False
        self.write_done = False
        self.read_eof = False  # a clean FIN arrived (readConnectionLost)
        self.reason = None
        self.done = defer.Deferred()
        self.seed = seed
        self.chunks = None  # sizes of the chunks sent, when asked to keep them

    # -- sending ---------------------------------------------------------------
    def start(self):
        self.transport.registerProducer(self, True)
        self._pump()

    def pauseProducing(self):
        self.flow_paused = True

    def resumeProducing(self):
        self.flow_paused = False
        self._pump()

    def stopProducing(self):
        self.flow_paused = True

    def _wake(self):
        self.sleeping = False
        self._pump()

    def _pump(self):
        rng = self.rng
        for _ in range(10000):  # bounded per call; the reactor calls again
            if self.flow_paused or self.sleeping or self.write_done or self.reason is not None:
                return
            if self.abort_after is not None and self.sent >= self.abort_after:
                self.transport.abortConnection()
                return
            if self.sent >= self.send_size:
                self.write_done = True
                self.transport.unregisterProducer()
                self.transport.loseWriteConnection()
                self._maybe_close()
                return
            n = min(slice_size(rng), self.send_size - self.sent)
            if self.abort_after is not None:
                n = min(n, self.abort_after - self.sent)
            data = self.stream.randbytes(n)
            self.sent += n
            self.sent_hash.update(data)
            if self.chunks is not None:
                self.chunks.append(n)
            self.transport.write(data)
            if rng.random() < 0.02:  # a pause in writing
                self.sleeping = True
                reactor.callLater(rng.random() * 0.01, self._wake)
                return

    # -- receiving ---------------------------------------------------------------
    def dataReceived(self, data):
        self.received += len(data)
        self.recv_hash.update(data)
        rng = self.rng
        self.transport.bufferSize = slice_size(rng)  # the next recv's size
        if rng.random() < 0.02:  # a pause in reading
            self.transport.pauseProducing()
            reactor.callLater(rng.random() * 0.01, self._resume_reading)

    def sent_prefix(self, n: int) -> bytes:
        """The first ``n`` bytes sent, made again from the seed and the chunk
        sizes (a chunked random stream differs from one drawn at once)."""
        stream = random.Random(self.seed)
        out = bytearray()
        for size in self.chunks:
            if len(out) >= n:
                break
            out += stream.randbytes(size)
        return bytes(out[:n])

    def _resume_reading(self):
        if self.reason is None and self.transport.connected:
            self.transport.resumeProducing()

    def readConnectionLost(self):
        self.read_eof = True
        self._maybe_close()

    def writeConnectionLost(self):
        pass

    def _maybe_close(self):
        if self.read_eof and self.write_done:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason.value
        self.done.callback(None)


class ClientParty(Party):
    """Does the SOCKS4 handshake first, then sends the transfer id, then the data."""

    def __init__(self, transfer_id, destination_port, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transfer_id = transfer_id
        self.destination_port = destination_port
        self.reply = None
        self.handshake = bytearray()

    def connectionMade(self):
        self.transport.write(socks4.encode_request(socks4.CONNECT, self.destination_port, "127.0.0.1",
                                                   userid=b"xfer"))

    def dataReceived(self, data):
        if self.reply is None:
            self.handshake += data
            if len(self.handshake) < 8:
                return
            self.reply = socks4.decode_reply(bytes(self.handshake[:8]))
            data = bytes(self.handshake[8:])
            if self.reply.code != socks4.GRANTED:
                self.transport.loseConnection()
                return
            self.transport.write(_HEADER.pack(self.transfer_id))
            self.start()
            if not data:
                return
        Party.dataReceived(self, data)


class ServerParty(Party):
    """The destination: reads the transfer id, then plays its part of the plan."""

    def __init__(self, plans, parties, rng):
        self.plans = plans
        self.parties = parties
        self.header = bytearray()
        self.started = False
        super().__init__(rng, 0, 0)

    def dataReceived(self, data):
        if not self.started:
            self.header += data
            if len(self.header) < _HEADER.size:
                return
            (transfer_id,) = _HEADER.unpack_from(self.header)
            data = bytes(self.header[_HEADER.size:])
            size, seed, abort_after = self.plans[transfer_id]
            self.send_size, self.stream, self.abort_after = size, random.Random(seed), abort_after
            self.seed = seed
            if abort_after is not None:
                self.chunks = []
            self.parties[transfer_id] = self
            self.started = True
            self.start()
            if self.read_eof:
                return
        if data:
            Party.dataReceived(self, data)

    def readConnectionLost(self):
        if not self.started:
            self.transport.loseConnection()
            return
        Party.readConnectionLost(self)


class ServerFactory(protocol.Factory):
    def __init__(self, plans, seed):
        self.plans = plans
        self.parties = {}
        self.rng = random.Random(seed)

    def buildProtocol(self, addr):
        p = ServerParty(self.plans, self.parties, random.Random(self.rng.random()))
        p.factory = self
        return p


class TransferMixin:
    relay_engine: str | None = None
    timeout = 180

    def setUp(self):
        if self.relay_engine == "splice" and not splice.AVAILABLE:
            raise SkipTest("splice(2) is not available here")

    async def _transfers(self, count, largest, seed, reset=False):
        rng = random.Random(seed)
        plans, clients = {}, {}
        for i in range(count):
            up, down = random_size(rng, largest), random_size(rng, largest)
            if i < 2 and not reset:
                up, down = largest, largest  # the biggest both ways, always
            if reset:
                down = max(down, 2)
                abort_after = rng.randrange(0, down)
            else:
                abort_after = None
            plans[i] = (down, rng.randrange(1 << 30), abort_after)
            clients[i] = (up, rng.randrange(1 << 30))
        factory = ServerFactory(plans, seed)
        destination = await listen(self, factory)
        server = await start_server(self)
        proxy_port = support.port_of(server)
        parties = []
        for i, (up, up_seed) in clients.items():
            party = ClientParty(i, destination.getHost().port, random.Random(rng.random()), up, up_seed)
            parties.append(party)
            await protocol.ClientCreator(reactor, lambda p=party: p).connectTCP("127.0.0.1", proxy_port)

        def expire():
            for p in parties + list(factory.parties.values()):
                if p.reason is None and p.transport.connected:
                    p.transport.abortConnection()

        watchdog = reactor.callLater(DEADLINE, expire)
        try:
            await defer.gatherResults([p.done for p in parties])
        finally:
            expired = not watchdog.active()
            if not expired:
                watchdog.cancel()
        self.assertFalse(expired, f"transfers still running after {DEADLINE}s")
        # The destinations' ends: wait until each has closed too.
        for _ in range(500):
            if all(p.reason is not None for p in factory.parties.values()):
                break
            await support.deferLater(0.01)
        return parties, factory.parties, plans

    @async_test
    async def test_concurrent_transfers_arrive_byte_exact_both_ways(self):
        logs = support.LogCapture(self)
        parties, servers, plans = await self._transfers(TRANSFERS, MAX_SIZE, seed=2026)
        self.assertEqual(len(servers), TRANSFERS)
        for i, client in enumerate(parties):
            server = servers[i]
            label = f"transfer {i} (up {client.send_size}, down {server.send_size})"
            self.assertEqual(client.reply.code, socks4.GRANTED, label)
            self.assertEqual((server.received, client.received), (client.send_size, server.send_size), label)
            self.assertEqual(server.recv_hash.hexdigest(), client.sent_hash.hexdigest(), label)
            self.assertEqual(client.recv_hash.hexdigest(), server.sent_hash.hexdigest(), label)
            self.assertTrue(client.read_eof and server.read_eof, label)
            self.assertIsInstance(client.reason, ConnectionDone, label)
            self.assertIsInstance(server.reason, ConnectionDone, label)
        closed = await logs.wait_for("session-closed", TRANSFERS)
        self.assertEqual({e["outcome"] for e in closed}, {"closed"})
        engines = [e["engine"] for e in closed]
        if self.relay_engine is not None:  # (a session may start copying if a socket was full)
            self.assertGreater(engines.count(self.relay_engine), TRANSFERS // 2, engines)

    @async_test
    async def test_upstream_reset_mid_stream_reaches_the_client_as_an_abortive_close(self):
        parties, servers, plans = await self._transfers(RESETS, MAX_SIZE // 4, seed=99, reset=True)
        for i, client in enumerate(parties):
            down, _, abort_after = plans[i]
            label = f"transfer {i} (down {down}, reset after {abort_after}, got {client.received})"
            self.assertEqual(client.reply.code, socks4.GRANTED, label)
            # Never a clean end: no FIN, no ConnectionDone ...
            self.assertFalse(client.read_eof, label)
            self.assertFalse(isinstance(client.reason, ConnectionDone), f"{label}: {client.reason!r}")
            # ... and never more than was sent, nor anything but a prefix of it.
            self.assertLessEqual(client.received, abort_after, label)
            expected = servers[i].sent_prefix(client.received)
            self.assertEqual(client.recv_hash.hexdigest(), hashlib.sha256(expected).hexdigest(), label)


class CopyEngineTransferTests(TransferMixin, TestCase):
    relay_engine = "copy"


class SpliceEngineTransferTests(TransferMixin, TestCase):
    relay_engine = "splice"
