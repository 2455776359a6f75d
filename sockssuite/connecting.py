"""Connecting a prepared protocol instance through an endpoint, quietly."""

from __future__ import annotations

from twisted.internet import defer, protocol


class _OneShot(protocol.Factory):
    # No "Starting factory" / "Stopping factory" log lines: this runs once per
    # session (and per ident query), where those lines would be noise and cost.
    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def connect_protocol(endpoint, proto):
    """Like ``twisted.internet.endpoints.connectProtocol``, without the log lines."""
    return endpoint.connect(_OneShot(proto))


class _Direct(protocol.ClientFactory):
    noisy = False

    def __init__(self, proto, connected):
        self.proto = proto
        self.connected = connected
        self.connector = None

    def buildProtocol(self, addr):
        return self.proto

    def clientConnectionFailed(self, connector, reason):
        if not self.connected.called:
            self.connected.errback(reason)


def connect_tcp(reactor, host: str, port: int, proto, timeout: float):
    """Connect ``proto`` (which must call its ``on_connected`` hook from
    ``connectionMade``) to ``host:port`` over TCP; fires with ``proto`` once
    connected.  Cancelling stops the attempt.

    The hot path of every CONNECT: no endpoint, no wrapping protocol (whose
    extra call on every received chunk and extra objects per connection an
    endpoint would add)."""

    def cancel(d):
        if factory.connector is not None:
            factory.connector.stopConnecting()

    connected = defer.Deferred(cancel)
    factory = _Direct(proto, connected)
    proto.on_connected = lambda: connected.called or connected.callback(proto)
    factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    return connected
