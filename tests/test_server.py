"""The SOCKS4/4a server over real loopback sockets, through the real service."""

import hashlib
import os
import socket
import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone, DNSLookupError
from twisted.trial.unittest import SkipTest, TestCase

from sockssuite import splice
from sockssuite.wire import socks4

from . import support
from .support import async_test
from .support import (Echo, Firehose, Greeter, LogCapture, ReadAllThenAnswer, connect_raw,
                      listen, socks_connect, start_server)


class ConnectTests(TestCase):
    @async_test
    async def test_connect_relays_both_ways_and_reports_the_bound_address(self):
        server = await start_server(self)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        self.assertEqual(reply.code, socks4.GRANTED)
        self.assertEqual(reply.address, "127.0.0.1")
        self.assertNotEqual(reply.port, 0)
        self.assertNotEqual(reply.port, echo.getHost().port)
        client.transport.write(b"hello through the proxy")
        self.assertEqual(await client.wait_bytes(23), b"hello through the proxy")
        client.transport.loseConnection()
        await client.closed

    @async_test
    async def test_socks4a_hostname_is_resolved_by_the_server(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "localhost", echo.getHost().port,
                                            socks4a=True, userid=b"alice")
        self.assertEqual(reply.code, socks4.GRANTED)
        client.transport.write(b"ping")
        self.assertEqual(await client.wait_bytes(4), b"ping")
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "localhost")
        self.assertEqual(event["resolved"], "127.0.0.1")
        self.assertEqual(event["user"], "alice")
        self.assertEqual(event["outcome"], "closed")
        self.assertEqual(event["rule_line"], 1)
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (4, 4))

    @async_test
    async def test_socks4a_decision_is_made_on_the_resolved_address(self):
        logs = LogCapture(self)
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0\n"
                                          "permit 0.0.0.0 0.0.0.0\n")
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "localhost", echo.getHost().port,
                                            socks4a=True)
        self.assertEqual(reply.code, socks4.REJECTED)
        [denied] = await logs.wait_for("denied")
        self.assertEqual(denied["rule_line"], 1)
        self.assertEqual(denied["requested"], "localhost")
        self.assertEqual(denied["resolved"], "127.0.0.1")

    @async_test
    async def test_unresolvable_socks4a_name_gets_91(self):
        logs = LogCapture(self)
        server = await start_server(self)
        # The lookup fails here, not at the system's DNS server (tests talk to loopback only).
        server.factory.resolver = _HeldResolver(defer.fail(DNSLookupError("no-such-host.invalid")))
        client, reply = await socks_connect(support.port_of(server), "no-such-host.invalid", 80,
                                            socks4a=True)
        self.assertEqual(reply.code, socks4.REJECTED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "resolve-failed")

    @async_test
    async def test_denied_request_gets_91_and_a_denial_event_naming_the_line(self):
        logs = LogCapture(self)
        server = await start_server(self, "# only port 7 is allowed\npermit 127.0.0.0 255.0.0.0 eq 7\n"
                                          "deny 0.0.0.0 0.0.0.0 eq 80\n")
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", 80, userid=b"bob")
        self.assertEqual(reply.code, socks4.REJECTED)
        await client.closed
        [denied] = await logs.wait_for("denied")
        self.assertEqual(denied["rule_line"], 3)
        self.assertEqual(denied["reason"], "denied by line 3")
        self.assertEqual(denied["user"], "bob")
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", 81)
        self.assertEqual(reply.code, socks4.REJECTED)
        denied = await logs.wait_for("denied", 2)
        self.assertEqual(denied[1]["reason"], "no line matched")
        self.assertIsNone(denied[1]["rule_line"])

    @async_test
    async def test_refused_destination_gets_91(self):
        logs = LogCapture(self)
        server = await start_server(self)
        closed = await listen(self, Echo)
        port = closed.getHost().port
        await closed.stopListening()
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", port)
        self.assertEqual(reply.code, socks4.REJECTED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "connect-failed")

    @async_test
    async def test_pipelined_bytes_after_the_request_reach_the_destination_first(self):
        server = await start_server(self)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port,
                                            extra=b"early bytes|")
        self.assertEqual(reply.code, socks4.GRANTED)
        client.transport.write(b"late bytes")
        self.assertEqual(await client.wait_bytes(22), b"early bytes|late bytes")

    @async_test
    async def test_destination_that_speaks_first_is_relayed(self):
        server = await start_server(self)
        greeter = await listen(self, Greeter)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", greeter.getHost().port)
        self.assertEqual(await client.wait_bytes(11), b"220 hello\r\n")
        client.transport.write(b"quit")
        self.assertEqual(await client.wait_bytes(15), b"220 hello\r\nQUIT")

    @async_test
    async def test_half_close_still_delivers_the_answer(self):
        server = await start_server(self)
        dest = await listen(self, ReadAllThenAnswer)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", dest.getHost().port)
        payload = os.urandom(300_000)
        client.transport.write(payload)
        client.transport.loseWriteConnection()
        await client.closed
        expected = b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        self.assertEqual(bytes(client.received), expected)

    @async_test
    async def test_half_close_sent_with_the_request_is_kept(self):
        server = await start_server(self)
        dest = await listen(self, ReadAllThenAnswer)
        client = await connect_raw(support.port_of(server))
        client.transport.write(socks4.encode_request(socks4.CONNECT, dest.getHost().port, "127.0.0.1")
                               + b"abc")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(bytes(client.received[:8]), socks4.encode_reply(90, *_bound(client)))
        self.assertEqual(bytes(client.received[8:]),
                         b"3 " + hashlib.sha256(b"abc").hexdigest().encode())

    @async_test
    async def test_a_connect_that_completes_later_is_relayed(self):
        # Over loopback the proxy's connect is usually complete when
        # connect() returns (and is reported at once).  A destination whose
        # accept queue is full answers the SYN only once it has room: then
        # the connect is still in progress, and completes when the socket
        # turns writable (LeanClient.doConnect).
        server = await start_server(self)
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        listener.setblocking(False)  # (adoptStreamPort needs it)
        address = listener.getsockname()
        for _ in range(3):  # fill the accept queue
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            self.addCleanup(filler.close)
            filler.connect_ex(address)
        await support.deferLater(0.1)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.addCleanup(probe.close)
        probe.connect_ex(address)
        try:
            probe.getpeername()
        except OSError:
            pass
        else:
            raise SkipTest("this kernel completes connects to a full accept queue at once")
        client = await connect_raw(support.port_of(server))
        client.transport.write(socks4.encode_request(socks4.CONNECT, address[1], "127.0.0.1") + b"early")
        await support.deferLater(0.3)
        self.assertEqual(bytes(client.received), b"", "granted before the destination had room")
        port = reactor.adoptStreamPort(listener.fileno(), socket.AF_INET, protocol.Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        for _ in range(int(10 / 0.05)):  # the SYN is sent again after about 1 s
            if len(client.received) >= 13:
                break
            await support.deferLater(0.05)
        self.assertEqual(bytes(client.received[:8]), socks4.encode_reply(90, *_bound(client)))
        self.assertEqual(bytes(client.received[8:]), b"early")
        client.transport.loseConnection()

    @async_test
    async def test_a_reset_found_by_sending_the_grant_reaches_the_destination_as_a_reset(self):
        # The client sends its SOCKS4a request and more than the early-data
        # bound (so the proxy stops reading it), then resets while the name
        # resolves.  The send of the grant is the first to meet the reset,
        # and takes the socket's pending error: after that a read would see
        # a clean end of file.  The destination must still see a reset,
        # never a clean close, and no splice relay may be left running.
        logs = LogCapture(self)
        server = await start_server(self)
        slow = _hold_resolution(server)
        ended = defer.Deferred()

        class Destination(protocol.Protocol):
            def connectionLost(self, reason):
                ended.callback(reason.value)

        dest = await listen(self, Destination)
        relays = []
        make_relay = splice.SpliceRelay

        def recorded(*args, **kwargs):
            relays.append(make_relay(*args, **kwargs))
            return relays[-1]

        self.patch(splice, "SpliceRelay", recorded)
        client = await connect_raw(support.port_of(server))
        client.transport.write(socks4.encode_request(socks4.CONNECT, dest.getHost().port, hostname="slow.test")
                               + b"x" * 65600)
        await support.deferLater(0.2)
        client.transport.abortConnection()
        await support.deferLater(0.2)
        slow.callback("127.0.0.1")
        reason = await ended
        self.assertFalse(isinstance(reason, ConnectionDone), f"the destination saw a clean close: {reason!r}")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "reset", event)
        self.assertEqual([r for r in relays if not r.finished], [], "a splice relay (and its pipes) left behind")

    @async_test
    async def test_slow_reader_does_not_make_the_proxy_buffer_without_bound(self):
        server = await start_server(self)
        total = 64 * 1024 * 1024
        hose = Firehose
        hose.total = total
        dest = await listen(self, type("Hose", (Firehose,), {"total": total}))
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", dest.getHost().port)
        client.transport.pauseProducing()  # stop reading: the kernel buffers fill, then the proxy's
        await support.deferLater(1.0)
        [session] = server.factory.sessions
        buffered = _buffered(session.transport) + _buffered(session.upstream.transport)
        self.assertLess(buffered, 1024 * 1024, "proxy buffers grew while the reader was paused")
        self.assertLess(session.upstream.received, total // 2)
        client.transport.resumeProducing()
        await client.closed
        self.assertEqual(len(client.received), total)
        self.assertEqual(bytes(client.received[:32]), b"0123456789abcdef" * 2)

    @async_test
    async def test_reset_by_the_destination_reaches_the_client_as_an_abort(self):
        logs = LogCapture(self)
        server = await start_server(self)

        class Resetter(Echo):
            def dataReceived(self, data):
                self.transport.write(b"partial")
                self.transport.abortConnection()

        dest = await listen(self, Resetter)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", dest.getHost().port)
        client.transport.write(b"x")
        reason = await client.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "reset")
        self.assertFalse(isinstance(reason, ConnectionDone),
                         "a reset upstream must not look like a clean end to the client")


