"""The RFC 1928 §7 UDP request header codec: every address type, every bound,
every malformed prefix, and round-trip properties."""

import ipaddress
import socket
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.wire import udp
from sockssuite.wire.udp import UDPHeaderError, UDPPacket, decode_udp, encode_udp

_alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
labels = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_alnum + "_"),
    st.text(alphabet=_alnum + "-_", max_size=20),
    st.sampled_from(_alnum + "_"),
) | st.sampled_from(_alnum)
# The last label starts with a letter: a name never ends in a number.
last_labels = st.builds(
    lambda first, rest: first + rest, st.sampled_from(_letters), st.text(alphabet=_alnum, max_size=10)
)
hostnames = st.builds(
    lambda head, last, dot: ".".join(head + [last]) + dot,
    st.lists(labels, max_size=5),
    last_labels,
    st.sampled_from(["", "."]),
)
ipv4_addresses = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
ipv6_addresses = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ports = st.integers(1, 65535)


# The standard-library-only client code of docs/udprelay-conf.rst, verbatim.
def socks5_udp_header(host, port):
    """The RFC 1928 header for a datagram to host:port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name
        name = host.encode("idna")
        address = struct.pack("!BB", 3, len(name)) + name
    else:
        address = struct.pack("!B", 1 if ip.version == 4 else 4) + ip.packed
    return struct.pack("!HB", 0, 0) + address + struct.pack("!H", port)


def socks5_udp_unwrap(datagram):
    """(host, port, data) of an answer: where it came from, and its data."""
    rsv, frag, atyp = struct.unpack_from("!HBB", datagram)
    if atyp == 1:
        host, end = socket.inet_ntop(socket.AF_INET, datagram[4:8]), 8
    elif atyp == 4:
        host, end = socket.inet_ntop(socket.AF_INET6, datagram[4:20]), 20
    else:
        length = datagram[4]
        host, end = datagram[5:5 + length].decode("ascii"), 5 + length
    (port,) = struct.unpack_from("!H", datagram, end)
    return host, port, datagram[end + 2:]


class EncodeTests(SynchronousTestCase):
    def test_ipv4_address_is_atyp_1_with_four_octets(self):
        self.assertEqual(encode_udp("192.0.2.1", 53, b"q"), b"\0\0\0\x01\xc0\x00\x02\x01\x00\x35q")

    def test_ipv6_literal_is_atyp_4_with_sixteen_octets(self):
        self.assertEqual(
            encode_udp("2001:db8::1", 443, b""),
            b"\0\0\0\x04" + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01" + b"\x01\xbb",
        )

    def test_ipv4_mapped_ipv6_literal_stays_atyp_4(self):
        self.assertEqual(encode_udp("::ffff:192.0.2.1", 1, b"")[3], udp.ATYP_IPV6)

    def test_host_name_is_atyp_3_with_a_length_octet(self):
        self.assertEqual(encode_udp("archie.rutgers.edu", 1525, b"x"), b"\0\0\0\x03\x12archie.rutgers.edu\x05\xf5x")

    def test_host_name_keeps_its_case_and_trailing_dot(self):
        self.assertEqual(encode_udp("Host.Example.", 7, b"")[4:18], b"\x0dHost.Example.")

    def test_non_ascii_name_is_sent_in_its_idna_form(self):
        self.assertEqual(encode_udp("bücher.example", 7, b"")[4:], b"\x15xn--bcher-kva.example\x00\x07")

    def test_frag_is_the_third_octet(self):
        self.assertEqual(encode_udp("10.0.0.1", 9, b"", frag=0x81)[:4], b"\0\0\x81\x01")

    def test_data_follows_the_header_unchanged(self):
        data = bytes(range(256)) * 4
        self.assertEqual(encode_udp("10.0.0.1", 9, data)[10:], data)

    def test_bytes_like_data_is_accepted(self):
        self.assertEqual(encode_udp("10.0.0.1", 9, bytearray(b"ab")), encode_udp("10.0.0.1", 9, memoryview(b"ab")))

    def test_port_bounds_are_accepted(self):
        self.assertEqual(encode_udp("10.0.0.1", 1, b"")[-2:], b"\x00\x01")
        self.assertEqual(encode_udp("10.0.0.1", 65535, b"")[-2:], b"\xff\xff")

    def test_port_out_of_range_is_refused(self):
        for port in (0, -1, 65536, 2**32, True, "53", 53.0):
            self.assertRaises(ValueError, encode_udp, "10.0.0.1", port, b"")

    def test_frag_out_of_range_is_refused(self):
        for frag in (-1, 256, None, True):
            self.assertRaises(ValueError, encode_udp, "10.0.0.1", 53, b"", frag)

    def test_name_of_255_octets_is_the_longest_accepted(self):
        name = ".".join(["a" * 63] * 4)
        self.assertEqual(len(name), 255)
        self.assertEqual(encode_udp(name, 1, b"")[4], 255)

    def test_name_over_255_octets_is_refused(self):
        name = ".".join(["a" * 63] * 4) + "b"
        exc = self.assertRaises(ValueError, encode_udp, name, 1, b"")
        self.assertIn("256 octets, more than 255", str(exc))

    def test_name_with_nul_is_refused(self):
        self.assertRaises(ValueError, encode_udp, "evil\0.example", 1, b"")

    def test_names_with_blanks_or_control_characters_are_refused(self):
        for name in ("a b.example", "a\tb", "a\nb", "a\x1bb", "a;b", "a/b", "a@b", "a\x7f"):
            self.assertRaises(ValueError, encode_udp, name, 1, b"")

    def test_empty_name_and_empty_labels_are_refused(self):
        for name in ("", ".", "a..b", ".a", "a.b.."):
            self.assertRaises(ValueError, encode_udp, name, 1, b"")

    def test_label_over_63_octets_is_refused(self):
        self.assertRaises(ValueError, encode_udp, "a" * 64 + ".example", 1, b"")

    def test_label_with_hyphen_at_an_end_is_refused(self):
        for name in ("-a.example", "a-.example"):
            self.assertRaises(ValueError, encode_udp, name, 1, b"")

    def test_address_spellings_other_than_the_dotted_quad_are_refused(self):
        spellings = ("127.1", "0177.0.0.1", "0x7f.0.0.1", "2130706433", "256.0.0.1", "1.2.3.4.5", "１２７.０.０.１")
        for host in spellings:
            exc = self.assertRaises(ValueError, encode_udp, host, 1, b"")
            self.assertIn("invalid IPv4 address", str(exc))

    def test_name_ending_in_a_number_is_refused(self):
        exc = self.assertRaises(ValueError, encode_udp, "host.123", 1, b"")
        self.assertIn("address in disguise", str(exc))

    def test_ipv6_with_brackets_or_zone_is_refused(self):
        for host in ("[::1]", "fe80::1%eth0", ":::", "1:2:3:4:5:6:7:8:9"):
            exc = self.assertRaises(ValueError, encode_udp, host, 1, b"")
            self.assertIn("invalid IPv6 address", str(exc))

    def test_name_without_an_idna_form_is_refused(self):
        self.assertRaises(ValueError, encode_udp, "ü" * 70 + ".example", 1, b"")

    def test_host_that_is_not_text_is_refused(self):
        self.assertRaises(ValueError, encode_udp, b"10.0.0.1", 1, b"")

    def test_refusal_messages_are_bounded(self):
        exc = self.assertRaises(ValueError, encode_udp, "x y" * 10000, 1, b"")
        self.assertLess(len(str(exc)), 300)


class DecodeTests(SynchronousTestCase):
    def test_ipv4_datagram(self):
        self.assertEqual(
            decode_udp(b"\0\0\0\x01\xc0\x00\x02\x01\x00\x35query"),
            UDPPacket(0, udp.ATYP_IPV4, "192.0.2.1", 53, b"query"),
        )

    def test_ipv6_datagram_host_is_the_compressed_text(self):
        packet = decode_udp(b"\0\0\0\x04" + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01" + b"\x01\xbb")
        self.assertEqual((packet.atyp, packet.host, packet.port, packet.data), (4, "2001:db8::1", 443, b""))

    def test_ipv4_mapped_ipv6_reads_as_mapped_text(self):
        packet = decode_udp(b"\0\0\0\x04" + b"\0" * 10 + b"\xff\xff\x7f\0\0\x01" + b"\0\x35")
        self.assertEqual(packet.host, "::ffff:127.0.0.1")

    def test_name_datagram_keeps_the_name_as_sent(self):
        packet = decode_udp(b"\0\0\0\x03\x0cHost.Example\x05\xf5data")
        self.assertEqual(packet, UDPPacket(0, udp.ATYP_DOMAINNAME, "Host.Example", 1525, b"data"))

    def test_nonzero_frag_is_returned_for_the_caller_to_drop(self):
        self.assertEqual(decode_udp(b"\0\0\x01\x01\x0a\0\0\x01\0\x35").frag, 1)
        self.assertEqual(decode_udp(b"\0\0\xff\x01\x0a\0\0\x01\0\x35").frag, 255)

    def test_empty_data_is_a_packet(self):
        self.assertEqual(decode_udp(b"\0\0\0\x01\x0a\0\0\x01\0\x35").data, b"")

    def test_bytes_like_datagram_is_accepted(self):
        self.assertEqual(decode_udp(memoryview(b"\0\0\0\x01\x0a\0\0\x01\0\x35x")).data, b"x")

    def test_every_prefix_of_a_header_is_an_error(self):
        for datagram in (
            encode_udp("10.0.0.1", 53, b""),
            encode_udp("2001:db8::1", 53, b""),
            encode_udp("archie.rutgers.edu", 53, b""),
        ):
            for cut in range(len(datagram)):
                self.assertRaises(UDPHeaderError, decode_udp, datagram[:cut])
            self.assertEqual(decode_udp(datagram).data, b"")

    def test_short_datagram_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0")
        self.assertEqual(
            str(exc),
            "datagram of 3 octets is shorter than the header (expected RSV RSV FRAG ATYP DST.ADDR DST.PORT: "
            "at least 10 octets)",
        )

    def test_nonzero_rsv_is_an_error(self):
        for rsv in (b"\0\x01", b"\x01\0", b"\x05\x01"):
            exc = self.assertRaises(UDPHeaderError, decode_udp, rsv + b"\0\x01\x0a\0\0\x01\0\x35")
            self.assertIn("expected 0x0000", str(exc))

    def test_socks5_greeting_is_not_a_header(self):
        self.assertRaises(UDPHeaderError, decode_udp, b"\x05\x01\x00\x01\x0a\0\0\x01\0\x35")

    def test_unknown_atyp_is_an_error(self):
        for atyp in (0, 2, 5, 255):
            exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0" + bytes([atyp]) + b"\x0a" * 20)
            self.assertEqual(
                str(exc), f"unknown ATYP {atyp} (expected 1 for IPv4, 3 for a host name, 4 for IPv6)"
            )

    def test_truncated_ipv4_address_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x01\x0a\0")
        self.assertEqual(str(exc), "IPv4 address cut short: expected 4 octets, got 2")

    def test_truncated_ipv6_address_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x04" + b"\0" * 15)
        self.assertEqual(str(exc), "IPv6 address cut short: expected 16 octets, got 15")

    def test_missing_name_length_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x03")
        self.assertEqual(str(exc), "host name length octet missing after ATYP 3")

    def test_zero_length_name_is_an_error(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x03\x00\x00\x35data")
        self.assertEqual(str(exc), "host name of length 0 (expected 1 to 255 octets)")

    def test_truncated_name_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x03\x0aabc")
        self.assertEqual(str(exc), "host name cut short: length octet says 10, got 3")

    def test_truncated_port_message(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x01\x0a\0\0\x01\0")
        self.assertEqual(str(exc), "DST.PORT cut short: expected 2 octets, got 1")

    def test_port_zero_is_an_error(self):
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x01\x0a\0\0\x01\0\0data")
        self.assertEqual(str(exc), "DST.PORT is 0 (expected 1..65535)")

    def test_non_ascii_name_is_an_error(self):
        name = "bücher.example".encode("utf-8")
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x03" + bytes([len(name)]) + name + b"\0\x35")
        self.assertIn("invalid host name", str(exc))

    def test_name_with_nul_or_control_characters_is_an_error(self):
        for name in (b"a\0b", b"a b", b"a\nb", b"a\x1b[2J", b"a..b", b".", b"-a", b"a" * 64):
            datagram = b"\0\0\0\x03" + bytes([len(name)]) + name + b"\0\x35"
            self.assertRaises(UDPHeaderError, decode_udp, datagram)

    def test_name_that_is_an_address_is_an_error(self):
        for name in (b"127.0.0.1", b"127.1", b"0x7f.0.0.1", b"2130706433", b"host.123", b"10.0.0.1."):
            datagram = b"\0\0\0\x03" + bytes([len(name)]) + name + b"\0\x35"
            exc = self.assertRaises(UDPHeaderError, decode_udp, datagram)
            self.assertIn("address in disguise", str(exc))

    def test_name_of_255_octets_is_accepted(self):
        name = b".".join([b"a" * 63] * 4)
        self.assertEqual(decode_udp(b"\0\0\0\x03\xff" + name + b"\0\x35").host, name.decode())

    def test_error_messages_are_bounded(self):
        name = b"\x1b" * 255
        exc = self.assertRaises(UDPHeaderError, decode_udp, b"\0\0\0\x03\xff" + name + b"\0\x35")
        self.assertLess(len(str(exc)), 350)

    def test_header_error_is_not_a_value_error(self):
        # The service catches UDPHeaderError alone; a bug elsewhere must not hide in it.
        self.assertFalse(issubclass(UDPHeaderError, ValueError))

    def test_packet_is_frozen(self):
        packet = decode_udp(b"\0\0\0\x01\x0a\0\0\x01\0\x35")
        self.assertRaises(AttributeError, setattr, packet, "port", 1)


class StandardLibraryBuilderTests(SynchronousTestCase):
    """The struct-only builder in the docs writes the same header as encode_udp."""

    def test_builder_agrees_for_each_address_type(self):
        for host in ("192.0.2.1", "2001:db8::1", "archie.rutgers.edu", "bücher.example"):
            self.assertEqual(socks5_udp_header(host, 1525) + b"data", encode_udp(host, 1525, b"data"))

    @given(st.one_of(ipv4_addresses, ipv6_addresses, hostnames.filter(lambda h: len(h) <= 63)), ports)
    def test_builder_agrees_for_any_destination(self, host, port):
        self.assertEqual(socks5_udp_header(host, port), encode_udp(host, port, b""))

    @given(st.one_of(ipv4_addresses, ipv6_addresses, hostnames.filter(lambda h: len(h) <= 255)), ports,
           st.binary(max_size=100))
    def test_unwrapper_reads_what_encode_udp_writes(self, host, port, data):
        self.assertEqual(socks5_udp_unwrap(encode_udp(host, port, data)), (host, port, data))


class PropertyTests(SynchronousTestCase):
    @given(ipv4_addresses, ports, st.binary(max_size=600), st.integers(0, 255))
    def test_ipv4_round_trip(self, host, port, data, frag):
        self.assertEqual(decode_udp(encode_udp(host, port, data, frag)), UDPPacket(frag, 1, host, port, data))

    @given(ipv6_addresses, ports, st.binary(max_size=600))
    def test_ipv6_round_trip(self, host, port, data):
        self.assertEqual(decode_udp(encode_udp(host, port, data)), UDPPacket(0, 4, host, port, data))

    @settings(max_examples=300)
    @given(hostnames.filter(lambda h: len(h) <= 255), ports, st.binary(max_size=600))
    def test_name_round_trip(self, host, port, data):
        self.assertEqual(decode_udp(encode_udp(host, port, data)), UDPPacket(0, 3, host, port, data))

    @settings(max_examples=1000)
    @given(st.binary(max_size=300))
    def test_any_bytes_decode_to_a_packet_or_a_header_error(self, datagram):
        try:
            packet = decode_udp(datagram)
        except UDPHeaderError:
            return
        self.assertTrue(datagram.endswith(packet.data))
        self.assertIn(packet.atyp, (1, 3, 4))
        self.assertTrue(1 <= packet.port <= 65535)
        # What decodes re-encodes to the same bytes.
        self.assertEqual(encode_udp(packet.host, packet.port, packet.data, packet.frag), datagram)

    @settings(max_examples=500)
    @given(st.integers(0, 255), st.sampled_from([1, 3, 4]), st.integers(0, 255), st.binary(max_size=300))
    def test_header_shaped_bytes_decode_to_a_packet_or_a_header_error(self, frag, atyp, length, rest):
        # Valid RSV and ATYP, so the address and name paths see the random bytes.
        datagram = bytes([0, 0, frag, atyp, length]) + rest
        try:
            packet = decode_udp(datagram)
        except UDPHeaderError:
            return
        self.assertEqual(encode_udp(packet.host, packet.port, packet.data, packet.frag), datagram)

    @given(st.text(max_size=300), st.integers(-10, 70000), st.integers(-5, 300))
    def test_encoder_gives_a_datagram_or_a_value_error(self, host, port, frag):
        try:
            datagram = encode_udp(host, port, b"x", frag)
        except ValueError:
            return
        packet = decode_udp(datagram)
        self.assertEqual((packet.port, packet.frag, packet.data), (port, frag, b"x"))
