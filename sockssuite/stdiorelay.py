"""Standard input and output joined to a client endpoint: the pump behind
``sockssuite connect`` (netcat-like, usable as an OpenSSH ``ProxyCommand``).

Bytes from stdin go to the destination and bytes from it go to stdout, each
way with flow control (a slow reader pauses the other side instead of
growing a buffer).  Half-close is passed on both ways: end of stdin shuts
down the connection's write side (the answer still arrives), and the
destination's end of stream closes stdout once everything was written.
"""

from __future__ import annotations

import os

from twisted.internet import defer, error, interfaces, protocol
from twisted.python.failure import Failure
from zope.interface import implementer


def _release(fd: int) -> None:
    """Really close ``fd`` for the reader at the other end (StandardIO's
    ``loseWriteConnection`` stops writing but leaves the descriptor open, so
    the reader would never see end of file), keeping the number taken by
    /dev/null so that nothing opened later can receive stray output."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _close(transport, how):
    # A paused producer still registered would keep the closing transport
    # waiting for more data forever: the other side has nothing more to give.
    transport.unregisterProducer()
    how()


@implementer(interfaces.IHalfCloseableProtocol)
class _Remote(protocol.Protocol):
    """The destination's side of the session."""

    def __init__(self, session: StdioSession):
        self.session = session
        self.read_eof = False

    def dataReceived(self, data):
        self.session.local.transport.write(data)

    def readConnectionLost(self):
        # The destination finished sending: stdout gets its EOF once flushed.
        self.read_eof = True
        local = self.session.local
        if local.transport is not None and not local.stdout_closed:
            _close(local.transport, local.transport.loseWriteConnection)
        if local.stdin_eof:
            _close(self.transport, self.transport.loseConnection)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.session._remote_lost(reason)


@implementer(interfaces.IHalfCloseableProtocol)
class _Local(protocol.Protocol):
    """Standard input and output."""

    def __init__(self, session: StdioSession):
        self.session = session
        self.stdin_eof = False
        self.stdout_closed = False

    def dataReceived(self, data):
        self.session.remote.transport.write(data)

    def readConnectionLost(self):
        # End of stdin: half-close towards the destination, keep reading it.
        self.stdin_eof = True
        transport = self.session.remote.transport
        if self.session.remote.read_eof:
            _close(transport, transport.loseConnection)
        else:
            _close(transport, transport.loseWriteConnection)

    def writeConnectionLost(self):
        self.stdout_closed = True
        if self.session.stdout_fd is not None:
            _release(self.session.stdout_fd)
        self.session._stdout_closed()

    def connectionLost(self, reason):
        self.stdout_closed = True
        self.session._stdout_closed()


class StdioSession:
    """One session between standard I/O and a connected endpoint.

    ``run(endpoint)`` connects and returns a Deferred firing with ``None``
    when the session ended cleanly (both directions finished, stdout
    flushed), or failing with the connection error (the connect failure, or
    how the connection was lost).  ``make_stdio(protocol)`` builds the stdio
    transport (``twisted.internet.stdio.StandardIO`` by default; tests may pass
    anything that connects ``protocol`` to a transport, with ``stdout_fd=None``).
    ``stdout_fd`` is the descriptor behind the transport's output, released
    when the output half-closes.
    """

    def __init__(self, make_stdio=None, stdout_fd: int | None = 1):
        if make_stdio is None:
            from twisted.internet import stdio
            make_stdio = stdio.StandardIO
        self.make_stdio = make_stdio
        self.stdout_fd = stdout_fd
        self.remote = _Remote(self)
        self.local = _Local(self)
        self.done = defer.Deferred()
        self._remote_reason: Failure | None = None

    def run(self, endpoint, connect_timeout: float | None = None, clock=None) -> defer.Deferred:
        """Connect through ``endpoint`` (giving up after ``connect_timeout``
        seconds on ``clock``, if given) and pump until the session ends."""
        factory = protocol.Factory.forProtocol(lambda: self.remote)
        factory.noisy = False
        connecting = endpoint.connect(factory)
        if connect_timeout is not None:
            connecting.addTimeout(connect_timeout, clock)
        connecting.addCallbacks(self._connected, self._connect_failed)
        return self.done

    def _connect_failed(self, failure):
        if not self.done.called:
            self.done.errback(failure)

    def _connected(self, _):
        self.make_stdio(self.local)
        # Flow control both ways: a full socket buffer stops reading stdin,
        # a full stdout stops reading the socket.
        self.remote.transport.registerProducer(self.local.transport, True)
        self.local.transport.registerProducer(self.remote.transport, True)

    def _remote_lost(self, reason):
        self._remote_reason = reason
        local = self.local
        if local.transport is None or local.stdout_closed:
            self._finish()
        else:
            # Flush what the destination sent, then end.
            _close(local.transport, local.transport.loseConnection)

    def _stdout_closed(self):
        if self._remote_reason is not None:
            self._finish()
        elif self.remote.transport is not None and not self.remote.read_eof:
            # Nobody reads our output any more: end the session.
            _close(self.remote.transport, self.remote.transport.loseConnection)

    def _finish(self):
        if self.done.called:
            return
        reason = self._remote_reason
        if reason is None or reason.check(error.ConnectionDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)
