"""SOCKS5 on the SOCKS4 port: method negotiation, username/password, and the
request, turned into the same request record the SOCKS4 path decides on.

After the handshake, a SOCKS5 session goes through exactly the code of a
SOCKS4 one (resolution, sockd.conf, ident, connect, relay, logs); only the
replies differ, and :func:`reply_for` maps them.  The authenticated user
name is the USERID that ``*=`` user lists and ident checks see.  So one
policy governs both versions, and with ``--require-auth`` a SOCKS4 request
(which cannot authenticate) is refused rather than waved through.

Implemented: CONNECT and BIND to IPv4 and IPv6 addresses and to host names
(resolved to IPv4), and UDP ASSOCIATE (:mod:`sockssuite.udpassociate`).
"""

from __future__ import annotations

from .names import normalize_address
from .relay import write_now
from .textsafe import printable
from .wire import socks4
from .wire import socks5 as wire

#: Session outcomes and the SOCKS5 reply that refuses with each.
_REFUSALS = {
    "denied": wire.NOT_ALLOWED,
    "ident-unreachable": wire.NOT_ALLOWED,
    "ident-mismatch": wire.NOT_ALLOWED,
    "client-limit": wire.GENERAL_FAILURE,
    "server-full": wire.GENERAL_FAILURE,
    "resolve-failed": wire.HOST_UNREACHABLE,
    "bind-refused": wire.NOT_ALLOWED,
    "bind-failed": wire.GENERAL_FAILURE,
    "bind-wrong-peer": wire.NOT_ALLOWED,
    "bind-timeout": wire.TTL_EXPIRED,
    "unsupported": wire.COMMAND_NOT_SUPPORTED,
}


def reply_for(outcome: str, detail: str) -> int:
    if outcome == "connect-failed":
        if "refused" in detail.lower():
            return wire.CONNECTION_REFUSED
        if "timed out" in detail.lower():
            return wire.HOST_UNREACHABLE
        return wire.NETWORK_UNREACHABLE
    return _REFUSALS.get(outcome, wire.GENERAL_FAILURE)


#: What :meth:`Handshake.feed` returns while a password is being checked.
CHECKING = "checking"


class Handshake:
    """Drives one client's SOCKS5 handshake.  ``feed`` returns None while it
    goes on, or ``(request, leftover)`` once a request arrived; it raises
    :class:`Refused` with the bytes to send (possibly none) and why.

    A password check (bcrypt: a quarter of a second of CPU at the default
    cost) must not run in the reactor thread, where it would stall every
    session: when credentials arrive, ``feed`` returns :data:`CHECKING`,
    with them in :attr:`credentials`; the caller checks them elsewhere and
    calls :meth:`checked` with the verdict, which goes on like ``feed``.
    Bytes that arrive meanwhile are held."""

    def __init__(self, transport, passwords, require_auth: bool):
        self.transport = transport
        self.passwords = passwords
        self.require_auth = require_auth
        self.parser = wire.GreetingParser()
        self.stage = "greeting"
        self.username = b""
        self.credentials = None
        self.held = b""

    def feed(self, data: bytes):
        if self.stage == "checking":
            self.held += data
            if len(self.held) > 4096:
                raise Refused("protocol-error", "too much data while the password was checked", None)
            return CHECKING
        while True:
            try:
                record = self.parser.feed(data)
            except wire.SOCKS5Error as e:
                reply = None
                if self.stage == "request" and e.reply is not None:
                    reply = wire.encode_reply(e.reply)
                raise Refused("protocol-error", str(e), reply)
            if record is None:
                return None
            data = self.parser.leftover
            if self.stage == "greeting":
                self._greeting(record)
            elif self.stage == "auth":
                self.credentials, self.stage, self.held = record, "checking", data
                self.username = record.username
                return CHECKING
            else:
                return self._request(record), data

    def _greeting(self, greeting):
        offered = greeting.methods
        if self.passwords is not None and wire.USERNAME_PASSWORD in offered:
            write_now(self.transport, wire.encode_method(wire.USERNAME_PASSWORD))
            self.parser, self.stage = wire.CredentialsParser(), "auth"
        elif not self.require_auth and wire.NO_AUTH in offered:
            write_now(self.transport, wire.encode_method(wire.NO_AUTH))
            self.parser, self.stage = wire.RequestParser(), "request"
        else:
            raise Refused("auth-failed", "no acceptable authentication method offered "
                          f"(offered {list(offered)})", wire.encode_method(wire.NO_ACCEPTABLE))

    def checked(self, ok: bool):
        """The verdict on :attr:`credentials`; then on as :meth:`feed`."""
        credentials, self.credentials = self.credentials, None
        if not ok:
            who = printable(credentials.username.decode("utf-8", "replace"))
            raise Refused("auth-failed", f"wrong user name or password (user {who})",
                          wire.encode_auth_status(False))
        write_now(self.transport, wire.encode_auth_status(True))
        self.parser, self.stage = wire.RequestParser(), "request"
        held, self.held = self.held, b""
        return self.feed(held)

    def _request(self, request):
        command = {wire.CONNECT: socks4.CONNECT, wire.BIND: socks4.BIND,
                   wire.UDP_ASSOCIATE: socks4.UDP_ASSOCIATE}[request.command]
        if command == socks4.UDP_ASSOCIATE and request.atyp == wire.ATYP_DOMAIN:
            # DST.ADDR of a UDP ASSOCIATE is where the client will send from;
            # the server uses the TCP peer's address anyway (a NAT may change it).
            return socks4.Request(command, request.port, "0.0.0.0", self.username)
        if request.atyp == wire.ATYP_IPV6:
            # Canonical, and IPv4-mapped as its IPv4 address, for the rules
            # and the "this host" check too (::ffff:0.0.0.0 is 0.0.0.0).
            host = normalize_address(request.host) or request.host
            return socks4.Request(command, request.port, host, self.username)
        if request.atyp == wire.ATYP_IPV4:
            return socks4.Request(command, request.port, request.host, self.username)
        name = request.host.encode("ascii")
        if not socks4.valid_hostname(name):
            raise Refused("protocol-error", f"invalid host name {request.host[:64]!r}",
                          wire.encode_reply(wire.HOST_UNREACHABLE))
        return socks4.Request(command, request.port, "0.0.0.1", self.username,
                              hostname=request.host.rstrip(".").lower())


class Refused(Exception):
    def __init__(self, outcome: str, detail: str, reply: bytes | None):
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.reply = reply
