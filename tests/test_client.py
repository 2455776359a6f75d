"""SOCKS4ClientEndpoint and SOCKS5ClientEndpoint against the real server and
against misbehaving ones; the SOCKS5 negotiation as bytes in and out."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, error, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockssuite import client
from sockssuite.client import (BindResult, SOCKS4ClientEndpoint, SOCKS5AddressTypeNotSupported,
                               SOCKS5ClientEndpoint, SOCKS5CommandNotSupported, SOCKS5ConnectionRefused,
                               SOCKS5GeneralFailure, SOCKS5HostUnreachable, SOCKS5NetworkUnreachable,
                               SOCKS5NotAllowed, SOCKS5ReplyError, SOCKS5TTLExpired,
                               SOCKSAuthenticationError, SOCKSAuthenticationFailed, SOCKSError,
                               SOCKSIdentMismatch, SOCKSIdentUnreachable, SOCKSNoAcceptableMethod,
                               SOCKSProtocolError, SOCKSRejected, credentials_from_environment,
                               socks5_bind, socks5_error_for)
from sockssuite.wire import socks4
from sockssuite.wire import socks5 as wire5

from . import support
from .support import Echo, Greeter, LogCapture, RawClient, ReadAllThenAnswer, listen, start_server
from .test_client_routed import FixedResolver
from .test_server import FakeIdentd, async_test, userid_answer
from .test_socks5 import password_file


def via(server_port):
    return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server_port)


class FakeSOCKSServer(protocol.Protocol):
    """Answers any request with fixed bytes (then closes if told to)."""

    answer = b""
    close = False

    def dataReceived(self, data):
        self.transport.write(self.answer)
        if self.close:
            self.transport.loseConnection()


def fake_server(answer, close=False):
    return protocol.Factory.forProtocol(type("Fake", (FakeSOCKSServer,), {"answer": answer, "close": close}))


class EndpointTests(TestCase):
    @async_test
    async def test_connect_through_the_proxy(self):
        logs = support.LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "127.0.0.1", echo.getHost().port,
                                  user="carol")
        client = await ep.connect(protocol.Factory.forProtocol(RawClient))
        client.transport.write(b"round trip")
        self.assertEqual(await client.wait_bytes(10), b"round trip")
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "carol")

    @async_test
    async def test_names_go_as_socks4a(self):
        logs = support.LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "localhost", echo.getHost().port)
        client = await ep.connect(protocol.Factory.forProtocol(RawClient))
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "localhost")

    def test_names_are_refused_when_socks4a_is_off(self):
        self.assertRaises(ValueError, SOCKS4ClientEndpoint, via(1080), "localhost", 80, socks4a=False)

    def test_what_the_wire_cannot_carry_is_refused_early(self):
        self.assertRaises(ValueError, SOCKS4ClientEndpoint, via(1080), "x" * 300 + ".com", 80)
        self.assertRaises(ValueError, SOCKS4ClientEndpoint, via(1080), "127.0.0.1", 80, user=b"a\0b")

    @async_test
    async def test_half_close_reaches_the_destination_and_the_answer_comes_back(self):
        server = await start_server(self)
        dest = await listen(self, ReadAllThenAnswer)
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "127.0.0.1", dest.getHost().port)
        client = await ep.connect(protocol.Factory.forProtocol(RawClient))
        client.transport.write(b"abc")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertTrue(bytes(client.received).startswith(b"3 "))

    @async_test
    async def test_91_is_socks_rejected(self):
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSRejected)

    @async_test
    async def test_92_and_93_are_the_ident_errors(self):
        closed = await listen(self, Echo)
        no_identd = closed.getHost().port
        await closed.stopListening()
        server = await start_server(self, "permit ?=I 127.0.0.0 255.0.0.0\n", ident_port=no_identd)
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9, user="alice")
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)),
                                 SOCKSIdentUnreachable)
        identd = FakeIdentd(userid_answer(b"bob"))
        identd_port = await listen(self, identd.factory)
        server = await start_server(self, "permit ?=I 127.0.0.0 255.0.0.0\n",
                                    ident_port=identd_port.getHost().port)
        ep = SOCKS4ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9, user="alice")
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSIdentMismatch)

    @async_test
    async def test_bytes_right_behind_the_reply_reach_the_application(self):
        fake = await listen(self, fake_server(socks4.encode_reply(90, 1, "127.0.0.1") + b"banner"))
        ep = SOCKS4ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        client = await ep.connect(protocol.Factory.forProtocol(RawClient))
        self.assertEqual(await client.wait_bytes(6), b"banner")
        client.transport.loseConnection()

    @async_test
    async def test_a_server_that_is_not_socks4_is_a_protocol_error(self):
        fake = await listen(self, fake_server(b"HTTP/1.0 400 Bad\r\n\r\n"))
        ep = SOCKS4ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSProtocolError)

    @async_test
    async def test_a_server_that_closes_mid_reply_is_a_protocol_error(self):
        fake = await listen(self, fake_server(b"\0Z\0", close=True))
        ep = SOCKS4ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSProtocolError)


# -- SOCKS5 --------------------------------------------------------------------


class ScriptedServer(protocol.Protocol):
    """Answers the n-th chunk it receives with ``answers[n]`` (then closes
    once the script is done, if told to): a SOCKS5 server of the test's
    making."""

    answers: list = []
    close = False

    def connectionMade(self):
        self.turn = 0

    def dataReceived(self, data):
        if self.turn < len(self.answers):
            self.transport.write(self.answers[self.turn])
            self.turn += 1
            if self.turn == len(self.answers) and self.close:
                self.transport.loseConnection()


def scripted(*answers, close=False):
    return protocol.Factory.forProtocol(
        type("Scripted", (ScriptedServer,), {"answers": list(answers), "close": close}))


class Hung(protocol.Protocol):
    """Accepts and never answers."""

    def connectionMade(self):
        self.factory.connections.append(self)


def hung_factory():
    factory = protocol.Factory.forProtocol(Hung)
    factory.connections = []
    return factory


class Resolving:
    """Stands for the reactor where only its name resolver is used."""

    def __init__(self, resolver):
        self.nameResolver = resolver


def accept_anyone():
    from sockssuite.access import BUILT_IN_RULES
    return BUILT_IN_RULES


class SOCKS5EndpointTests(TestCase):
    async def round_trip(self, endpoint, data=b"round trip"):
        app = await endpoint.connect(protocol.Factory.forProtocol(RawClient))
        app.transport.write(data)
        got = await app.wait_bytes(len(data))
        app.transport.loseConnection()
        await app.closed
        return app, got

    @async_test
    async def test_connect_without_authentication(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", echo.getHost().port)
        app, got = await self.round_trip(ep)
        self.assertEqual(got, b"round trip")
        self.assertEqual(app.transport.getPeer().port, support.port_of(server))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "127.0.0.1")

    @async_test
    async def test_connect_with_a_user_name_and_password(self):
        logs = LogCapture(self)
        server = await start_server(self, "permit *=alice 127.0.0.0 255.0.0.0\n",
                                    passwords=password_file(), require_auth=True)
        echo = await listen(self, Echo)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", echo.getHost().port,
                                  username="alice", password="wonderland")
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"round trip")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["user"], event["rule_line"]), ("alice", 1))

    @async_test
    async def test_credentials_are_only_offered_a_server_without_passwords_chooses_none(self):
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", echo.getHost().port,
                                  username=b"alice", password=b"anything")
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"round trip")

    @async_test
    async def test_a_wrong_password_is_an_authentication_failure(self):
        logs = LogCapture(self)
        server = await start_server(self, passwords=password_file(), require_auth=True)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9,
                                  username="alice", password="hunter2")
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)),
                                     SOCKSAuthenticationFailed)
        self.assertIsInstance(e, SOCKSAuthenticationError)
        self.assertEqual(e.username, b"alice")
        self.assertNotIn("hunter2", str(e) + repr(e))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "auth-failed")

    @async_test
    async def test_no_credentials_for_a_server_that_requires_them_is_no_acceptable_method(self):
        server = await start_server(self, passwords=password_file(), require_auth=True)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)),
                                     SOCKSNoAcceptableMethod)
        self.assertEqual(e.offered, b"\x00")
        self.assertIn("requires authentication", str(e))

    @async_test
    async def test_a_denied_request_is_reply_2_not_allowed_which_is_a_rejection(self):
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 9)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKS5NotAllowed)
        self.assertIsInstance(e, SOCKSRejected)
        self.assertIsInstance(e, SOCKS5ReplyError)
        self.assertEqual(e.code, 2)

    @async_test
    async def test_a_refused_destination_is_reply_5_connection_refused(self):
        closed = await listen(self, Echo)
        port = closed.getHost().port
        await closed.stopListening()
        server = await start_server(self)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", port)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)),
                                     SOCKS5ConnectionRefused)
        self.assertEqual(e.code, 5)
        self.assertNotIsInstance(e, SOCKSRejected)

    @async_test
    async def test_an_ipv6_destination_goes_as_an_ipv6_address(self):
        logs = LogCapture(self)
        server = await start_server(self, accept_anyone())
        echo = await listen(self, Echo, interface="::1")
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "::1", echo.getHost().port)
        _, got = await self.round_trip(ep, b"over IPv6")
        self.assertEqual(got, b"over IPv6")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "::1")

    @async_test
    async def test_names_go_to_the_server_as_names(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "localhost", echo.getHost().port)
        await self.round_trip(ep)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["requested"], event["resolved"]), ("localhost", "127.0.0.1"))

    @async_test
    async def test_without_remote_dns_the_name_is_resolved_here(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        resolver = FixedResolver({"echo.test": ["127.0.0.1"]})
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "echo.test", echo.getHost().port,
                                  remote_dns=False, reactor=Resolving(resolver))
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"round trip")
        self.assertEqual(resolver.asked, ["echo.test"])
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "127.0.0.1")
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "nowhere.test", 80,
                                  remote_dns=False, reactor=Resolving(resolver))
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), error.DNSLookupError)

    @async_test
    async def test_bytes_sent_with_the_reply_reach_the_application(self):
        reply = wire5.encode_reply(wire5.SUCCEEDED, "127.0.0.1", 4444)
        fake = await listen(self, scripted(b"\x05\x00", reply + b"banner"))
        ep = SOCKS5ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        app = await ep.connect(protocol.Factory.forProtocol(RawClient))
        self.assertEqual(await app.wait_bytes(6), b"banner")
        app.transport.loseConnection()

    @async_test
    async def test_a_destination_that_speaks_first_is_heard(self):
        server = await start_server(self)
        greeter = await listen(self, Greeter)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", greeter.getHost().port)
        app = await ep.connect(protocol.Factory.forProtocol(RawClient))
        self.assertEqual(await app.wait_bytes(11), b"220 hello\r\n")
        app.transport.write(b"quit")
        self.assertEqual(await app.wait_bytes(15), b"220 hello\r\nQUIT")
        app.transport.loseConnection()

    @async_test
    async def test_half_close_reaches_the_destination_and_the_answer_comes_back(self):
        server = await start_server(self)
        dest = await listen(self, ReadAllThenAnswer)
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", dest.getHost().port)
        app = await ep.connect(protocol.Factory.forProtocol(RawClient))
        app.transport.write(b"abcd")
        app.transport.loseWriteConnection()
        await app.closed
        self.assertTrue(bytes(app.received).startswith(b"4 "))

    @async_test
    async def test_cancelling_during_the_handshake_closes_the_connection(self):
        factory = hung_factory()
        hung = await listen(self, factory)
        ep = SOCKS5ClientEndpoint(via(hung.getHost().port), "127.0.0.1", 25)
        d = ep.connect(protocol.Factory.forProtocol(RawClient))
        for _ in range(200):
            if factory.connections:
                break
            await support.deferLater(0.01)
        d.cancel()
        await self.assertFailure(d, defer.CancelledError)
        for _ in range(200):
            if not factory.connections[0].transport.connected:
                break
            await support.deferLater(0.01)
        self.assertFalse(factory.connections[0].transport.connected)

    @async_test
    async def test_a_socks4_only_server_is_a_protocol_error(self):
        server = await start_server(self, socks_versions=(4,))
        ep = SOCKS5ClientEndpoint(via(support.port_of(server)), "127.0.0.1", 25)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSProtocolError)
        self.assertIn("not a SOCKS5 server", str(e))

    @async_test
    async def test_a_server_that_closes_mid_reply_is_a_protocol_error(self):
        fake = await listen(self, scripted(b"\x05\x00", b"\x05\x00\x00", close=True))
        ep = SOCKS5ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSProtocolError)

    @async_test
    async def test_a_failure_code_is_final_even_without_the_address(self):
        fake = await listen(self, scripted(b"\x05\x00", b"\x05\x04", close=True))
        ep = SOCKS5ClientEndpoint(via(fake.getHost().port), "127.0.0.1", 25)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKS5HostUnreachable)

    @async_test
    async def test_bind_through_socks5(self):
        logs = LogCapture(self)
        server = await start_server(self)
        made = []

        class Collect(protocol.Factory):
            def buildProtocol(self, addr):
                made.append(RawClient())
                return made[-1]

        result = await socks5_bind(via(support.port_of(server)), "127.0.0.1", 21, Collect())
        self.assertIsInstance(result, BindResult)
        host, port = result.address
        self.assertEqual(host, "127.0.0.1")
        peer = RawClient()
        await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, host, port), peer)
        app = await result.connected
        self.assertIs(app, made[0])
        peer.transport.write(b"from the peer")
        self.assertEqual(await app.wait_bytes(13), b"from the peer")
        peer.transport.loseConnection()
        await app.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["command"], "bind")

    def test_what_the_wire_cannot_carry_is_refused_early(self):
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "x" * 256, 80)
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "127.0.0.1", 65536)
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "127.0.0.1", 80, username="alice")
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "127.0.0.1", 80, password="x")
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "127.0.0.1", 80,
                          username="a" * 256, password="x")
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, via(1080), "127.0.0.1", 80, username="", password="x")
        SOCKS5ClientEndpoint(via(1080), "x" * 256, 80, remote_dns=False)  # resolved here: any name


TRANSCRIPT_REPLY = wire5.encode_reply(wire5.SUCCEEDED, "2001:db8::1", 1081)


class SOCKS5NegotiationTests(SynchronousTestCase):
    """The client side of RFC 1928/1929 as bytes in, bytes and replies out."""

    def negotiation(self, credentials=(b"alice", b"wonderland"), replies=1):
        return client._SOCKS5Negotiation(wire5.encode_request(wire5.CONNECT, "example.org", 80),
                                         credentials, replies)

    def test_offers_no_authentication_and_username_password_with_credentials(self):
        self.assertEqual(self.negotiation().start(), b"\x05\x02\x00\x02")
        self.assertEqual(self.negotiation(credentials=None).start(), b"\x05\x01\x00")

    def test_the_whole_exchange_with_username_password(self):
        n = self.negotiation()
        self.assertEqual(n.feed(b"\x05\x02"), (b"\x01\x05alice\x0awonderland", []))
        self.assertEqual(n.feed(b"\x01\x00"),
                         (b"\x05\x01\x00\x03\x0bexample.org\x00\x50", []))
        self.assertEqual(n.feed(TRANSCRIPT_REPLY + b"data"), (b"", [("2001:db8::1", 1081)]))
        self.assertTrue(n.done)
        self.assertEqual(n.leftover(), b"data")

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 40), max_size=6))
    def test_every_split_of_the_server_bytes_gives_the_same_result(self, cuts):
        stream = b"\x05\x02" + b"\x01\x00" + TRANSCRIPT_REPLY + b"after"
        points = sorted({min(c, len(stream)) for c in cuts})
        n = self.negotiation()
        sent, replies = bytearray(), []
        last = 0
        for point in points + [len(stream)]:
            out, got = n.feed(stream[last:point])
            sent += out
            replies += got
            last = point
        self.assertEqual(bytes(sent), b"\x01\x05alice\x0awonderland\x05\x01\x00\x03\x0bexample.org\x00\x50")
        self.assertEqual(replies, [("2001:db8::1", 1081)])
        self.assertEqual(n.leftover(), b"after")

    def test_bind_takes_two_replies(self):
        n = self.negotiation(credentials=None, replies=2)
        out, replies = n.feed(b"\x05\x00" + wire5.encode_reply(0, "127.0.0.1", 5000))
        self.assertEqual((replies, n.done), ([("127.0.0.1", 5000)], False))
        out, replies = n.feed(wire5.encode_reply(0, "127.0.0.9", 20))
        self.assertEqual((replies, n.done), ([("127.0.0.9", 20)], True))

    def test_each_failure_code_is_its_own_exception(self):
        expected = {1: SOCKS5GeneralFailure, 2: SOCKS5NotAllowed, 3: SOCKS5NetworkUnreachable,
                    4: SOCKS5HostUnreachable, 5: SOCKS5ConnectionRefused, 6: SOCKS5TTLExpired,
                    7: SOCKS5CommandNotSupported, 8: SOCKS5AddressTypeNotSupported, 9: SOCKS5ReplyError}
        for code, cls in expected.items():
            n = self.negotiation(credentials=None)
            n.feed(b"\x05\x00")
            e = self.assertRaises(SOCKS5ReplyError, n.feed, wire5.encode_reply(code))
            self.assertIs(type(e), cls)
            self.assertEqual(e.code, code)
            self.assertIs(type(socks5_error_for(code)), cls)
            self.assertIn(str(code), str(e))

    def test_authentication_failures(self):
        n = self.negotiation()
        self.assertRaises(SOCKSNoAcceptableMethod, n.feed, b"\x05\xff")
        n = self.negotiation()
        n.feed(b"\x05\x02")
        e = self.assertRaises(SOCKSAuthenticationFailed, n.feed, b"\x01\x01")
        self.assertNotIn("wonderland", str(e))
        n = self.negotiation()
        n.feed(b"\x05\x02")
        self.assertEqual(n.feed(b"\x05\x00")[1], [])  # VER 5 in the status: a known quirk, accepted

    def test_answers_that_are_not_socks5_are_protocol_errors(self):
        for first, then in [(socks4.encode_reply(socks4.REJECTED), b""),  # a SOCKS4-only server
                            (b"\x05\x02", b""),                            # a method not offered
                            (b"\x05\x00", b"\x04\x00\x00\x01")]:           # a reply of another version
            n = self.negotiation(credentials=None)
            with self.assertRaises(SOCKSProtocolError):
                n.feed(first)
                n.feed(then)
        n = self.negotiation(credentials=None)
        n.feed(b"\x05\x00")
        self.assertRaises(SOCKSProtocolError, n.feed, b"\x05\x00\x00\x09")  # unknown address type

    def test_every_error_is_a_socks_error(self):
        for cls in (SOCKS5ReplyError, SOCKSAuthenticationError, SOCKSNoAcceptableMethod,
                    SOCKSAuthenticationFailed, SOCKS5NotAllowed):
            self.assertTrue(issubclass(cls, SOCKSError), cls)


class CredentialsFromEnvironmentTests(SynchronousTestCase):
    def test_dantes_variables_first_set_first(self):
        self.assertEqual(credentials_from_environment({}), (None, None))
        self.assertEqual(credentials_from_environment({"SOCKS5_USER": "a", "SOCKS5_PASSWD": "p"}), ("a", "p"))
        self.assertEqual(credentials_from_environment({"SOCKS_USERNAME": "u", "SOCKS_USER": "v",
                                                       "SOCKS_PASSWORD": "", "SOCKS_PASSWD": "q"}), ("u", "q"))
