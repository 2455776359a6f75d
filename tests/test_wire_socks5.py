"""The SOCKS5 / RFC 1929 codecs: round trips, every split, every bound."""

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.wire import socks5
from sockssuite.wire.socks5 import SOCKS5Error

_alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
names = st.lists(st.text(alphabet=_alnum, min_size=1, max_size=10), min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(names, ipv4, ipv6)
ports = st.integers(0, 65535)


def feed_in_pieces(parser, data, cuts):
    result = None
    start = 0
    for cut in sorted(set(c for c in cuts if c <= len(data))) + [len(data)]:
        piece = data[start:cut]
        start = cut
        if result is None:
            result = parser.feed(piece)
        else:
            parser.leftover += piece
    return result


class GreetingTests(SynchronousTestCase):
    def test_greeting_lists_the_methods(self):
        parser = socks5.GreetingParser()
        self.assertEqual(parser.feed(b"\x05\x02\x00\x02rest"), socks5.Greeting(b"\x00\x02"))
        self.assertEqual(parser.leftover, b"rest")

    def test_socks4_or_garbage_is_not_a_greeting(self):
        self.assertRaises(SOCKS5Error, socks5.GreetingParser().feed, b"\x04\x01")
        self.assertRaises(SOCKS5Error, socks5.GreetingParser().feed, b"\x05\x00")

    @given(st.binary(min_size=1, max_size=255), st.lists(st.integers(0, 300), max_size=5))
    def test_any_split_of_a_greeting_parses_the_same(self, methods, cuts):
        data = socks5.encode_greeting(methods)
        self.assertEqual(feed_in_pieces(socks5.GreetingParser(), data, cuts), socks5.Greeting(methods))


class CredentialsTests(SynchronousTestCase):
    def test_round_trip_and_the_password_stays_out_of_repr(self):
        data = socks5.encode_credentials(b"alice", b"s3cret")
        creds = socks5.CredentialsParser().feed(data)
        self.assertEqual((creds.username, creds.password), (b"alice", b"s3cret"))
        self.assertNotIn("s3cret", repr(creds))

    def test_bounds(self):
        self.assertRaises(ValueError, socks5.encode_credentials, b"", b"x")
        self.assertRaises(ValueError, socks5.encode_credentials, b"u" * 256, b"x")
        self.assertRaises(ValueError, socks5.encode_credentials, b"u", b"p" * 256)
        self.assertRaises(SOCKS5Error, socks5.CredentialsParser().feed, b"\x02\x01a\x00")
        self.assertRaises(SOCKS5Error, socks5.CredentialsParser().feed, b"\x01\x00\x00")

    @given(st.binary(min_size=1, max_size=255), st.binary(max_size=255), st.lists(st.integers(0, 600), max_size=5))
    def test_any_split_parses_the_same(self, user, password, cuts):
        data = socks5.encode_credentials(user, password)
        creds = feed_in_pieces(socks5.CredentialsParser(), data, cuts)
        self.assertEqual((creds.username, creds.password), (user, password))


class RequestTests(SynchronousTestCase):
    def test_each_address_type(self):
        for host, atyp in [("192.0.2.1", 1), ("2001:db8::1", 4), ("www.example.org", 3)]:
            request = socks5.RequestParser().feed(socks5.encode_request(socks5.CONNECT, host, 443))
            self.assertEqual(request, socks5.Request(socks5.CONNECT, atyp, host, 443))

    def test_unknown_command_and_address_type_have_their_reply_codes(self):
        e = self.assertRaises(SOCKS5Error, socks5.RequestParser().feed, b"\x05\x09\x00")
        self.assertEqual(e.reply, socks5.COMMAND_NOT_SUPPORTED)
        e = self.assertRaises(SOCKS5Error, socks5.RequestParser().feed, b"\x05\x01\x00\x07")
        self.assertEqual(e.reply, socks5.ADDRESS_TYPE_NOT_SUPPORTED)

    def test_names_with_control_characters_and_empty_names_are_refused(self):
        for bad in [b"\x00", b"a b", b"a\nb"]:
            data = b"\x05\x01\x00\x03" + bytes([len(bad)]) + bad + b"\x00\x50"
            self.assertRaises(SOCKS5Error, socks5.RequestParser().feed, data)
        self.assertRaises(SOCKS5Error, socks5.RequestParser().feed, b"\x05\x01\x00\x03\x00\x00\x50")

    def test_encoder_refuses_names_that_do_not_fit(self):
        # The curl CVE-2023-38545 lesson: the client side checks too.
        self.assertRaises(ValueError, socks5.encode_request, socks5.CONNECT, "a" * 256, 80)
        self.assertRaises(ValueError, socks5.encode_request, socks5.CONNECT, "a b", 80)
        self.assertRaises(ValueError, socks5.encode_request, socks5.CONNECT, "x.org", 70000)

    @given(st.sampled_from([1, 2, 3]), hosts, ports, st.lists(st.integers(0, 300), max_size=6),
           st.binary(max_size=16))
    @settings(max_examples=300)
    def test_any_split_parses_the_same(self, command, host, port, cuts, trailer):
        data = socks5.encode_request(command, host, port) + trailer
        parser = socks5.RequestParser()
        request = feed_in_pieces(parser, data, cuts)
        self.assertEqual((request.command, request.port), (command, port))
        self.assertEqual(request.host, host)
        self.assertEqual(parser.leftover, trailer)

    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
    @settings(max_examples=500)
    def test_random_bytes_raise_only_socks5_error(self, data, cuts):
        for parser in (socks5.GreetingParser(), socks5.CredentialsParser(), socks5.RequestParser(),
                       socks5.ReplyParser()):
            try:
                feed_in_pieces(parser, data, cuts)
            except SOCKS5Error:
                pass


class ReplyTests(SynchronousTestCase):
    @given(st.integers(0, 8), st.one_of(ipv4, ipv6), ports)
    def test_reply_round_trip(self, code, host, port):
        reply = socks5.ReplyParser().feed(socks5.encode_reply(code, host, port))
        self.assertEqual((reply.code, reply.host, reply.port), (code, host, port))

    def test_reply_is_fully_specified(self):
        self.assertEqual(socks5.encode_reply(socks5.SUCCEEDED), b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