class SpliceEngineConnectTests(ConnectTests):
    """The CONNECT tests with the relay pinned to splice(2) (the default where
    available), and a check that it really was used."""

    relay_engine = "splice"

    @async_test
    async def test_the_splice_engine_is_used(self):
        from sockssuite import splice
        if not splice.AVAILABLE:
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("no splice(2)")
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        client.transport.write(b"kernel")
        self.assertEqual(await client.wait_bytes(6), b"kernel")
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["engine"], event["outcome"]), ("splice", "closed"))


class AutoEngineTests(TestCase):
    @async_test
    async def test_short_sessions_copy_and_bulk_sessions_move_to_splice(self):
        from sockssuite import splice
        from sockssuite.server import SPLICE_AFTER
        if not splice.AVAILABLE:
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("no splice(2)")
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        client.transport.write(b"small")
        await client.wait_bytes(5)
        client.transport.loseConnection()
        total = 8 * SPLICE_AFTER
        dest = await listen(self, type("Hose", (Firehose,), {"total": total}))
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", dest.getHost().port)
        await client.closed
        self.assertEqual(len(client.received), total)
        events = await logs.wait_for("session-closed", 2)
        self.assertEqual([(e["engine"], e["outcome"]) for e in events], [("copy", "closed"), ("splice", "closed")])
        self.assertEqual(events[1]["bytes_down"], total)


