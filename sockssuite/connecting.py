"""Connecting a prepared protocol instance through an endpoint, quietly."""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

try:
    from twisted.internet import abstract as _abstract
    from twisted.internet import address as _address
    from twisted.internet import error as _error
    from twisted.internet import tcp as _tcp

    class LeanServer(_tcp.Server):
        """The transport of an accepted client connection (installed on the
        SOCKS ports by :func:`lean_port`).

        Twisted calls ``shutdown(SHUT_RDWR)`` before closing a socket "just to
        be safe" for descriptors shared with child processes; its own comment
        says it is not needed, since every socket is close-on-exec.  Two of
        the thirty-odd system calls of a short session, which under gVisor
        cost microseconds each."""

        _shouldShutdown = False

    class LeanClient(_tcp.Client):
        """The proxy's outbound TCP connection, without Twisted's
        ``Connector`` around it (see :func:`connect_tcp`).

        Twisted's ``tcp.Client`` resolves even a numeric address through a
        Deferred, starts ``connect()`` on the reactor's next turn, asks
        ``SO_ERROR`` before the first attempt and ``connect()`` again after
        it, unregisters the socket from epoll and registers it again once
        connected, and builds an address object and a log prefix per
        connection.  This one takes a numeric address, creates the socket
        non-blocking with ``TCP_NODELAY`` set, connects at once, reports a
        connection that is complete at once (usual over loopback) at once,
        and otherwise reads ``SO_ERROR`` only when the socket is ready."""

        _shouldShutdown = False
        logstr = "UpstreamProtocol,client"
        #: TCP_NODELAY is set before connecting (see :func:`sockssuite.server._nodelay`).
        nodelay_set = True

        def __init__(self, host: str, port: int, attempt, reactor):
            self.connector = attempt
            self.addr = (host, port)
            if ":" in host:
                self._addressType = _address.IPv6Address
                self.addressFamily = socket.AF_INET6
                real = _tcp._resolveIPv6(host, port)
                self.realAddress = (socket.getnameinfo(real, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0],
                                    *real[1:])
            else:
                self.realAddress = self.addr
            skt = socket.socket(self.addressFamily, socket.SOCK_STREAM | _NONBLOCK)
            if not _NONBLOCK:
                skt.setblocking(False)
            try:
                skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            # Connection.__init__ without its setblocking(): one ioctl less.
            _abstract.FileDescriptor.__init__(self, reactor=reactor)
            self.socket = skt
            self.fileno = skt.fileno
            self.protocol = None

        def start(self):
            """Start the attempt: the result comes when the socket is ready."""
            try:
                result = self.socket.connect_ex(self.realAddress)
            except OSError as e:
                result = e.args[0]
            if result in (_tcp.EINPROGRESS, _tcp.EWOULDBLOCK, _tcp.EALREADY):
                # A connect over loopback (or to a host next door) is often
                # complete by the time connect() returns, though it says
                # "in progress": then one getpeername() saves registering
                # for writing, a reactor wake-up and SO_ERROR.
                try:
                    self.socket.getpeername()
                except OSError:
                    # Until connected, writable means the attempt is over
                    # (the instance attributes go once connected: then the
                    # class's doRead and doWrite, Twisted's, apply again).
                    self.doWrite = self.doRead = self.doConnect
                    self.startWriting()
                    return
                result = 0
            if result == 0:
                self.startReading()
                self._connectDone()
                return
            self.failIfNotConnected(_error.getConnectError((result, _tcp.strerror(result))))

        def doConnect(self):
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.failIfNotConnected(_error.getConnectError((err, _tcp.strerror(err))))
                return None
            try:
                # Connected, or a stale event: epoll can report an old
                # socket's event after its descriptor number was reused in
                # the same poll round, and a still-connecting socket has
                # SO_ERROR 0 too.  (Only on this slow path: a connect that
                # completes at once never gets here.)
                self.socket.getpeername()
            except OSError:
                return None  # still in progress: wait for the next event
            del self.doWrite
            del self.doRead
            self.startReading()
            self.stopWriting()
            self._connectDone()
            return None

        def connectionLost(self, reason):
            if not self.connected and hasattr(self, "connector") and hasattr(self, "socket"):
                # Registered for writing only while connecting, so a failed
                # attempt may show up as a hang-up: SO_ERROR says which
                # error (refused, unreachable...), where the reactor's
                # reason would only say "connection lost".
                err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.failIfNotConnected(_error.getConnectError((err, _tcp.strerror(err))))
                    return
            _tcp.Client.connectionLost(self, reason)

        def _connectDone(self):
            self.protocol = protocol = self.connector.connected_protocol()
            self.connected = 1
            protocol.makeConnection(self)
            self.connector.succeeded()

    class _Attempt:
        """What Twisted's ``Connector`` is to a ``Client``, for one attempt."""

        __slots__ = ("proto", "deferred", "timer", "client")

        def __init__(self, proto, deferred):
            self.proto = proto
            self.deferred = deferred
            self.timer = None
            self.client = None

        def connected_protocol(self):
            self._stop_timer()
            return self.proto

        def succeeded(self):
            if not self.deferred.called:
                self.deferred.callback(self.proto)

        def connectionFailed(self, reason):
            self._stop_timer()
            if not self.deferred.called:
                self.deferred.errback(reason)

        def connectionLost(self, reason):
            pass

        def timed_out(self):
            self.timer = None
            self.client.failIfNotConnected(_error.TimeoutError())

        def cancel(self, deferred):
            self.client.failIfNotConnected(_error.UserError())

        def _stop_timer(self):
            if self.timer is not None:
                if self.timer.active():
                    self.timer.cancel()
                self.timer = None

    _LEAN = hasattr(_tcp, "_resolveIPv6") and hasattr(_tcp.Client, "failIfNotConnected")
    #: The plain TCP transports (a socket, Twisted's buffers, nothing wrapped).
    TCP_TRANSPORTS = (_tcp.Server, _tcp.Client, LeanServer, LeanClient)
