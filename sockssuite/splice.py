"""Zero-copy relaying with Linux ``splice(2)``: socket → pipe → socket.

Once a session is granted and its first bytes are out, the bytes of a TCP
relay never need to enter Python.  :class:`SpliceRelay` takes over the two
sockets of a joined relay from their (then dormant) Twisted transports and
moves data in the kernel, with the same semantics as :mod:`sockssuite.relay`:

* backpressure: each direction owns a pipe of bounded size; while the pipe
  holds bytes the destination cannot take, the source is not read;
* half-close: EOF from one side is passed on as ``shutdown(SHUT_WR)`` towards
  the other once the pipe is drained, and the other direction goes on;
* close: when both directions have ended, both transports are closed cleanly;
  a reset or error on either side aborts both (RST), so a truncated stream
  never looks like a clean end;
* byte counts: the legs' ``received`` counters advance as bytes move, so idle
  timeouts and the session log work unchanged.

It is used only where it can be: Linux, plain TCP transports (not TLS), a
reactor with file-descriptor readiness, nothing left in Twisted's write
buffers.  Everything else keeps the copying relay.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from .connecting import TCP_TRANSPORTS

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
_FLAGS = (getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)) if AVAILABLE else 0
_F_SETPIPE_SZ = 1031
#: Pipe size asked for (the kernel may give less); also the most one splice moves.
PIPE_SIZE = 1 << 20
#: Splice rounds per readiness event before yielding to other connections.
ROUNDS = 8
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


def usable(reactor, *transports) -> bool:
    """Can these transports be spliced?"""
    if not AVAILABLE or not hasattr(reactor, "addReader"):
        return False
    for t in transports:
        if type(t) not in TCP_TRANSPORTS or not t.connected or t.disconnecting or getattr(t, "_aborting", False):
            return False
        if t.dataBuffer or t._tempDataBuffer or getattr(t, "_writeDisconnected", False):
            return False
    return True


def open_pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """The two pipes (read end, write end) of one relay, one a direction.

    :raises OSError: when they cannot be made (out of descriptors, typically:
        a spliced session holds six, its two sockets and four pipe ends); the
        ones made already are closed again."""
    made: list[int] = []
    try:
        for _ in range(2):
            made.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            try:
                fcntl.fcntl(made[-1], _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the default size works, only slower
    except OSError:
        for fd in made:
            os.close(fd)
        raise
    return (made[0], made[1]), (made[2], made[3])


class _Direction:
    """Bytes from one socket to the other through a pipe."""

    __slots__ = ("src", "dst", "leg", "rpipe", "wpipe", "pending", "eof", "done")

    def __init__(self, src, dst, leg, pipe):
        self.src = src  # _End reading
        self.dst = dst  # _End writing
        self.leg = leg  # the RelayLeg whose `received` counts these bytes
        self.rpipe, self.wpipe = pipe
        self.pending = 0
        self.eof = False
        self.done = False

    def close(self):
        for fd in (self.rpipe, self.wpipe):
            try:
                os.close(fd)
            except OSError:
                pass


@implementer(IReadWriteDescriptor)
class _End:
    """One socket as the reactor sees it while spliced."""

    __slots__ = ("relay", "fd", "sock", "outgoing", "incoming", "reading", "writing", "__weakref__")

    def __init__(self, relay, transport):
        self.relay = relay
        self.sock = transport.socket
        self.fd = transport.socket.fileno()
        self.outgoing = None  # _Direction reading from this socket
        self.incoming = None  # _Direction writing to this socket
        self.reading = self.writing = False

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "SpliceRelay"

    def doRead(self):
        return self.relay.pump(self.outgoing)

    def doWrite(self):
        return self.relay.pump(self.incoming)

    def connectionLost(self, reason):
        self.relay.finish(reason if isinstance(reason, Failure) else Failure(reason))


class SpliceRelay:
    """Relays between two joined legs' sockets in the kernel.

    ``on_end(failure_or_None)`` runs once when the relay is over and both
    transports have been told to close (clean: ``None``).  ``pipes`` are
    :func:`open_pipes`' (made here if not given: an ``OSError`` then comes
    before anything about the transports has changed)."""

    def __init__(self, reactor, a, b, on_end=None, pipes=None):
        if pipes is None:
            pipes = open_pipes()
        self.reactor = reactor
        self.legs = (a, b)
        self.on_end = on_end
        self.finished = False
        for leg in (a, b):
            leg.transport.stopReading()
            leg.transport.stopWriting()
        self.ends = (_End(self, a.transport), _End(self, b.transport))
        ea, eb = self.ends
        ea.outgoing = eb.incoming = _Direction(ea, eb, a, pipes[0])
        eb.outgoing = ea.incoming = _Direction(eb, ea, b, pipes[1])
        for direction in (ea.outgoing, eb.outgoing):
            self._want_read(direction.src, True)

    # -- readiness bookkeeping ------------------------------------------------
    def _want_read(self, end, on):
        if on != end.reading:
            end.reading = on
            (self.reactor.addReader if on else self.reactor.removeReader)(end)

    def _want_write(self, end, on):
        if on != end.writing:
            end.writing = on
            (self.reactor.addWriter if on else self.reactor.removeWriter)(end)

    # -- moving bytes -----------------------------------------------------------
    def pump(self, d):
        if self.finished or d is None or d.done:
            return None
        try:
            for _ in range(ROUNDS):
                if d.pending == 0 and not d.eof:
                    try:
                        n = os.splice(d.src.fd, d.wpipe, PIPE_SIZE, flags=_FLAGS)
                    except BlockingIOError:
                        n = None
                    if n is None:
                        break
                    if n == 0:
                        d.eof = True
                    else:
                        d.pending += n
                        d.leg.received += n
                if d.pending:
                    try:
                        m = os.splice(d.rpipe, d.dst.fd, d.pending, flags=_FLAGS)
                    except BlockingIOError:
                        m = 0
                    d.pending -= m
                    if d.pending:
                        break  # the destination is full: wait until it is writable
                if d.eof and not d.pending:
                    break
        except OSError as e:
            self.finish(Failure(e))
            return None
        self._want_write(d.dst, d.pending > 0)
        self._want_read(d.src, d.pending == 0 and not d.eof)
        if d.eof and not d.pending and not d.done:
            d.done = True
            try:
                d.dst.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            d.leg.read_closed = True
            other = d.dst.outgoing
            if other.done:
                self.finish(None)
        return None

    # -- the end ------------------------------------------------------------------
    def finish(self, failure):
        """Hand both sockets back to their transports and close them: cleanly
        when ``failure`` is None, else abortively."""
        if self.finished:
            return
        self.finished = True
        for end in self.ends:
            self._want_read(end, False)
            self._want_write(end, False)
        for d in (self.ends[0].outgoing, self.ends[1].outgoing):
            d.close()
        for leg in self.legs:
            leg.peer = None  # each side is closed here, not by the other's relayLost
        for leg in self.legs:
            transport = leg.transport
            if not transport.connected or transport.disconnected:
                continue
            if failure is None:
                # Both directions are shut down already: a socket in that state
                # reports HUP as soon as it is polled again, which Twisted
                # would take for a lost connection.  Close it directly (the
                # transport is dormant: not in the reactor) as a clean end.
                transport.connectionLost(Failure(ConnectionDone()))
            else:
                transport.abortConnection()
        if self.on_end is not None:
            self.on_end(failure)
