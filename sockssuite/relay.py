"""The byte pump between two TCP connections: one relay, used by every command.

Both legs are protocols mixing in :class:`RelayLeg`.  :func:`join` couples them:

* **Backpressure**: each transport is registered as the streaming producer of the
  other.  When one side's send buffer fills, Twisted pauses the other side's
  reading, so a slow reader never makes the proxy buffer without bound (the idea
  of ``twisted.protocols.portforward``).
* **Half-close**: legs are :class:`IHalfCloseableProtocol`.  When one peer shuts
  down its write side, the relay shuts down the write side towards the other
  peer once the buffered bytes are flushed, and keeps relaying the other way.
* **Close**: a clean close on one side closes the other after its buffer is
  flushed; a reset (any error close) is passed on as an abortive close, so a
  truncated stream never looks like a clean end to the far side.

Twisted will not close a transport that still has a producer registered, so
every close path unregisters first.
"""

from __future__ import annotations

import errno

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .connecting import TCP_TRANSPORTS


@implementer(IHalfCloseableProtocol)
class RelayLeg(Protocol):
    """One side of a relay.  ``received`` counts the bytes this side read from
    its peer and forwarded; ``read_closed`` says its peer has shut down writing."""

    peer: RelayLeg | None = None
    received = 0
    read_closed = False
    write_closed = False

    def relayData(self, data: bytes) -> None:
        self.received += len(data)
        write_now(self.peer.transport, data)

    def readConnectionLost(self) -> None:
        if self.read_closed:
            # Twisted says it again when a transport whose peer already
            # shut down is read once more; passing it on twice would make
            # the peer's transport write on a shut-down socket (EPIPE).
            return
        self.read_closed = True
        peer = self.peer
        if peer is None:
            return  # not joined yet: join() passes the half-close on later
        _pass_half_close(self, peer)

    def writeConnectionLost(self) -> None:
        self.write_closed = True

    def relayLost(self, reason) -> None:
        """Called from connectionLost once the relay is joined: close the peer
        the same way this side ended (clean → close after flush; error → abort)."""
        peer = self.peer
        if peer is None:
            return
        transport = peer.transport
        if not transport.connected:
            return
        unregister_producer(transport)
        if isinstance(reason.value, ConnectionDone):  # (Failure.check builds class names)
            close_now(transport)
        else:
            transport.abortConnection()


def _pass_half_close(closed: RelayLeg, peer: RelayLeg) -> None:
    # The closed side will produce no more bytes for the peer.
    unregister_producer(peer.transport)
    if peer.read_closed:
        # Both directions have ended: nothing is left to relay.
        unregister_producer(closed.transport)
        close_now(closed.transport)
        close_now(peer.transport)
    else:
        shut_write_now(peer.transport)


def unregister_producer(transport) -> None:
    # TCP transports accept a redundant unregister; some others (test
    # transports, wrappers) raise instead.  Either way, none is registered after.
    try:
        transport.unregisterProducer()
    except RuntimeError:
        pass


def join(a: RelayLeg, b: RelayLeg, half_close: bool = True) -> None:
    """Start relaying between two connected legs.  Either may already have
    been half-closed by its peer: that is passed on now, or, with
    ``half_close=False``, by :func:`pass_half_closes` once the caller has
    written what was held back for the legs (a half-close is passed on at
    once when nothing is buffered, and bytes written after it are lost)."""
    a.peer = b
    b.peer = a
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    a.dataReceived = a.relayData
    b.dataReceived = b.relayData
    if half_close:
        pass_half_closes(a, b)


def pass_half_closes(a: RelayLeg, b: RelayLeg) -> None:
    """Pass on a half-close that came before :func:`join`."""
    for leg, other in ((a, b), (b, a)):
        if leg.read_closed and other.transport.connected:
            _pass_half_close(leg, other)