class NoPipesTests(TestCase):
    """Out of descriptors for a splice relay's pipes (a spliced session holds
    six: two sockets, four pipe ends), a session relays by copy instead,
    with every byte, and nothing leaks."""

    def setUp(self):
        if not splice.AVAILABLE:
            raise SkipTest("no splice(2)")

    def test_open_pipes_closes_the_first_pipe_when_the_second_fails(self):
        import errno
        made = []
        real_pipe2 = os.pipe2

        def pipe2(flags):
            if made:
                raise OSError(errno.EMFILE, "Too many open files")
            made.extend(real_pipe2(flags))
            return made

        self.patch(splice.os, "pipe2", pipe2)
        with self.assertRaises(OSError):
            splice.open_pipes()
        for fd in made:
            with self.assertRaises(OSError, msg=f"pipe end {fd} left open"):
                os.fstat(fd)

    async def bulk_session_without_pipes(self, engine):
        import errno
        from sockssuite.server import SPLICE_AFTER

        def no_pipes():
            raise OSError(errno.EMFILE, "Too many open files")

        self.patch(splice, "open_pipes", no_pipes)
        logs = LogCapture(self)
        server = await start_server(self, relay_engine=engine)
        total = 8 * SPLICE_AFTER
        dest = await listen(self, type("Hose", (Firehose,), {"total": total}))
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", dest.getHost().port)
        self.assertEqual(reply.code, socks4.GRANTED)
        await client.closed
        self.assertEqual(len(client.received), total)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["engine"], event["outcome"], event["bytes_down"]), ("copy", "closed", total))
        [note] = [e for e in logs.events if "relaying by copy" in (e.get("log_format") or "")]
        self.assertIn("Too many open files", note["error"])

    @async_test
    async def test_splice_engine_relays_by_copy_without_pipes(self):
        await self.bulk_session_without_pipes("splice")

    @async_test
    async def test_auto_engine_stays_on_copy_without_pipes(self):
        await self.bulk_session_without_pipes("auto")


