"""SOCKS4ClientEndpoint against the real server and against misbehaving ones."""

from twisted.internet import endpoints, protocol, reactor
from twisted.trial.unittest import TestCase

from sockssuite.client import (SOCKS4ClientEndpoint, SOCKSIdentMismatch, SOCKSIdentUnreachable,
                               SOCKSProtocolError, SOCKSRejected)
from sockssuite.wire import socks4

from . import support
from .support import Echo, RawClient, ReadAllThenAnswer, listen, start_server
from .test_server import FakeIdentd, async_test, userid_answer


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
