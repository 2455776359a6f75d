"""Connecting a prepared protocol instance through an endpoint, quietly."""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol

try:
    from twisted.internet import tcp as _tcp

    class _PromptClient(_tcp.Client):
        """A TCP client transport that starts connecting at once.

        Twisted's ``tcp.Client`` defers the ``connect()`` call to the
        reactor's next turn (``callLater(0)``); on the handshake path of
        every CONNECT that turn is latency the client waits for.  The
        connection is still only reported when the socket is writable, as
        before, so the connector's timeout is in place by then."""

        def _finishInit(self, whenDone, skt, error, reactor):
            if whenDone:
                self._commonConnection.__init__(self, skt, None, reactor)
                whenDone()
            else:
                reactor.callLater(0, self.failIfNotConnected, error)

        def doConnect(self):
            if not hasattr(self, "connector"):
                return _tcp.Client.doConnect(self)
            if self.doWrite == self.doConnect:
                # The socket is ready: connected, or failed.  SO_ERROR says
                # which (Twisted asks connect() again as well, one syscall
                # more), and the socket stays registered for reading rather
                # than being unregistered and registered again.
                err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.failIfNotConnected(_tcp.error.getConnectError((err, _tcp.strerror(err))))
                    return None
                del self.doWrite
                del self.doRead
                self.stopWriting()
                self._connectDone()
                return None
            # The first call (from _finishInit): start the attempt, and
            # only wait for the result; never complete it here, before the
            # connector has armed its timeout.
            self.doWrite = self.doConnect
            self.doRead = self.doConnect
            try:
                result = self.socket.connect_ex(self.realAddress)
            except OSError as e:
                result = e.args[0]
            if result in (0, _tcp.EINPROGRESS, _tcp.EWOULDBLOCK, _tcp.EALREADY):
                self.startReading()
                self.startWriting()
                return
            self.reactor.callLater(0, self.failIfNotConnected,
                                   _tcp.error.getConnectError((result, _tcp.strerror(result))))

    class _PromptConnector(_tcp.Connector):
        def _makeTransport(self):
            return _PromptClient(self.host, self.port, self.bindAddress, self, self.reactor)

    _PROMPT = hasattr(_tcp.Client, "_finishInit") and hasattr(_tcp.Connector, "_makeTransport")
    #: The plain TCP transports (a socket, Twisted's buffers, nothing wrapped).
    TCP_TRANSPORTS = (_tcp.Server, _tcp.Client, _PromptClient)
except ImportError:  # pragma: no cover - a reactor without twisted.internet.tcp
    _PROMPT = False
    TCP_TRANSPORTS = ()


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
    if _PROMPT and type(reactor).__module__.startswith("twisted.internet.") and hasattr(reactor, "_selectables"):
        connector = _PromptConnector(host, port, factory, timeout, None, reactor)
        connector.connect()
        factory.connector = connector
    else:
        factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    return connected