class CopyEngineConnectTests(ConnectTests):
    """The CONNECT tests with the copying relay (TLS, non-Linux, --relay-engine copy)."""

    relay_engine = "copy"


class BadInputTests(TestCase):
    @async_test
    async def test_garbage_gets_91_and_the_server_keeps_serving(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        for garbage in [b"GET / HTTP/1.1\r\n\r\n", b"\x06\x01\x00", b"\x04\x09" + b"\0" * 10,
                        b"\x04\x01\x00\x50\0\0\0\1\0bad host\0"]:
            client = await connect_raw(support.port_of(server))
            client.transport.write(garbage)
            await client.closed
            self.assertEqual(bytes(client.received), socks4.encode_reply(91))
        events = await logs.wait_for("session-closed", 4)
        self.assertEqual({e["outcome"] for e in events}, {"protocol-error"})
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        self.assertEqual(reply.code, socks4.GRANTED)

    @async_test
    async def test_userid_without_end_is_cut_at_the_bound(self):
        server = await start_server(self)
        client = await connect_raw(support.port_of(server))
        client.transport.write(struct.pack("!BBH4s", 4, 1, 80, b"\x7f\0\0\1"))
        for _ in range(20):
            client.transport.write(b"u" * 100)
        await client.closed
        self.assertEqual(bytes(client.received), socks4.encode_reply(91))

    @async_test
    async def test_client_that_never_finishes_is_cut_at_the_handshake_timeout(self):
        logs = LogCapture(self)
        server = await start_server(self, handshake_timeout=0.2)
        client = await connect_raw(support.port_of(server))
        client.transport.write(b"\x04\x01\x00")
        await client.closed
        self.assertEqual(bytes(client.received), socks4.encode_reply(91))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "handshake-timeout")

    @async_test
    async def test_client_resetting_during_resolution_cancels_it(self):
        # The client leaves while its SOCKS4a name is still resolving.
        logs = LogCapture(self)
        server = await start_server(self)
        slow = _hold_resolution(server)
        client = await connect_raw(support.port_of(server))
        client.transport.write(socks4.encode_request(socks4.CONNECT, 80, hostname="example.com"))
        await support.deferLater(0.1)
        # A FIN could be a half-close (the request may still be answered), so
        # "leaving" here is a reset.
        client.transport.abortConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "client-gone")
        self.assertEqual(server.factory.sessions, set())
        self.assertTrue(slow.called, "the pending resolution was not cancelled")

    @async_test
    async def test_connections_over_the_limit_get_91(self):
        logs = LogCapture(self)
        server = await start_server(self, max_connections=2)
        first = await connect_raw(support.port_of(server))
        second = await connect_raw(support.port_of(server))
        third = await connect_raw(support.port_of(server))
        await third.closed
        self.assertEqual(bytes(third.received), socks4.encode_reply(91))
        event = (await logs.wait_for("session-closed"))[0]
        self.assertEqual(event["outcome"], "server-full")
        for c in (first, second):
            c.transport.loseConnection()
            await c.closed

    @async_test
    async def test_idle_session_is_closed(self):
        logs = LogCapture(self)
        server = await start_server(self, idle_timeout=0.3)
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        client.transport.write(b"x")
        await client.wait_bytes(1)
        await client.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "idle-timeout")


def _buffered(transport):
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _bound(client):
    # The bound address is whatever the proxy reported; re-read it from the reply.
    reply = socks4.decode_reply(bytes(client.received[:8]))
    return reply.port, reply.address


