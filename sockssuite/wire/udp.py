"""The RFC 1928 §7 UDP request header, as a pure codec.

Every datagram between a sockified UDP client and an ``encapsulate`` port of the
forwarder carries this header; the client's datagrams name where the data goes,
and the answers name where it came from::

    +-----+------+------+----------+----------+----------+
    | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +-----+------+------+----------+----------+----------+
    |  2  |  1   |  1   | Variable |    2     | Variable |
    +-----+------+------+----------+----------+----------+

RSV is two zero octets.  ATYP is 1 (DST.ADDR: 4 octets of IPv4), 3 (DST.ADDR: a
length octet and that many octets of host name) or 4 (16 octets of IPv6).
DST.PORT is in network byte order.  FRAG is decoded and returned as sent; the
forwarder drops FRAG != 0 (it does no reassembly, RFC 1928 allows that).

The decoder takes any bytes and returns a :class:`UDPPacket` or raises
:class:`UDPHeaderError`, nothing else.  Host names are held to DNS syntax on
both sides (the encoder refuses what the decoder would refuse, curl's
CVE-2023-38545 being the lesson that encoders must check too), and a name that
is really an address spelt some other way (``127.1``, ``0x7f.0.0.1``) is refused:
addresses travel as ATYP 1 or 4, never as names a resolver might read loosely.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

from sockssuite.wire.socks4 import pack_ipv4

__all__ = [
    "ATYP_DOMAINNAME",
    "ATYP_IPV4",
    "ATYP_IPV6",
    "MAX_NAME",
    "UDPHeaderError",
    "UDPPacket",
    "decode_udp",
    "encode_udp",
]

ATYP_IPV4 = 1
ATYP_DOMAINNAME = 3
ATYP_IPV6 = 4

#: The longest host name the header can carry (its length is one octet).
MAX_NAME = 255

#: RSV, FRAG and ATYP.
_START = struct.Struct("!HBB")
_PORT = struct.Struct("!H")
_LABEL = re.compile(rb"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
# A label inet_aton() would take for a number: decimal, octal or hex.
_NUMERIC_LABEL = re.compile(rb"(?:[0-9]+|0[xX][0-9A-Fa-f]*)\Z")


class UDPHeaderError(Exception):
    """The datagram does not start with a well-formed RFC 1928 UDP request
    header.  The message says what was expected; the forwarder drops the
    datagram and logs it."""


@dataclass(frozen=True, slots=True)
class UDPPacket:
    """A decoded datagram.

    ``host`` is a dotted quad for ATYP 1, the :func:`socket.inet_ntop` text of
    the address for ATYP 4 (so an IPv4-mapped address reads ``::ffff:a.b.c.d``),
    and the name exactly as sent (ASCII, case kept, a trailing dot kept) for
    ATYP 3.  ``data`` is everything after the header; it may be empty.
    """

    frag: int
    atyp: int
    host: str
    port: int
    data: bytes


def _name_problem(name: bytes) -> str | None:
    """Why *name* is not a host name the header may carry, or None if it is."""
    if not name:
        return "the host name is empty"
    if len(name) > MAX_NAME:
        return f"the host name is {len(name)} octets, more than {MAX_NAME}"
    bare = name[:-1] if name.endswith(b".") else name
    labels = bare.split(b".")
    if not all(_LABEL.match(label) for label in labels):
        return (
            "the host name is not letters, digits, '-' and '_' in dot-separated labels "
            "of 1 to 63 octets (no '-' at either end of a label)"
        )
    if _NUMERIC_LABEL.match(labels[-1]):
        return "the host name is an address in disguise (its last label is a number); send addresses as ATYP 1 or 4"
    return None


def encode_udp(dst_host: str, dst_port: int, data: bytes, frag: int = 0) -> bytes:
    """The datagram to send: the header for *dst_host*:*dst_port*, then *data*.

    *dst_host* may be a dotted-quad IPv4 address (ATYP 1), an IPv6 address
    literal without brackets or zone (ATYP 4), or a host name (ATYP 3; a
    non-ASCII name is sent in its IDNA form).

    :raises ValueError: for a port outside 1..65535, a FRAG outside 0..255, an
        IPv4 address that is not four decimal octets without leading zeros,
        an invalid IPv6 literal, or a name that is empty, longer than 255
        octets, or not DNS syntax (NUL, blanks, control characters...).
    """
    if isinstance(dst_port, bool) or not isinstance(dst_port, int) or not 1 <= dst_port <= 0xFFFF:
        raise ValueError(f"destination port {dst_port!r} out of range 1..65535")
    if isinstance(frag, bool) or not isinstance(frag, int) or not 0 <= frag <= 0xFF:
        raise ValueError(f"FRAG {frag!r} out of range 0..255")
    if not isinstance(dst_host, str):
        raise ValueError(f"destination host must be text, not {type(dst_host).__name__}")
    if ":" in dst_host:
        try:
            packed = socket.inet_pton(socket.AF_INET6, dst_host)
        except (OSError, ValueError):
            raise ValueError(f"invalid IPv6 address {dst_host[:64]!r}") from None
        address = bytes((ATYP_IPV6,)) + packed
    else:
        try:
            name = dst_host.encode("ascii") if dst_host.isascii() else dst_host.encode("idna")
        except UnicodeError:
            raise ValueError(f"invalid host name {dst_host[:64]!r}: it has no IDNA form") from None
        bare = name[:-1] if name.endswith(b".") else name
        if bare and all(_NUMERIC_LABEL.match(label) for label in bare.split(b".")):
            # Looks like an address: only the canonical dotted quad is one.
            try:
                address = bytes((ATYP_IPV4,)) + pack_ipv4(dst_host)
            except ValueError:
                raise ValueError(
                    f"invalid IPv4 address {dst_host[:64]!r}: write 4 decimal octets without leading zeros "
                    f"(shortened, octal and hex forms are ambiguous)"
                ) from None
        else:
            problem = _name_problem(name)
            if problem is not None:
                raise ValueError(f"invalid host name {dst_host[:64]!r}: {problem}")
            address = bytes((ATYP_DOMAINNAME, len(name))) + name
    # The header is built from fully specified bytes only (RSV is zero).
    return b"\0\0" + bytes((frag,)) + address + _PORT.pack(dst_port) + bytes(data)


def decode_udp(datagram: bytes) -> UDPPacket:
    """Split a datagram into its RFC 1928 header fields and its data.

    :raises UDPHeaderError: if the datagram is shorter than its header, RSV is
        not zero, ATYP is not 1, 3 or 4, the address or port is cut short, the
        port is 0, or the host name is empty, not ASCII DNS syntax, or an
        address written as a name.
    """
    datagram = bytes(datagram)
    size = len(datagram)
    if size < _START.size:
        raise UDPHeaderError(
            f"datagram of {size} octets is shorter than the header (expected RSV RSV FRAG ATYP "
            f"DST.ADDR DST.PORT: at least 10 octets)"
        )
    rsv, frag, atyp = _START.unpack_from(datagram)
    if rsv != 0:
        raise UDPHeaderError(f"RSV is 0x{rsv:04x}, expected 0x0000 (not an RFC 1928 UDP request header)")
    offset = _START.size
    if atyp == ATYP_IPV4:
        end = offset + 4
        if size < end:
            raise UDPHeaderError(f"IPv4 address cut short: expected 4 octets, got {size - offset}")
        host = "%d.%d.%d.%d" % tuple(datagram[offset:end])
    elif atyp == ATYP_IPV6:
        end = offset + 16
        if size < end:
            raise UDPHeaderError(f"IPv6 address cut short: expected 16 octets, got {size - offset}")
        host = socket.inet_ntop(socket.AF_INET6, datagram[offset:end])
    elif atyp == ATYP_DOMAINNAME:
        if size <= offset:
            raise UDPHeaderError("host name length octet missing after ATYP 3")
        length = datagram[offset]
        if length == 0:
            raise UDPHeaderError("host name of length 0 (expected 1 to 255 octets)")
        start, end = offset + 1, offset + 1 + length
        if size < end:
            raise UDPHeaderError(f"host name cut short: length octet says {length}, got {size - start}")
        name = datagram[start:end]
        problem = _name_problem(name)
        if problem is not None:
            raise UDPHeaderError(f"invalid host name {name[:40]!r}{'...' if len(name) > 40 else ''}: {problem}")
        host = name.decode("ascii")
    else:
        raise UDPHeaderError(f"unknown ATYP {atyp} (expected 1 for IPv4, 3 for a host name, 4 for IPv6)")
    if size < end + 2:
        raise UDPHeaderError(f"DST.PORT cut short: expected 2 octets, got {size - end}")
    (port,) = _PORT.unpack_from(datagram, end)
    if port == 0:
        raise UDPHeaderError("DST.PORT is 0 (expected 1..65535)")
    return UDPPacket(frag, atyp, host, port, datagram[end + 2 :])
