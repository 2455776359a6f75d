"""RFC 1413 client: ask the client host's identd who owns a connection.

We do not reuse :class:`twisted.protocols.ident.IdentClient`: on Twisted 26.10
it raises ``TypeError`` on the first real answer (it mixes ``str`` and
``bytes``, twisted/twisted#11868), it has no timeout and no cancellation, and
its line length bound is the generic LineReceiver one rather than RFC 1413's.
The protocol below is a thin adapter over the pure codec in
:mod:`sockssuite.wire.ident`; time and reactor are injected.

:func:`lookup` never fails with an error: every way an identd can fail us
(refused, timed out, closed early, garbage, an over-long line, INVALID-PORT,
UNKNOWN-ERROR) becomes an :class:`IdentResult` with status ``unreachable``, and
``NO-USER`` / ``HIDDEN-USER`` become ``no-user`` ("identd answered; the user is
not known").  Only cancellation (the SOCKS client left) propagates.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, endpoints, error, protocol

from .connecting import connect_protocol
from .textsafe import printable
from .wire import ident as wire

DEFAULT_PORT = 113
DEFAULT_TIMEOUT = 15.0  # the original sockd's

OK = "ok"
NO_USER = "no-user"
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class IdentResult:
    status: str  # OK, NO_USER or UNREACHABLE
    user: str | None = None  # the identd's user-id when status is OK
    detail: str = ""


class _Query(protocol.Protocol):
    def __init__(self, client_port: int, server_port: int):
        self.client_port = client_port
        self.server_port = server_port
        self.reader = wire.AnswerReader()
        self.answer = defer.Deferred(self._cancel)

    def _cancel(self, d):
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self):
        self.transport.write(wire.encode_query(self.client_port, self.server_port))

    def dataReceived(self, data):
        if self.answer.called:
            return
        try:
            answer = self.reader.feed(data)
        except wire.IdentProtocolError as e:
            self._done(IdentResult(UNREACHABLE, None, f"bad answer from identd: {e}"))
            return
        if answer is None:
            return
        if (answer.client_port, answer.server_port) != (self.client_port, self.server_port):
            self._done(IdentResult(UNREACHABLE, None,
                                   f"identd answered for ports {answer.client_port},{answer.server_port}"))
        elif isinstance(answer, wire.UserID):
            self._done(IdentResult(OK, answer.user, f"USERID {answer.opsys}"))
        elif answer.error in ("NO-USER", "HIDDEN-USER"):
            self._done(IdentResult(NO_USER, None, f"ERROR {answer.error}"))
        else:
            self._done(IdentResult(UNREACHABLE, None, f"ERROR {printable(answer.error)}"))

    def _done(self, result):
        self.transport.loseConnection()
        self.answer.callback(result)

    def connectionLost(self, reason):
        if not self.answer.called:
            self.answer.callback(IdentResult(UNREACHABLE, None, "identd closed without an answer"))


async def _lookup(reactor, client_host, client_port, server_host, server_port, ident_port, timeout):
    query = _Query(client_port, server_port)
    # Query from the address the client reached us on: the identd matches the
    # connection by its port pair as seen from that address.
    endpoint = endpoints.TCP4ClientEndpoint(reactor, client_host, ident_port, timeout=timeout,
                                            bindAddress=(server_host, 0))
    try:
        await connect_protocol(endpoint, query)
    except error.ConnectingCancelledError:
        # The caller cancelled us while the endpoint was still connecting; the
        # endpoint reports that as its own error, not CancelledError.  Callers
        # (the SOCKS session whose client left) must see a plain cancellation,
        # whichever phase the lookup was in.
        raise defer.CancelledError() from None
    except (error.ConnectError, OSError) as e:
        return IdentResult(UNREACHABLE, None, f"cannot connect to identd: {e.__class__.__name__}")
    return await query.answer


def lookup(reactor, client_host: str, client_port: int, server_host: str, server_port: int,
           *, ident_port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """Ask the identd on ``client_host`` who owns the connection from
    ``client_port`` to our ``server_port``; fires with an :class:`IdentResult`
    within ``timeout`` seconds.  Cancelling the Deferred closes the query."""
    d = defer.ensureDeferred(_lookup(reactor, client_host, client_port, server_host, server_port,
                                     ident_port, timeout))

    def timed_out(result, timeout):
        return IdentResult(UNREACHABLE, None, f"no answer from identd within {timeout:g}s")

    d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d