class ClockTests(TestCase):
    """Timeouts with a fake clock and in-memory transports: no sleeping."""

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock
        self.reactor = MemoryReactorClock()
        self.pending_names = []
        self.logs = LogCapture(self)

    def make(self, **settings):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        from sockssuite import access
        from sockssuite.server import ServerSettings, SOCKS4ServerFactory

        test = self

        class Resolver:
            def getHostByName(self, name, timeout=()):
                d = defer.Deferred()
                test.pending_names.append((name, d))
                return d

        factory = SOCKS4ServerFactory(access.DEFAULT_POLICY, ServerSettings(**settings),
                                      reactor=self.reactor, resolver=Resolver())
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 1080))
        proto.makeConnection(transport)
        return factory, proto, transport

    def lose(self, proto):
        from twisted.python.failure import Failure
        proto.connectionLost(Failure(ConnectionDone()))

    def test_handshake_timeout_counts_from_the_connection(self):
        factory, proto, transport = self.make(handshake_timeout=30)
        proto.dataReceived(b"\x04\x01")
        self.reactor.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertEqual(transport.value(), socks4.encode_reply(91))
        self.assertTrue(transport.disconnecting)
        self.lose(proto)
        [event] = self.logs.named("session-closed")
        self.assertEqual(event["outcome"], "handshake-timeout")

    def test_complete_request_stops_the_handshake_timer(self):
        factory, proto, transport = self.make(handshake_timeout=30)
        proto.dataReceived(socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1"))
        self.reactor.advance(60)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_resolution_times_out(self):
        factory, proto, transport = self.make(resolve_timeout=15)
        proto.dataReceived(socks4.encode_request(socks4.CONNECT, 80, hostname="slow.example"))
        [(name, d)] = self.pending_names
        self.assertEqual(name, "slow.example")
        self.reactor.advance(14.9)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.2)
        self.assertEqual(transport.value(), socks4.encode_reply(91))
        self.lose(proto)
        [event] = self.logs.named("session-closed")
        self.assertEqual(event["outcome"], "resolve-failed")

    def connect(self, proto, transport, **kw):
        """Send a CONNECT and complete the outbound connection in memory."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        proto.dataReceived(socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1") + b"early")
        host, port, client_factory, timeout, bind = self.reactor.tcpClients[-1]
        upstream = client_factory.buildProtocol(None)
        up_transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 5555),
                                       peerAddress=IPv4Address("TCP", host, port))
        upstream.makeConnection(up_transport)
        return up_transport, timeout

    def test_connect_uses_the_connect_timeout_and_replies_with_the_bound_address(self):
        factory, proto, transport = self.make(connect_timeout=42)
        up_transport, timeout = self.connect(proto, transport)
        self.assertEqual(timeout, 42)
        self.assertEqual(transport.value(), socks4.encode_reply(90, 5555, "127.0.0.1"))
        self.assertEqual(up_transport.value(), b"early")

    def test_idle_session_is_closed_after_the_idle_timeout_and_traffic_defers_it(self):
        factory, proto, transport = self.make(idle_timeout=100)
        up_transport, _ = self.connect(proto, transport)
        self.reactor.pump([1] * 90)
        proto.dataReceived(b"still here")
        self.reactor.pump([1] * 90)
        self.assertFalse(transport.disconnecting, "traffic 90s ago must keep the session")
        self.reactor.pump([1] * 30)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(up_transport.disconnecting)
        self.lose(proto)
        [event] = self.logs.named("session-closed")
        self.assertEqual(event["outcome"], "idle-timeout")
        self.assertEqual(event["bytes_up"], len(b"early") + len(b"still here"))


    def test_client_reset_while_connecting_is_client_gone_not_a_connect_failure(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        factory, proto, transport = self.make()
        proto.dataReceived(socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1"))
        connector = self.reactor.connectors[-1]
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(transport.value(), b"")
        [event] = self.logs.named("session-closed")
        self.assertEqual(event["outcome"], "client-gone")
        self.assertTrue(connector.stoppedConnecting, "the outbound connect was not cancelled")
        self.assertEqual(factory.sessions, set())


class FakeIdentd:
    """An identd on 127.0.0.1:0 answering each query with ``answer(client_port,
    server_port)`` (bytes, or None to never answer)."""

    def __init__(self, answer):
        from twisted.internet import protocol as p
        self.queries = []
        fake = self

        class Proto(p.Protocol):
            def dataReceived(self, data):
                fake.queries.append(data)
                ports = data.split(b"\r\n")[0].split(b",")
                reply = answer(int(ports[0]), int(ports[1]))
                if reply is not None:
                    self.transport.write(reply)
                    self.transport.loseConnection()

        self.factory = p.Factory.forProtocol(Proto)


def userid_answer(user):
    return lambda c, s: b"%d , %d : USERID : UNIX : %s\r\n" % (c, s, user)


class IdentTests(TestCase):
    """?=I / ?=i and the server-wide default, against identds on loopback."""

    async def setup(self, rules, answer=None, **settings):
        self.logs = LogCapture(self)
        if answer is not None:
            self.identd = FakeIdentd(answer)
            port = await listen(self, self.identd.factory)
            ident_port = port.getHost().port
        else:
            closed = await listen(self, Echo)
            ident_port = closed.getHost().port
            await closed.stopListening()
        self.server = await start_server(self, rules, ident_port=ident_port, **settings)
        self.echo = await listen(self, Echo)

    async def request(self, user):
        return await socks_connect(support.port_of(self.server), "127.0.0.1",
                                   self.echo.getHost().port, userid=user)

    @async_test
    async def test_required_and_matching_user_is_granted_and_logged(self):
        await self.setup("permit ?=I 127.0.0.0 255.0.0.0\n", userid_answer(b"alice"))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.GRANTED)
        client.transport.loseConnection()
        [event] = await self.logs.wait_for("session-closed")
        self.assertEqual(event["ident_user"], "alice")
        self.assertTrue(event["ident"].startswith("ok"))
        [query] = self.identd.queries
        client_port = int(event["client"].split(":")[1])
        self.assertEqual(query, b"%d , %d\r\n" % (client_port, support.port_of(self.server)))

    @async_test
    async def test_required_and_other_user_gets_93(self):
        await self.setup("permit ?=I 127.0.0.0 255.0.0.0\n", userid_answer(b"mallory"))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.BAD_IDENT)
        [denied] = await self.logs.wait_for("denied")
        self.assertEqual(denied["ident_user"], "mallory")
        self.assertEqual(denied["rule_line"], 1)
        [event] = await self.logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "ident-mismatch")

    @async_test
    async def test_if_available_and_other_user_gets_93(self):
        await self.setup("permit ?=i 127.0.0.0 255.0.0.0\n", userid_answer(b"mallory"))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.BAD_IDENT)

    @async_test
    async def test_no_user_answer_counts_as_a_mismatch(self):
        await self.setup("permit ?=i 127.0.0.0 255.0.0.0\n",
                         lambda c, s: b"%d,%d:ERROR:HIDDEN-USER\r\n" % (c, s))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.BAD_IDENT)

    @async_test
    async def test_required_without_identd_gets_92(self):
        await self.setup("permit ?=I 127.0.0.0 255.0.0.0\n")
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.NO_IDENTD)
        [event] = await self.logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "ident-unreachable")

    @async_test
    async def test_if_available_without_identd_is_granted(self):
        await self.setup("permit ?=i 127.0.0.0 255.0.0.0\n")
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.GRANTED)
        client.transport.loseConnection()
        [event] = await self.logs.wait_for("session-closed")
        self.assertTrue(event["ident"].startswith("unreachable"))
        self.assertIsNone(event["ident_user"])

    @async_test
    async def test_unknown_error_answer_counts_as_unreachable(self):
        await self.setup("permit ?=I 127.0.0.0 255.0.0.0\n",
                         lambda c, s: b"%d,%d:ERROR:UNKNOWN-ERROR\r\n" % (c, s))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.NO_IDENTD)

    @async_test
    async def test_server_default_applies_to_lines_without_a_mode(self):
        await self.setup("permit 127.0.0.0 255.0.0.0\n", default_ident="I")
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.NO_IDENTD)

    @async_test
    async def test_no_ident_mode_never_asks(self):
        await self.setup("permit ?=n 127.0.0.0 255.0.0.0\n", userid_answer(b"mallory"), default_ident="I")
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.GRANTED)
        self.assertEqual(self.identd.queries, [])

    @async_test
    async def test_deny_line_never_asks_identd(self):
        await self.setup("deny ?=I 127.0.0.0 255.0.0.0\n", userid_answer(b"alice"))
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.REJECTED)
        self.assertEqual(self.identd.queries, [])

    @async_test
    async def test_hanging_identd_is_cut_at_the_ident_timeout_and_blocks_nobody(self):
        await self.setup("permit ?=I *=alice 127.0.0.0 255.0.0.0\npermit 127.0.0.0 255.0.0.0\n",
                         lambda c, s: None, ident_timeout=0.5)
        start = reactor.seconds()
        first = defer.ensureDeferred(self.request(b"alice"))
        # Meanwhile another client (a line without ident) is served at once.
        client, reply = await self.request(b"bob")
        self.assertEqual(reply.code, socks4.GRANTED)
        self.assertLess(reactor.seconds() - start, 0.4)
        client, reply = await first
        self.assertEqual(reply.code, socks4.NO_IDENTD)
        self.assertLess(reactor.seconds() - start, 3.0)

    @async_test
    async def test_special_commands_run_with_the_identd_user(self):
        import tempfile
        folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        rules = (f"#BAD_ID: /usr/bin/touch {folder}/bad-%U-%u\n"
                 f"#NO_IDENTD: /usr/bin/touch {folder}/none-%u\n"
                 "permit ?=I 127.0.0.0 255.0.0.0\n")
        await self.setup(rules, userid_answer(b"mal;lory"), allow_shell_commands=True)
        client, reply = await self.request(b"alice")
        self.assertEqual(reply.code, socks4.BAD_IDENT)
        for _ in range(200):
            if os.listdir(folder):
                break
            await support.deferLater(0.02)
        self.assertEqual(os.listdir(folder), ["bad-mal_lory-alice"])


def _real_identd_available():
    import shutil
    return all(shutil.which(x) for x in ("oidentd", "runuser", "curl")) and os.geteuid() == 0


class RealIdentdTests(TestCase):
    """Debian's oidentd on a loopback port, and a client running as `nobody`."""

    if not _real_identd_available():
        skip = "needs oidentd, runuser and curl, as root (.ci/run installs them)"

    @async_test
    async def test_oidentd_confirms_nobody_and_exposes_a_false_name(self):
        import shutil
        from twisted.internet import utils
        # Pick a free port for oidentd.
        probe = await listen(self, Echo)
        ident_port = probe.getHost().port
        await probe.stopListening()
        from twisted.internet import protocol as p
        ended = defer.Deferred()

        class OidentdProcess(p.ProcessProtocol):
            output = b""

            def errReceived(self, data):
                self.output += data

            def processEnded(self, reason):
                ended.callback(None)

        proc = OidentdProcess()
        reactor.spawnProcess(proc, shutil.which("oidentd"),
                             ["oidentd", "-i", "-S", "-a", "127.0.0.1", "-p", str(ident_port)],
                             env=os.environ.copy())

        async def stop():
            try:
                proc.transport.signalProcess("TERM")
            except Exception:
                pass
            await ended
        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        for _ in range(100):  # wait until it listens
            try:
                c = await connect_raw(ident_port)
                c.transport.abortConnection()
                break
            except Exception:
                await support.deferLater(0.05)
        logs = LogCapture(self)
        server = await start_server(self, "permit ?=I 127.0.0.0 255.0.0.0\n", ident_port=ident_port)
        from twisted.web import resource, server as web_server, static
        root = resource.Resource()
        root.putChild(b"hello", static.Data(b"hello from behind the proxy", "text/plain"))
        web = await listen(self, web_server.Site(root))
        results = {}
        for user in ("nobody", "root"):
            # curl is a system binary `nobody` may run (unlike a pyenv python under /root).
            out, err, code = await utils.getProcessOutputAndValue(
                shutil.which("runuser"),
                ["-u", "nobody", "--", shutil.which("curl"), "-s", "-x",
                 f"socks4://{user}@127.0.0.1:{support.port_of(server)}",
                 f"http://127.0.0.1:{web.getHost().port}/hello"],
                env=os.environ.copy())
            results[user] = (code, out)
        self.assertEqual(results["nobody"], (0, b"hello from behind the proxy"))
        self.assertEqual(results["root"][0], 97, "curl's exit code for a SOCKS refusal")
        denied = await logs.wait_for("denied")
        self.assertEqual(denied[0]["ident_user"], "nobody")
        self.assertEqual(denied[0]["user"], "root")




