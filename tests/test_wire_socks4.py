"""The SOCKS4/4a codec: every split, every malformed prefix, every bound."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.wire import socks4
from sockssuite.wire.socks4 import ProtocolError, RequestParser

userids = st.binary(max_size=64).filter(lambda b: b"\0" not in b)
_alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
labels = st.builds(lambda a, mid, b: a + mid + b, st.sampled_from(_alnum),
                   st.text(alphabet=_alnum + "-", max_size=8), st.sampled_from(_alnum)) | st.sampled_from(_alnum)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
addresses = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t).filter(
    lambda a: not a.startswith("0.0.0."))


@st.composite
def requests(draw):
    command = draw(st.sampled_from([socks4.CONNECT, socks4.BIND]))
    port = draw(st.integers(0, 65535))
    userid = draw(userids)
    if draw(st.booleans()):
        host = draw(hostnames)
        return socks4.encode_request(command, port, userid=userid, hostname=host), (command, port, userid, host)
    address = draw(addresses)
    return socks4.encode_request(command, port, address, userid=userid), (command, port, userid, address)


def parse_in_pieces(data, cuts):
    parser = RequestParser()
    result = None
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[start:cut]
        start = cut
        if result is None:
            result = parser.feed(piece)
        else:
            parser.leftover += piece
    return result, parser.leftover


class RequestParserTests(SynchronousTestCase):
    def test_connect_request_in_one_piece(self):
        data = socks4.encode_request(socks4.CONNECT, 80, "10.1.2.3", userid=b"alice")
        request = RequestParser().feed(data)
        self.assertEqual(request, socks4.Request(socks4.CONNECT, 80, "10.1.2.3", b"alice"))
        self.assertEqual(request.destination, "10.1.2.3")

    def test_socks4a_request_carries_the_hostname(self):
        data = socks4.encode_request(socks4.CONNECT, 443, userid=b"", hostname="Example.COM")
        request = RequestParser().feed(data)
        self.assertEqual(request.hostname, "example.com")
        self.assertEqual(request.address, "0.0.0.1")
        self.assertEqual(request.destination, "example.com")

    def test_bytes_after_the_request_are_kept_as_leftover(self):
        data = socks4.encode_request(socks4.CONNECT, 80, "1.2.3.4", userid=b"u") + b"GET / HTTP/1.0\r\n"
        parser = RequestParser()
        self.assertIsNotNone(parser.feed(data))
        self.assertEqual(parser.leftover, b"GET / HTTP/1.0\r\n")

    def test_socks4a_leftover_starts_after_the_hostname(self):
        data = socks4.encode_request(socks4.CONNECT, 80, hostname="a.b", userid=b"u") + b"\0xyz"
        parser = RequestParser()
        self.assertEqual(parser.feed(data).hostname, "a.b")
        self.assertEqual(parser.leftover, b"\0xyz")

    def test_incomplete_request_returns_none(self):
        data = socks4.encode_request(socks4.CONNECT, 80, "1.2.3.4", userid=b"bob")
        for i in range(len(data)):
            self.assertIsNone(RequestParser().feed(data[:i]))

    def test_wrong_version_is_rejected_at_the_first_byte(self):
        e = self.assertRaises(ProtocolError, RequestParser().feed, b"\x05")
        self.assertEqual(e.reply, socks4.REJECTED)

    def test_unknown_command_is_rejected_at_the_second_byte(self):
        e = self.assertRaises(ProtocolError, RequestParser().feed, b"\x04\x03")
        self.assertIn("unknown command 3", str(e))

    def test_userid_without_nul_is_bounded(self):
        parser = RequestParser()
        parser.feed(struct.pack("!BBH4s", 4, 1, 80, b"\1\2\3\4"))
        for _ in range(socks4.MAX_FIELD // 64):
            self.assertIsNone(parser.feed(b"x" * 64))
        self.assertRaises(ProtocolError, parser.feed, b"x")

    def test_userid_of_exactly_the_limit_is_accepted(self):
        data = socks4.encode_request(socks4.CONNECT, 80, "1.2.3.4", userid=b"u" * socks4.MAX_FIELD)
        self.assertEqual(len(RequestParser().feed(data).userid), socks4.MAX_FIELD)

    def test_oversize_userid_arriving_in_one_piece_is_rejected(self):
        data = struct.pack("!BBH4s", 4, 1, 80, b"\1\2\3\4") + b"u" * (socks4.MAX_FIELD + 1) + b"\0"
        self.assertRaises(ProtocolError, RequestParser().feed, data)

    def test_hostname_without_nul_is_bounded(self):
        parser = RequestParser()
        parser.feed(struct.pack("!BBH4s", 4, 1, 80, b"\0\0\0\1") + b"\0")
        self.assertRaises(ProtocolError, parser.feed, b"a" * (socks4.MAX_FIELD + 1))

    def test_invalid_hostnames_are_rejected(self):
        for bad in [b"", b"a b", b"a\nb", b"-a.com", b"a..b", b"a" * 64 + b".com", b"x" * 254,
                    b"\xff.com", b"a/b"]:
            data = struct.pack("!BBH4s", 4, 1, 80, b"\0\0\0\7") + b"\0" + bad + b"\0"
            self.assertRaises(ProtocolError, RequestParser().feed, data)

    def test_address_zero_is_not_socks4a(self):
        data = struct.pack("!BBH4s", 4, 1, 80, b"\0\0\0\0") + b"u\0"
        self.assertEqual(RequestParser().feed(data).address, "0.0.0.0")

    def test_feeding_after_completion_is_an_error(self):
        parser = RequestParser()
        parser.feed(socks4.encode_request(socks4.CONNECT, 80, "1.2.3.4"))
        self.assertRaises(ProtocolError, parser.feed, b"x")

    @given(requests(), st.lists(st.integers(0, 200), max_size=8), st.binary(max_size=32))
    @settings(max_examples=300)
    def test_any_split_parses_the_same(self, encoded, cuts, trailer):
        data, (command, port, userid, dest) = encoded
        data_with_trailer = data + trailer
        cuts = [c for c in cuts if c <= len(data_with_trailer)]
        request, leftover = parse_in_pieces(data_with_trailer, cuts)
        self.assertEqual(request, RequestParser().feed(data_with_trailer))
        self.assertEqual((request.command, request.port, request.userid, request.destination),
                         (command, port, userid, dest))
        self.assertEqual(leftover, trailer)

    @given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=6))
    @settings(max_examples=500)
    def test_random_bytes_raise_only_protocol_error(self, data, cuts):
        try:
            parse_in_pieces(data, [c for c in cuts if c <= len(data)])
        except ProtocolError as e:
            self.assertIn(e.reply, (socks4.REJECTED, None))


class EncodeTests(SynchronousTestCase):
    def test_reply_is_eight_fully_specified_bytes(self):
        self.assertEqual(socks4.encode_reply(90, 1080, "127.0.0.1"), b"\x00\x5a\x04\x38\x7f\x00\x00\x01")
        self.assertEqual(socks4.encode_reply(91), b"\x00\x5b" + b"\0" * 6)

    def test_reply_round_trip(self):
        reply = socks4.decode_reply(socks4.encode_reply(93, 5, "1.2.3.4"))
        self.assertEqual(reply, socks4.Reply(93, 5, "1.2.3.4"))

    def test_decode_reply_rejects_wrong_sizes_and_versions(self):
        self.assertRaises(ProtocolError, socks4.decode_reply, b"\0Z")
        self.assertRaises(ProtocolError, socks4.decode_reply, b"\x04Z" + b"\0" * 6)

    def test_encoder_refuses_what_the_wire_cannot_carry(self):
        self.assertRaises(ValueError, socks4.encode_request, 1, 80, "1.2.3.4", userid=b"a\0b")
        self.assertRaises(ValueError, socks4.encode_request, 1, 80, "1.2.3.4", userid=b"u" * 1025)
        self.assertRaises(ValueError, socks4.encode_request, 1, 70000, "1.2.3.4")
        self.assertRaises(ValueError, socks4.encode_request, 3, 80, "1.2.3.4")
        self.assertRaises(ValueError, socks4.encode_request, 1, 80, hostname="a" * 300)
        self.assertRaises(ValueError, socks4.encode_request, 1, 80, hostname="evil\0.com")
        self.assertRaises(ValueError, socks4.encode_request, 1, 80)
        self.assertRaises(ValueError, socks4.encode_request, 1, 80, "1.2.3.4", hostname="a.com")

    def test_ambiguous_address_literals_are_refused(self):
        for bad in ["127.1", "0177.0.0.1", "0x7f.0.0.1", "256.0.0.1", "1.2.3.4.5", "١.2.3.4"]:
            self.assertRaises(ValueError, socks4.pack_ipv4, bad)

    @given(addresses)
    def test_pack_ipv4_round_trip(self, address):
        self.assertEqual("%d.%d.%d.%d" % tuple(socks4.pack_ipv4(address)), address)
