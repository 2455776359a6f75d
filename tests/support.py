"""Real-socket fixtures shared by the integration tests: a sockssuite server on
a loopback port, destination servers, and a raw SOCKS4 client."""

from __future__ import annotations

import hashlib

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from sockssuite import access
from sockssuite.server import ServerSettings
from sockssuite.service import SOCKSServerService
from sockssuite.wire import socks4

def async_test(f):
    """A trial test method written as ``async def``."""
    def wrapper(self):
        return defer.ensureDeferred(f(self))
    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


LOOPBACK_ONLY = "permit 127.0.0.0 255.0.0.0\n"


async def start_server(testcase, rules: str = LOOPBACK_ONLY, shutdown_grace: float = 0.0,
                       listen_on: str = "tcp:0:interface=127.0.0.1", **settings) -> SOCKSServerService:
    """A started SOCKS service on 127.0.0.1:<free port>, stopped at cleanup
    (sessions still open then are closed at once unless ``shutdown_grace``)."""
    policy = access.parse_access(rules, "test.conf")
    # A test class may pin the relay engine ("splice" or "copy"): the same
    # tests then prove both engines keep the same semantics.
    engine = getattr(testcase, "relay_engine", None)
    if engine is not None:
        settings.setdefault("relay_engine", engine)
    service = SOCKSServerService([listen_on], policy, ServerSettings(**settings),
                                 shutdown_grace=shutdown_grace)
    service.startService()
    await defer.gatherResults(service._listening)
    testcase.addCleanup(service.stopService)
    return service


def port_of(service) -> int:
    return service.addresses[0].port


class LogCapture:
    """Collects sockssuite log events while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name):
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(self, name, count=1, timeout=5.0):
        for _ in range(int(timeout / 0.01)):
            if len(self.named(name)) >= count:
                return self.named(name)
            await deferLater(0.01)
        raise AssertionError(f"no {count} {name!r} event(s) in {timeout}s: {self.named(name)}")


def deferLater(seconds):
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


# -- destinations -----------------------------------------------------------

@implementer(IHalfCloseableProtocol)
class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class ReadAllThenAnswer(protocol.Protocol):
    """Reads until the client half-closes, then answers with the SHA-256 of
    what it read and closes: the half-close test's destination."""

    def connectionMade(self):
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data):
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self):
        self.transport.write(b"%d %s" % (self.count, self.hash.hexdigest().encode()))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class Firehose(protocol.Protocol):
    """Sends ``total`` bytes of a known pattern as fast as the consumer allows."""

    total = 0

    def connectionMade(self):
        self.sent = 0
        self.transport.registerProducer(self, True)
        self.paused = False
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        chunk = b"0123456789abcdef" * 4096
        while not self.paused and self.sent < self.total:
            n = min(len(chunk), self.total - self.sent)
            self.sent += n
            self.transport.write(chunk[:n])
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True


class Greeter(protocol.Protocol):
    """Speaks first, like SMTP or SSH."""

    def connectionMade(self):
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.transport.write(data.upper())


async def listen(testcase, factory_or_protocol, interface="127.0.0.1"):
    factory = (factory_or_protocol if isinstance(factory_or_protocol, protocol.Factory)
               else protocol.Factory.forProtocol(factory_or_protocol))
    endpoint = endpoints.TCP6ServerEndpoint if ":" in interface else endpoints.TCP4ServerEndpoint
    port = await endpoint(reactor, 0, interface=interface).listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


# -- a raw SOCKS4 client ------------------------------------------------------

@implementer(IHalfCloseableProtocol)
class RawClient(protocol.Protocol):
    """Sends bytes, collects everything it receives, notes how it ended."""

    def __init__(self):
        self.received = bytearray()
        self.closed = defer.Deferred()
        self.read_eof = False
        self.waiters = []

    def dataReceived(self, data):
        self.received += data
        self._wake()

    def readConnectionLost(self):
        # The far end finished: like most clients, close our side too.
        self.read_eof = True
        self._wake()
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.read_eof = True
        self._wake()
        self.closed.callback(reason.value)

    def _wake(self):
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.callback(None)

    async def wait_bytes(self, n, timeout=10.0):
        """Wait until ``n`` bytes have arrived (or the stream ended)."""
        timer = reactor.callLater(timeout, self._wake)
        try:
            while len(self.received) < n and not self.read_eof and timer.active():
                d = defer.Deferred()
                self.waiters.append(d)
                await d
        finally:
            if timer.active():
                timer.cancel()
        return bytes(self.received)

    async def reply(self) -> socks4.Reply:
        data = await self.wait_bytes(8)
        if len(data) < 8:
            raise AssertionError(f"connection ended after {data!r} without a full reply")
        return socks4.decode_reply(data[:8])


async def connect_raw(port: int, host: str = "127.0.0.1", bind: str | None = None) -> RawClient:
    client = RawClient()
    endpoint = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
    ep = endpoint(reactor, host, port, bindAddress=(bind, 0) if bind else None)
    await endpoints.connectProtocol(ep, client)
    return client


async def socks_connect(port, dst_host, dst_port, userid=b"", socks4a=False, extra=b""):
    """Connect to the proxy, send a CONNECT (+ pipelined ``extra``), return client and reply."""
    client = await connect_raw(port)
    if socks4a:
        req = socks4.encode_request(socks4.CONNECT, dst_port, userid=userid, hostname=dst_host)
    else:
        req = socks4.encode_request(socks4.CONNECT, dst_port, dst_host, userid=userid)
    client.transport.write(req + extra)
    reply = await client.reply()
    del client.received[:8]
    return client, reply