class ListenerKindTests(TestCase):
    """Clients on tcp6 and UNIX listeners, and destinations the kernel treats as local."""

    async def serve(self, description):
        from sockssuite import access as acc
        from sockssuite.server import ServerSettings
        from sockssuite.service import SOCKSServerService
        service = SOCKSServerService([description], acc.parse_access(support.LOOPBACK_ONLY, "t"),
                                     ServerSettings(), shutdown_grace=0)
        service.startService()
        await defer.gatherResults(service._listening)
        self.addCleanup(service.stopService)
        return service

    @async_test
    async def test_ipv4_client_on_a_tcp6_listener_is_its_ipv4_address(self):
        logs = LogCapture(self)
        service = await self.serve("tcp6:0:interface=\\:\\:")
        echo = await listen(self, Echo)
        client, reply = await socks_connect(service.addresses[0].port, echo.getHost().port and "127.0.0.1",
                                            echo.getHost().port)
        self.assertEqual(reply.code, socks4.GRANTED)
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertTrue(event["client"].startswith("[::ffff:127.0.0.1]:"))

    @async_test
    async def test_ipv6_client_is_not_matched_by_ipv4_lines(self):
        from twisted.internet import endpoints as ep
        logs = LogCapture(self)
        service = await self.serve("tcp6:0:interface=\\:\\:1")
        client = support.RawClient()
        await ep.connectProtocol(ep.TCP6ClientEndpoint(reactor, "::1", service.addresses[0].port), client)
        client.transport.write(socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1"))
        reply = await client.reply()
        self.assertEqual(reply.code, socks4.REJECTED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["outcome"], event["detail"]), ("denied", "no line matched"))

    @async_test
    async def test_unix_socket_clients_count_as_local(self):
        import tempfile
        from twisted.internet import endpoints as ep
        folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        path = os.path.join(folder, "socks.sock")
        await self.serve(f"unix:{path}")
        echo = await listen(self, Echo)
        client = support.RawClient()
        await ep.connectProtocol(ep.UNIXClientEndpoint(reactor, path), client)
        client.transport.write(socks4.encode_request(socks4.CONNECT, echo.getHost().port, "127.0.0.1") + b"hi")
        reply = await client.reply()
        self.assertEqual(reply.code, socks4.GRANTED)
        self.assertEqual(await client.wait_bytes(10), socks4.encode_reply(90, *reply_bound(client)) + b"hi")
        client.transport.loseConnection()

    @async_test
    async def test_destinations_in_0_0_0_0_slash_8_are_refused(self):
        logs = LogCapture(self)
        server = await start_server(self, "permit 0.0.0.0 0.0.0.0\n")
        echo = await listen(self, Echo)
        for dst in ("0.0.0.0", "0.1.2.3"):
            client, reply = await socks_connect(support.port_of(server), dst, echo.getHost().port)
            self.assertEqual(reply.code, socks4.REJECTED)
        events = await logs.wait_for("session-closed", 2)
        self.assertIn("0.0.0.0/8", events[0]["detail"])


