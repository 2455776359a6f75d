"""The control socket (``--control ENDPOINT``): list and close live sessions.

A line protocol for ``sockssuite sessions``: the client sends ``list`` or
``close ID`` and gets one JSON object a line back.  Who may use it is decided
by the socket's file mode (``unix:/run/sockssuite.ctl:mode=600`` lets only the
daemon's user in): the protocol itself trusts whoever can connect, so never
put it on a TCP port reachable by others.
"""

from __future__ import annotations

import json

from twisted.application import service
from twisted.internet import endpoints, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from .service import BoundService, StartError

log = Logger(namespace="sockssuite.control")


def describe(session, now: float) -> dict:
    """One live session as plain data."""
    r = session.request
    return {
        "id": str(session.session_id),
        "client": session.client,
        "user": session.user_text,
        "command": r.command_name if r else "-",
        "destination": f"{session.destination_text or '-'}:{r.port if r else 0}",
        "rule_line": session.rule_line,
        "age": round(now - session.started, 3),
        "bytes_up": session.received,
        "bytes_down": session.upstream.received if session.upstream else 0,
        "state": "relaying" if session.upstream else "handshake",
        "engine": ("splice" if session.splice is not None else "copy") if session.upstream else None,
    }


@implementer(IHalfCloseableProtocol)
class _Control(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024

    def readConnectionLost(self):
        # "list" then end-of-file (socat, nc -N): answer first, then close.
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def lineReceived(self, line):
        words = line.decode("utf-8", "replace").split()
        owner = self.factory.owner
        if not words:
            return
        if words[0] == "list" and len(words) == 1:
            self._send(owner.list_sessions())
        elif words[0] == "close" and len(words) == 2:
            self._send(owner.close_session(words[1]))
        else:
            self._send({"error": "commands: 'list', 'close ID'"})

    def _send(self, obj):
        self.sendLine(json.dumps(obj).encode())

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class ControlService(BoundService):
    """Serves the control protocol for the sibling ``socks`` service."""

    name = "control"
    _live = ("_reactor", "port")

    def __init__(self, endpoint: str, reactor=None):
        self.endpoint = endpoint
        self._reset_live()
        self._reactor = reactor

    def _reset_live(self):
        self._reactor = None
        self.port = None

    def _bind(self):
        factory = protocol.Factory.forProtocol(_Control)
        factory.owner = self
        factory.noisy = False
        failures = []
        endpoints.serverFromString(self.reactor, self.endpoint).listen(factory).addCallbacks(
            lambda port: setattr(self, "port", port), failures.append)
        if failures:
            raise StartError(f"sockssuite: --control {self.endpoint}: {failures[0].getErrorMessage()}")
        log.info("control socket on {endpoint}", endpoint=self.endpoint)

    def _socks(self):
        try:
            return self.parent.getServiceNamed("socks")
        except (AttributeError, KeyError):
            return None

    def list_sessions(self) -> dict:
        socks = self._socks()
        if socks is None or socks.factory is None:
            return {"sessions": []}
        if getattr(socks, "pool", None) is not None:
            return {"error": "with --workers the sessions live in the worker processes; "
                             "see the log or the metrics"}
        now = self.reactor.seconds()
        sessions = sorted(socks.factory.sessions, key=lambda s: s.started)
        return {"sessions": [describe(s, now) for s in sessions]}

    def close_session(self, ident: str) -> dict:
        socks = self._socks()
        if socks is None or socks.factory is None:
            return {"error": f"no session {ident}"}
        for session in list(socks.factory.sessions):
            if str(session.session_id) == ident:
                session.close_by_operator()
                log.info("session {session} closed by the operator (control socket)", session=ident)
                return {"closed": ident}
        return {"error": f"no session {ident}"}

    def stopService(self):
        service.Service.stopService(self)
        self._unbound()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