def _buffered(transport) -> bool:
    """Whether Twisted still holds bytes for ``transport`` (then anything
    sent straight to its socket would overtake them), or has shut down its
    writing.  True for anything but a plain TCP transport: a TLS wrapper,
    for one, passes attribute lookups through to the TCP transport under
    it, whose socket must never see the plaintext."""
    if type(transport) not in TCP_TRANSPORTS:
        return True
    try:
        return (bool(transport._tempDataBuffer) or len(transport.dataBuffer) > transport.offset
                or transport._writeDisconnected)
    except AttributeError:
        return True  # not the transport we know: assume the worst


def _idle(transport) -> bool:
    """A plain TCP transport, connected, with nothing buffered, no producer
    registered and no close or half-close under way: what Twisted's
    ``loseConnection``/``loseWriteConnection`` would otherwise do on the
    reactor's next turn (after registering for writing, and waking up to
    find nothing to write) can be done at once."""
    return (not _buffered(transport) and transport.connected and not transport.disconnecting
            and not transport._writeDisconnecting and transport.producer is None
            and not getattr(transport, "_aborting", False) and getattr(transport, "socket", None) is not None)


#: Made once, as Twisted's reactor does (making a Failure builds the names
#: of every class in the exception's MRO).
_DONE = Failure(CONNECTION_DONE)


def close_now(transport) -> None:
    """``transport.loseConnection()``, done now when nothing is left to
    write (see :func:`_idle`): two epoll_ctl calls and a reactor wake-up
    fewer per connection.  Exactly what Twisted does itself when the write
    side is already shut down."""
    if not _idle(transport):
        transport.loseConnection()
        return
    transport.stopReading()
    transport.stopWriting()
    transport.connectionLost(_DONE)


def shut_write_now(transport) -> None:
    """``transport.loseWriteConnection()``, done now when nothing is left
    to write (see :func:`_idle`): Twisted's own half-close, from its
    doWrite, without waiting for the socket to be writable."""
    if not _idle(transport):
        transport.loseWriteConnection()
        return
    transport._writeDisconnecting = True
    transport._writeDisconnected = True
    transport._closeWriteConnection()


def write_now(transport, data: bytes) -> None:
    """``transport.write``, but the bytes go to the socket now, not on the
    reactor's next turn, when nothing is waiting ahead of them: a handshake
    reply (and every relayed chunk) reaches the peer one reactor iteration
    and two epoll_ctl calls sooner.  What the socket does not take is
    buffered by Twisted as usual (with its backpressure)."""
    if _buffered(transport) or getattr(transport, "socket", None) is None:
        transport.write(data)
        return
    rest = _send(transport, data)
    if rest:
        transport.write(rest)


def send_now(transport, data: bytes) -> bytes:
    """Send what the socket takes at once; return the rest (for the caller
    to ``transport.write``).  Only when nothing is buffered for it (see
    :func:`_buffered`)."""
    if _buffered(transport):
        return bytes(data)
    return _send(transport, data)


def _send(transport, data: bytes) -> bytes:
    sock = transport.socket
    view = None
    try:
        sent = sock.send(data)
        if sent == len(data):
            return b""
        view = memoryview(data)[sent:]
        while view:
            sent = sock.send(view)
            view = view[sent:]
        return b""
    except BlockingIOError:
        return bytes(data if view is None else view)
    except OSError as e:
        if e.errno == errno.ENOBUFS:  # (Twisted too takes it as "nothing sent")
            return bytes(data if view is None else view)
        _dead(transport, e)
        return b""


def _ignore(*args, **kwargs):
    return None


def _dead(transport, e: OSError) -> None:
    """A send failed: the connection is dead, and the send has taken the
    socket's pending error (a reset, say).  A read now would find a clean
    end of file, and the reset would pass on as a clean close; so the
    transport is closed as lost, the way Twisted's ``abortConnection``
    closes (events already polled for it are ignored, ``connectionLost``
    comes on the next turn), with the error as the reason."""
    if getattr(transport, "_aborting", False) or not transport.connected:
        return
    transport._aborting = True
    transport.stopReading()
    transport.stopWriting()
    transport.doRead = transport.doWrite = _ignore
    transport.reactor.callLater(0, transport.connectionLost,
                                Failure(ConnectionLost(e.strerror or str(e))))