def reply_bound(client):
    reply = socks4.decode_reply(bytes(client.received[:8]))
    return reply.port, reply.address


class LingeringCloseTests(TestCase):
    """A refusal must reach a client that sent more than its request: closing
    with unread input makes the kernel send a reset, which can destroy the
    reply before the client reads it."""

    async def refused_with_junk_behind(self, server, request):
        client = await connect_raw(support.port_of(server))
        client.transport.write(request + os.urandom(256 * 1024))
        reason = await client.closed
        return bytes(client.received), reason

    @async_test
    async def test_socks4_refusal_arrives_despite_pipelined_bytes(self):
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        for _ in range(5):
            received, reason = await self.refused_with_junk_behind(
                server, socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1", userid=b"x"))
            self.assertEqual(received, socks4.encode_reply(91))
            self.assertIsInstance(reason, ConnectionDone)  # a clean close, not a reset

    @async_test
    async def test_socks5_refusal_arrives_despite_pipelined_bytes(self):
        from sockssuite.wire import socks5 as wire
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        for _ in range(5):
            received, reason = await self.refused_with_junk_behind(
                server, wire.encode_greeting(b"\x00") + wire.encode_request(wire.CONNECT, "127.0.0.1", 80))
            self.assertEqual(received[:2], b"\x05\x00")
            self.assertEqual(wire.ReplyParser().feed(received[2:]).code, wire.NOT_ALLOWED)
            self.assertIsInstance(reason, ConnectionDone)

    @async_test
    async def test_a_client_that_never_closes_is_closed_after_the_linger(self):
        from sockssuite import server as server_module
        self.patch(server_module, "LINGER", 0.3)
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        client = await connect_raw(support.port_of(server))
        client.readConnectionLost = lambda: None  # this client ignores the server's FIN
        client.transport.write(socks4.encode_request(socks4.CONNECT, 80, "127.0.0.1"))
        started = reactor.seconds()
        await client.wait_bytes(8)
        self.assertEqual(bytes(client.received), socks4.encode_reply(91))
        for _ in range(150):
            if not server.factory.sessions:
                break
            await support.deferLater(0.02)
        self.assertEqual(len(server.factory.sessions), 0, "still open after the linger")
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        client.transport.abortConnection()


class _HeldResolver:
    def __init__(self, answer: defer.Deferred):
        self.answer = answer

    def getHostByName(self, name, timeout=()):
        return self.answer


def _hold_resolution(server) -> defer.Deferred:
    """Have the server's name lookups wait for the returned Deferred."""
    answer = defer.Deferred()
    server.factory.resolver = _HeldResolver(answer)
    return answer
