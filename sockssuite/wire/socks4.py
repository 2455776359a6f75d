"""SOCKS4 and SOCKS4a requests and replies, as pure codecs.

The server feeds whatever bytes arrive to a :class:`RequestParser`; it returns
nothing until a whole request is there, then a :class:`Request` and keeps the
bytes that followed (a client may pipeline its first payload right behind the
request).  Every variable field is capped where it is read: unbounded user names
and host names in SOCKS4/4a have been remote code execution in other servers.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

VERSION = 4
REPLY_VERSION = 0

CONNECT = 1
BIND = 2
COMMAND_NAMES = {CONNECT: "connect", BIND: "bind"}
#: Not a SOCKS4 command: a SOCKS5 UDP ASSOCIATE, carried in the same request
#: record through the server (the SOCKS4 parser never yields it).
UDP_ASSOCIATE = 3
_ALL_COMMAND_NAMES = {**COMMAND_NAMES, UDP_ASSOCIATE: "udp"}

GRANTED = 90
REJECTED = 91
NO_IDENTD = 92
BAD_IDENT = 93

#: The longest USERID or SOCKS4a HOSTNAME we read (ours; the protocol has no
#: limit and the original truncated USERID at 127 bytes).
MAX_FIELD = 1024

#: The longest DNS name (RFC 1035: 255 octets on the wire, 253 as text).
MAX_HOSTNAME = 253

_HEADER = struct.Struct("!BBH4s")
_REPLY = struct.Struct("!BBH4s")
_LABEL = re.compile(rb"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class ProtocolError(Exception):
    """The client broke the protocol.  ``reply`` is the code to answer with
    before closing (``None``: close without a reply, the peer is not SOCKS4)."""

    def __init__(self, message: str, reply: int | None = REJECTED):
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Request:
    command: int
    port: int
    address: str  # dotted quad; for SOCKS4a the placeholder 0.0.0.x
    userid: bytes
    hostname: str | None = None  # SOCKS4a only, validated and lower-cased

    @property
    def command_name(self) -> str:
        return _ALL_COMMAND_NAMES.get(self.command, str(self.command))

    @property
    def destination(self) -> str:
        """The destination as asked: the SOCKS4a name, else the address."""
        return self.hostname if self.hostname is not None else self.address


def is_socks4a(packed_address: bytes) -> bool:
    """0.0.0.x with x != 0 announces a SOCKS4a host name after the USERID."""
    return packed_address[:3] == b"\0\0\0" and packed_address[3] != 0


def valid_hostname(name: bytes) -> bool:
    """A DNS host name: LDH labels (underscore tolerated), at most 253 octets.

    Checked before any resolution so that control characters, spaces and
    oversize names never reach the resolver or the logs."""
    if name.endswith(b"."):
        name = name[:-1]
    if not name or len(name) > MAX_HOSTNAME:
        return False
    return all(_LABEL.match(label) for label in name.split(b"."))


class RequestParser:
    """Incremental SOCKS4/4a request parser.

    ``feed(data)`` returns ``None`` until the request is complete, then the
    :class:`Request`; after that, ``leftover`` holds the bytes that came after
    it.  Raises :class:`ProtocolError` on anything malformed or oversize.
    """

    __slots__ = ("_buf", "_scanned", "_userid_end", "leftover", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 8  # where the NUL search resumes
        self._userid_end = -1
        self.leftover = b""
        self.done = False

    def feed(self, data: bytes) -> Request | None:
        if self.done:
            raise ProtocolError("request already parsed")
        buf = self._buf
        buf += data
        if len(buf) >= 1 and buf[0] != VERSION:
            raise ProtocolError(f"version {buf[0]} is not SOCKS4")
        if len(buf) >= 2 and buf[1] not in COMMAND_NAMES:
            raise ProtocolError(f"unknown command {buf[1]}")
        if len(buf) < 8:
            return None
        socks4a = is_socks4a(bytes(buf[4:8]))
        if self._userid_end < 0:
            nul = buf.find(0, self._scanned)
            if nul < 0:
                self._scanned = len(buf)
                if len(buf) - 8 > MAX_FIELD:
                    raise ProtocolError("USERID longer than %d bytes" % MAX_FIELD)
                return None
            if nul - 8 > MAX_FIELD:
                raise ProtocolError("USERID longer than %d bytes" % MAX_FIELD)
            self._userid_end = nul
            self._scanned = nul + 1
        end = self._userid_end
        hostname = None
        if socks4a:
            start = end + 1
            nul = buf.find(0, self._scanned)
            if nul < 0:
                self._scanned = len(buf)
                if len(buf) - start > MAX_FIELD:
                    raise ProtocolError("HOSTNAME longer than %d bytes" % MAX_FIELD)
                return None
            raw = bytes(buf[start:nul])
            if not valid_hostname(raw):
                raise ProtocolError("invalid SOCKS4a host name %r" % raw[:64])
            hostname = raw.rstrip(b".").decode("ascii").lower()
            end = nul
        _, command, port, packed = _HEADER.unpack_from(buf)
        request = Request(
            command=command,
            port=port,
            address="%d.%d.%d.%d" % tuple(packed),
            userid=bytes(buf[8 : self._userid_end]),
            hostname=hostname,
        )
        self.leftover = bytes(buf[end + 1 :])
        self._buf = bytearray()
        self.done = True
        return request


def encode_request(
    command: int,
    port: int,
    address: str | None = None,
    userid: bytes = b"",
    hostname: str | None = None,
) -> bytes:
    """Build a request; give ``hostname`` (and no ``address``) for SOCKS4a.

    Refuses what the wire cannot carry: a NUL inside USERID or HOSTNAME, an
    oversize field, a port out of range (the curl CVE-2023-38545 lesson:
    encoders must check too)."""
    if command not in COMMAND_NAMES:
        raise ValueError(f"unknown SOCKS4 command {command}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if b"\0" in userid or len(userid) > MAX_FIELD:
        raise ValueError("USERID must be at most %d bytes without NUL" % MAX_FIELD)
    if hostname is not None:
        if address is not None:
            raise ValueError("give either address or hostname, not both")
        name = hostname.encode("idna") if not hostname.isascii() else hostname.encode("ascii")
        if not valid_hostname(name):
            raise ValueError(f"invalid host name {hostname!r}")
        return _HEADER.pack(VERSION, command, port, b"\0\0\0\1") + userid + b"\0" + name + b"\0"
    if address is None:
        raise ValueError("an address or a hostname is required")
    return _HEADER.pack(VERSION, command, port, pack_ipv4(address)) + userid + b"\0"


def pack_ipv4(address: str) -> bytes:
    """Strict dotted quad (four decimal octets) to 4 bytes."""
    parts = address.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
        raise ValueError(f"not a dotted-quad IPv4 address: {address!r}")
    octets = [int(p) for p in parts]
    if any(o > 255 for o in octets) or any(len(p) > 1 and p[0] == "0" for p in parts):
        raise ValueError(f"not a canonical IPv4 address: {address!r}")
    return bytes(octets)


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    port: int
    address: str


def encode_reply(code: int, port: int = 0, address: str = "0.0.0.0") -> bytes:
    """The 8-byte reply, every byte specified (no uninitialised padding)."""
    return _REPLY.pack(REPLY_VERSION, code, port & 0xFFFF, pack_ipv4(address))


def decode_reply(data: bytes) -> Reply:
    """Decode the 8-byte reply (client side)."""
    if len(data) != 8:
        raise ProtocolError(f"a SOCKS4 reply is 8 bytes, got {len(data)}", reply=None)
    version, code, port, packed = _REPLY.unpack(data)
    if version != REPLY_VERSION:
        raise ProtocolError(f"reply version {version}, expected 0", reply=None)
    return Reply(code, port, "%d.%d.%d.%d" % tuple(packed))
