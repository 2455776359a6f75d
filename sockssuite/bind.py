"""The listening half of SOCKS BIND: one inbound connection, from one address.

A :class:`BindListener` is the factory of a BIND session's listening socket.
It accepts exactly one connection; the first one to arrive closes the
listener whatever happens next, and it is handed to the session only if its
source address is the one the client named (DSTIP).  Everything else about
the session — replies, the relay, timeouts — stays in the server protocol.
"""

from __future__ import annotations

import socket

from twisted.internet import protocol


class BindListener(protocol.Factory):
    noisy = False

    def __init__(self, session, expected_source: str | None):
        """``expected_source``: the only address a peer may come from, or
        ``None`` to accept any (DSTIP 0.0.0.0 with --bind-any-source)."""
        self.session = session
        self.expected_source = expected_source
        self.used = False

    def buildProtocol(self, addr):
        if self.used:
            return None
        self.used = True
        return self.session.bind_arrived(addr, self.expected_source is None
                                         or addr.host == self.expected_source)


def outward_address(destination: str, port: int) -> str | None:
    """The local address the kernel would use to reach ``destination``: a
    connected UDP socket sends nothing, but its name says which interface the
    route goes out of.  ``None`` when there is no route (or no destination)."""
    if destination in ("0.0.0.0", "::"):
        return None
    s = socket.socket(socket.AF_INET6 if ":" in destination else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((destination, port or 9))
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if address in ("0.0.0.0", "::") else address