except ImportError:  # pragma: no cover - a reactor without twisted.internet.tcp
    _LEAN = False
    TCP_TRANSPORTS = ()


def lean_port(port):
    """Have a listening port (Twisted's plain ``tcp.Port``) give its
    connections :class:`LeanServer` transports; other ports are left alone.
    Returns the port."""
    if TCP_TRANSPORTS and type(port) is _tcp.Port and port.transport is _tcp.Server:
        port.transport = LeanServer
    return port


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
    """Connect ``proto`` to the numeric address ``host:port`` over TCP; fires
    with ``proto`` once connected (after its ``connectionMade``; ``proto``
    must call its ``on_connected`` hook from ``connectionMade``, which the
    fallback path through ``reactor.connectTCP`` needs).
    Cancelling stops the attempt.

    The hot path of every CONNECT: no endpoint, no factory, no connector
    (see :class:`LeanClient`), where the reactor is one of Twisted's own
    selecting reactors; through ``reactor.connectTCP`` otherwise."""
    if _LEAN and type(reactor).__module__.startswith("twisted.internet.") and hasattr(reactor, "_selectables"):
        connected = defer.Deferred()
        attempt = _Attempt(proto, connected)
        connected._canceller = attempt.cancel
        try:
            client = LeanClient(host, port, attempt, reactor)
        except OSError as e:  # out of descriptors, typically
            return defer.fail(_error.ConnectBindError(e.args[0], e.args[1] if len(e.args) > 1 else ""))
        attempt.client = client
        if timeout is not None:
            attempt.timer = reactor.callLater(timeout, attempt.timed_out)
        client.start()
        return connected

    def cancel(d):
        if factory.connector is not None:
            factory.connector.stopConnecting()

    connected = defer.Deferred(cancel)
    factory = _Direct(proto, connected)
    proto.on_connected = lambda: connected.called or connected.callback(proto)
    factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    return connected
