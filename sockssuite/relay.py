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

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
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
        self.peer.transport.write(data)

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
        if reason.check(ConnectionDone):
            transport.loseConnection()
        else:
            transport.abortConnection()


def _pass_half_close(closed: RelayLeg, peer: RelayLeg) -> None:
    # The closed side will produce no more bytes for the peer.
    unregister_producer(peer.transport)
    if peer.read_closed:
        # Both directions have ended: nothing is left to relay.
        unregister_producer(closed.transport)
        closed.transport.loseConnection()
        peer.transport.loseConnection()
    else:
        peer.transport.loseWriteConnection()


def unregister_producer(transport) -> None:
    # TCP transports accept a redundant unregister; some others (test
    # transports, wrappers) raise instead.  Either way, none is registered after.
    try:
        transport.unregisterProducer()
    except RuntimeError:
        pass


def join(a: RelayLeg, b: RelayLeg) -> None:
    """Start relaying between two connected legs (either may already have
    been half-closed by its peer; that is passed on now)."""
    a.peer = b
    b.peer = a
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    a.dataReceived = a.relayData
    b.dataReceived = b.relayData
    for leg, other in ((a, b), (b, a)):
        if leg.read_closed and other.transport.connected:
            _pass_half_close(leg, other)


def _buffered(transport) -> bool:
    """Whether Twisted still holds bytes for ``transport`` (then anything
    sent straight to its socket would overtake them).  True for anything but
    a plain TCP transport: a TLS wrapper, for one, passes attribute lookups
    through to the TCP transport under it, whose socket must never see the
    plaintext."""
    if type(transport) not in TCP_TRANSPORTS:
        return True
    try:
        return bool(transport._tempDataBuffer) or len(transport.dataBuffer) > transport.offset
    except AttributeError:
        return True  # not the transport we know: assume the worst


def write_now(transport, data: bytes) -> None:
    """``transport.write``, but the bytes go to the socket now, not on the
    reactor's next turn, when nothing is waiting ahead of them: a handshake
    reply reaches the client one reactor iteration (and two epoll_ctl calls)
    sooner."""
    if _buffered(transport) or getattr(transport, "socket", None) is None:
        transport.write(data)
        return
    rest = send_now(transport, data)
    if rest:
        transport.write(rest)


def send_now(transport, data: bytes) -> bytes:
    """Send what the socket takes at once; return the rest.  Only when
    nothing is buffered for it (see :func:`_buffered`)."""
    if _buffered(transport):
        return bytes(data)
    view = memoryview(data)
    while view:
        try:
            sent = transport.socket.send(view)
        except BlockingIOError:
            break
        except OSError:
            break  # the error shows up on the next read; the relay ends then
        view = view[sent:]
    return bytes(view)
