"""SOCKS5 (RFC 1928) and username/password authentication (RFC 1929), as pure
codecs — the groundwork of the SOCKS5 server; the UDP request header they
share with the encapsulating forwarder is in :mod:`sockssuite.wire.udp`.

Each client message has an incremental parser with the same contract as the
SOCKS4 one: ``feed(data)`` returns ``None`` until the message is complete,
then the record, and keeps what followed in ``leftover``; anything malformed
raises :class:`SOCKS5Error`, carrying the reply code to answer with.  Every
length is a single unsigned byte read where it is used, so no field can grow
past 255 bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

VERSION = 5
AUTH_VERSION = 1

NO_AUTH = 0x00
GSSAPI = 0x01
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE = 0xFF

CONNECT = 1
BIND = 2
UDP_ASSOCIATE = 3
COMMAND_NAMES = {CONNECT: "connect", BIND: "bind", UDP_ASSOCIATE: "udp"}

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

# Reply codes (RFC 1928 section 6)
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SOCKS5Error(Exception):
    """The client broke the protocol; ``reply`` is the code to answer with
    (None: close without a reply, e.g. before any reply format is agreed)."""

    def __init__(self, message: str, reply: int | None = GENERAL_FAILURE):
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Greeting:
    methods: bytes  # the authentication methods the client offers


@dataclass(frozen=True, slots=True)
class Credentials:
    username: bytes
    password: bytes

    def __repr__(self):  # never show a password in a traceback or a log
        return f"Credentials(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class Request:
    command: int
    atyp: int
    host: str  # dotted quad, IPv6 text, or the domain name as sent (ASCII)
    port: int

    @property
    def command_name(self) -> str:
        return COMMAND_NAMES.get(self.command, str(self.command))


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    atyp: int
    host: str
    port: int


class _Parser:
    """Incremental reader: subclasses describe the message in ``_parse``,
    which returns the record and its length, or None if more is needed."""

    __slots__ = ("_buf", "leftover", "done")

    def __init__(self):
        self._buf = bytearray()
        self.leftover = b""
        self.done = False

    def feed(self, data: bytes):
        if self.done:
            raise SOCKS5Error("message already parsed", reply=None)
        self._buf += data
        parsed = self._parse(self._buf)
        if parsed is None:
            return None
        record, end = parsed
        self.leftover = bytes(self._buf[end:])
        self._buf = bytearray()
        self.done = True
        return record

    def _parse(self, buf):  # pragma: no cover - abstract
        raise NotImplementedError


class GreetingParser(_Parser):
    """``VER NMETHODS METHODS...`` (RFC 1928 section 3)."""

    __slots__ = ()

    def _parse(self, buf):
        if len(buf) >= 1 and buf[0] != VERSION:
            raise SOCKS5Error(f"version {buf[0]} is not SOCKS5", reply=None)
        if len(buf) < 2:
            return None
        n = buf[1]
        if n == 0:
            raise SOCKS5Error("no authentication method offered", reply=None)
        if len(buf) < 2 + n:
            return None
        return Greeting(bytes(buf[2:2 + n])), 2 + n


class CredentialsParser(_Parser):
    """``VER ULEN UNAME PLEN PASSWD`` (RFC 1929)."""

    __slots__ = ()

    def _parse(self, buf):
        if len(buf) >= 1 and buf[0] != AUTH_VERSION:
            raise SOCKS5Error(f"username/password version {buf[0]}, expected 1", reply=None)
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if ulen == 0:
            raise SOCKS5Error("empty user name", reply=None)
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        return Credentials(bytes(buf[2:2 + ulen]), bytes(buf[3 + ulen:end])), end


def _parse_address(buf, offset):
    """(atyp, host, port, end) of an address at ``offset``, or None if short."""
    if len(buf) < offset + 1:
        return None
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4 + 2
        if len(buf) < end:
            return None
        host = "%d.%d.%d.%d" % tuple(buf[offset + 1:offset + 5])
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1:offset + 17])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < offset + 2:
            return None
        n = buf[offset + 1]
        if n == 0:
            raise SOCKS5Error("empty domain name", reply=HOST_UNREACHABLE)
        end = offset + 2 + n + 2
        if len(buf) < end:
            return None
        raw = bytes(buf[offset + 2:offset + 2 + n])
        if not all(0x21 <= c < 0x7F for c in raw):
            raise SOCKS5Error(f"invalid domain name {raw[:64]!r}", reply=HOST_UNREACHABLE)
        host = raw.decode("ascii")
    else:
        raise SOCKS5Error(f"unknown address type {atyp}", reply=ADDRESS_TYPE_NOT_SUPPORTED)
    port = struct.unpack_from("!H", buf, end - 2)[0]
    return atyp, host, port, end


class RequestParser(_Parser):
    """``VER CMD RSV ATYP DST.ADDR DST.PORT`` (RFC 1928 section 4)."""

    __slots__ = ()

    def _parse(self, buf):
        if len(buf) >= 1 and buf[0] != VERSION:
            raise SOCKS5Error(f"request version {buf[0]}, expected 5")
        if len(buf) >= 2 and buf[1] not in COMMAND_NAMES:
            raise SOCKS5Error(f"unknown command {buf[1]}", reply=COMMAND_NOT_SUPPORTED)
        if len(buf) >= 3 and buf[2] != 0:
            raise SOCKS5Error("reserved byte is not 0")
        if len(buf) < 4:
            return None
        parsed = _parse_address(buf, 3)
        if parsed is None:
            return None
        atyp, host, port, end = parsed
        return Request(buf[1], atyp, host, port), end


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port for ``host`` (an IPv4 or IPv6 literal, or a
    name of at most 255 ASCII bytes)."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes([ATYP_IPV4]) + ip.packed + struct.pack("!H", port)
    if isinstance(ip, ipaddress.IPv6Address):
        return bytes([ATYP_IPV6]) + ip.packed + struct.pack("!H", port)
    name = host.encode("idna") if not host.isascii() else host.encode("ascii")
    if not name or len(name) > 255 or not all(0x21 <= c < 0x7F for c in name):
        raise ValueError(f"cannot send host name {host!r} (1-255 printable ASCII bytes)")
    return bytes([ATYP_DOMAIN, len(name)]) + name + struct.pack("!H", port)


def encode_greeting(methods: bytes) -> bytes:
    if not 1 <= len(methods) <= 255:
        raise ValueError("offer 1 to 255 methods")
    return bytes([VERSION, len(methods)]) + methods


def encode_method(method: int) -> bytes:
    return bytes([VERSION, method])


def encode_credentials(username: bytes, password: bytes) -> bytes:
    if not 1 <= len(username) <= 255 or len(password) > 255:
        raise ValueError("user name 1-255 bytes, password 0-255 bytes")
    return bytes([AUTH_VERSION, len(username)]) + username + bytes([len(password)]) + password


def encode_auth_status(ok: bool) -> bytes:
    return bytes([AUTH_VERSION, 0 if ok else 1])


def encode_request(command: int, host: str, port: int) -> bytes:
    if command not in COMMAND_NAMES:
        raise ValueError(f"unknown SOCKS5 command {command}")
    return bytes([VERSION, command, 0]) + encode_address(host, port)


def encode_reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes([VERSION, code, 0]) + encode_address(host, port)


class ReplyParser(_Parser):
    """The server's reply (client side)."""

    __slots__ = ()

    def _parse(self, buf):
        if len(buf) >= 1 and buf[0] != VERSION:
            raise SOCKS5Error(f"reply version {buf[0]}, expected 5", reply=None)
        if len(buf) < 4:
            return None
        parsed = _parse_address(buf, 3)
        if parsed is None:
            return None
        atyp, host, port, end = parsed
        return Reply(buf[1], atyp, host, port), end
