"""RFC 1413 (Identification Protocol) queries and answers, as pure codecs.

Query:  ``<port-on-client-host> , <port-on-our-host> CR LF``
Answer: ``<ports> : USERID : <opsys>[,<charset>] : <user-id>``
    or  ``<ports> : ERROR : INVALID-PORT | NO-USER | HIDDEN-USER | UNKNOWN-ERROR``

Whitespace around fields is optional; lines end in CR LF (a bare LF is
accepted, as real identds send one).  The user-id is everything after the third
colon (it may contain colons and spaces, RFC 1413 allows both) and at most 512
octets; we read at most :data:`MAX_LINE` bytes before giving up.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest answer line we read: 512 octets of user-id plus generous room
#: for ports, opsys and charset.
MAX_LINE = 1024
MAX_USERID = 512

ERRORS = ("INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR")


class IdentProtocolError(Exception):
    """The identd's answer is not RFC 1413 (or is too long)."""


@dataclass(frozen=True, slots=True)
class UserID:
    client_port: int
    server_port: int
    opsys: str
    charset: str | None
    user: str


@dataclass(frozen=True, slots=True)
class Error:
    client_port: int
    server_port: int
    error: str  # one of ERRORS, or a non-standard token (X-...), upper-cased


def encode_query(client_port: int, server_port: int) -> bytes:
    for port in (client_port, server_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1..65535")
    return b"%d , %d\r\n" % (client_port, server_port)


def _port(text: bytes) -> int:
    text = text.strip(b" \t")
    if not text.isdigit() or len(text) > 5:
        raise IdentProtocolError(f"bad port {text[:16]!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise IdentProtocolError(f"port {port} out of range")
    return port


def parse_answer(line: bytes) -> UserID | Error:
    """Parse one answer line (without its line end)."""
    parts = line.split(b":", 3)
    if len(parts) < 3:
        raise IdentProtocolError(f"not an ident answer: {line[:64]!r}")
    ports = parts[0].split(b",")
    if len(ports) != 2:
        raise IdentProtocolError(f"bad port pair {parts[0][:32]!r}")
    client_port, server_port = _port(ports[0]), _port(ports[1])
    kind = parts[1].strip(b" \t").upper()
    if kind == b"ERROR":
        error = b":".join(parts[2:]).strip(b" \t").upper()
        if not error or not all(33 <= c < 127 for c in error):
            raise IdentProtocolError(f"bad error token {error[:32]!r}")
        return Error(client_port, server_port, error.decode("ascii"))
    if kind != b"USERID":
        raise IdentProtocolError(f"unknown answer type {kind[:16]!r}")
    if len(parts) != 4:
        raise IdentProtocolError("USERID answer without a user-id field")
    opsys_field = parts[2].split(b",", 1)
    opsys = opsys_field[0].strip(b" \t")
    charset = opsys_field[1].strip(b" \t") if len(opsys_field) == 2 else None
    if not opsys:
        raise IdentProtocolError("empty opsys field")
    user = parts[3].strip(b" \t")
    if not user:
        raise IdentProtocolError("empty user-id")
    if len(user) > MAX_USERID:
        raise IdentProtocolError(f"user-id longer than {MAX_USERID} octets")
    if b"\0" in user or b"\r" in user:
        raise IdentProtocolError("NUL or CR inside the user-id")
    # The user-id is octets in the identd's charset; USERIDs in SOCKS requests
    # are bytes too, and both are compared as UTF-8 with surrogateescape, so
    # any octets survive the round trip exactly.
    return UserID(client_port, server_port, opsys.decode("ascii", "replace"),
                  charset.decode("ascii", "replace") if charset else None,
                  user.decode("utf-8", "surrogateescape"))


class AnswerReader:
    """Collects bytes until one answer line is complete.

    ``feed(data)`` returns ``None`` until a line ends (LF, CR optional), then the
    parsed answer.  Raises :class:`IdentProtocolError` for a line over
    :data:`MAX_LINE` bytes or an unparsable one."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> UserID | Error | None:
        start = len(self._buf)
        self._buf += data
        end = self._buf.find(b"\n", start)
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise IdentProtocolError(f"answer longer than {MAX_LINE} bytes")
            return None
        if end > MAX_LINE:
            raise IdentProtocolError(f"answer longer than {MAX_LINE} bytes")
        line = bytes(self._buf[:end])
        if line.endswith(b"\r"):
            line = line[:-1]
        return parse_answer(line)
