"""The RFC 1413 client (``ident.lookup``) against fake identds on loopback, and
its timeout and cancellation with a fake clock."""

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from sockssuite import ident
from sockssuite.ident import IdentResult

from .support import async_test
from .support import deferLater, listen

CLIENT_PORT, SERVER_PORT = 40000, 1080


# -- fake identds ----------------------------------------------------------------

class FakeIdentd(protocol.Protocol):
    """Reads one query line, then does what its factory's ``respond`` says:
    bytes to send (then close, like oidentd, unless ``keep_open``), or None
    to send nothing and hang."""

    def connectionMade(self):
        self.buffer = b""
        self.answered = False
        self.closed = defer.Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.buffer += data
        if self.answered or b"\n" not in self.buffer:
            return
        self.answered = True
        self.factory.queries.append((self.buffer, self.transport.getPeer()))
        answer = self.factory.respond(self.buffer)
        if answer is None:
            return
        self.transport.write(answer)
        if not self.factory.keep_open:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed.callback(None)


class FakeIdentdFactory(protocol.Factory):
    protocol = FakeIdentd
    noisy = False

    def __init__(self, respond, keep_open=False):
        self.respond = respond
        self.keep_open = keep_open
        self.queries = []
        self.connections = []


def answering(rest: bytes):
    """An identd that echoes the query's port pair followed by ``rest``."""
    return lambda query: query.split(b"\r")[0].split(b"\n")[0] + rest


def hanging(query):
    return None


async def start_identd(testcase, respond, keep_open=False):
    factory = FakeIdentdFactory(respond, keep_open)
    port = await listen(testcase, factory)

    def close_leftovers():
        for conn in factory.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()
        return defer.gatherResults([c.closed for c in factory.connections])
    testcase.addCleanup(close_leftovers)
    return factory, port.getHost().port


async def wait_until(condition, timeout=5.0, what="condition"):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(0.01)
    raise AssertionError(f"{what} not reached within {timeout}s")


async def within(d, seconds=5.0):
    """``d``'s result, failing the test (rather than hanging it) after ``seconds``."""
    return await d.addTimeout(seconds, reactor)


def lookup(identd_port, *, server_host="127.0.0.1", timeout=5.0, client_port=CLIENT_PORT,
           server_port=SERVER_PORT):
    return ident.lookup(reactor, "127.0.0.1", client_port, server_host, server_port,
                        ident_port=identd_port, timeout=timeout)


# -- answers -------------------------------------------------------------------

class AnswerTests(TestCase):
    @async_test
    async def test_userid_answer_names_the_user(self):
        identd, port = await start_identd(self, answering(b" : USERID : UNIX : nobody\r\n"))
        result = await within(lookup(port))
        self.assertEqual(result.status, ident.OK)
        self.assertEqual(result.user, "nobody")

    @async_test
    async def test_query_is_the_port_pair_sent_from_the_server_host(self):
        # The identd matches the connection by the ports as seen from the
        # address the client reached us on, so the query must come from it.
        identd, port = await start_identd(self, answering(b":USERID:UNIX:nobody\n"))
        result = await within(lookup(port, server_host="127.0.0.2", client_port=51234, server_port=1080))
        self.assertEqual(result, IdentResult(ident.OK, "nobody", "USERID UNIX"))
        [(query, peer)] = identd.queries
        self.assertEqual(query, b"51234 , 1080\r\n")
        self.assertEqual(peer.host, "127.0.0.2")

    @async_test
    async def test_user_with_spaces_colons_and_a_charset(self):
        identd, port = await start_identd(self, answering(b" : USERID : UNIX , UTF-8 : J. Q: Public \r\n"))
        result = await within(lookup(port))
        self.assertEqual((result.status, result.user), (ident.OK, "J. Q: Public"))

    @async_test
    async def test_answer_is_used_without_waiting_for_the_identd_to_close(self):
        identd, port = await start_identd(self, answering(b":USERID:UNIX:nobody\r\n"), keep_open=True)
        result = await within(lookup(port))
        self.assertEqual(result.user, "nobody")
        # ... and we close the query connection ourselves.
        await within(identd.connections[0].closed)

    @async_test
    async def test_no_user_and_hidden_user_mean_no_user(self):
        for token in (b"NO-USER", b"HIDDEN-USER"):
            identd, port = await start_identd(self, answering(b" : ERROR : " + token + b"\r\n"))
            result = await within(lookup(port))
            self.assertEqual(result.status, ident.NO_USER, token)
            self.assertIsNone(result.user)
            self.assertIn(token.decode(), result.detail)

    @async_test
    async def test_other_errors_mean_unreachable(self):
        for token in (b"INVALID-PORT", b"UNKNOWN-ERROR", b"X-GO-AWAY"):
            identd, port = await start_identd(self, answering(b" : ERROR : " + token + b"\r\n"))
            result = await within(lookup(port))
            self.assertEqual(result.status, ident.UNREACHABLE, token)
            self.assertIsNone(result.user)
            self.assertIn(token.decode(), result.detail)

    @async_test
    async def test_garbage_means_unreachable(self):
        for garbage in (b"HTTP/1.0 400 Bad Request\r\n\r\n", b"40000,1080:USERID:UNIX:\r\n",
                        b"40000,1080:USERID:UNIX:a\0b\r\n", b"\xff\xfe\r\n",
                        b"40000,1080:USERID:UNIX:" + b"u" * 513 + b"\r\n"):
            identd, port = await start_identd(self, lambda query: garbage)
            result = await within(lookup(port))
            self.assertEqual(result.status, ident.UNREACHABLE, garbage)
            self.assertIn("bad answer", result.detail)

    @async_test
    async def test_answer_for_another_port_pair_means_unreachable(self):
        for answer in (b"40001 , 1080 : USERID : UNIX : root\r\n", b"40000,1081:USERID:UNIX:root\r\n",
                       b"1080,40000:USERID:UNIX:root\r\n", b"40001,1080:ERROR:NO-USER\r\n"):
            identd, port = await start_identd(self, lambda query: answer)
            result = await within(lookup(port))
            self.assertEqual(result.status, ident.UNREACHABLE, answer)
            self.assertIsNone(result.user)
            self.assertIn("ports", result.detail)

    @async_test
    async def test_close_without_answer_means_unreachable(self):
        identd, port = await start_identd(self, lambda query: b"")
        result = await within(lookup(port))
        self.assertEqual(result, IdentResult(ident.UNREACHABLE, None, "identd closed without an answer"))

    @async_test
    async def test_partial_answer_then_close_means_unreachable(self):
        identd, port = await start_identd(self, lambda query: b"40000 , 1080 : USERID : UNIX : nob")
        result = await within(lookup(port))
        self.assertEqual(result.status, ident.UNREACHABLE)

    @async_test
    async def test_one_mebibyte_line_means_unreachable_and_we_hang_up(self):
        identd, port = await start_identd(self, lambda query: b"A" * (1 << 20), keep_open=True)
        result = await within(lookup(port))
        self.assertEqual(result.status, ident.UNREACHABLE)
        self.assertIn("longer than 1024", result.detail)
        # The identd never closes: the client must have closed the connection.
        await within(identd.connections[0].closed)

    @async_test
    async def test_refused_connection_means_unreachable(self):
        closed = await listen(self, protocol.Factory.forProtocol(protocol.Protocol))
        port = closed.getHost().port
        await closed.stopListening()
        result = await within(lookup(port))
        self.assertEqual(result.status, ident.UNREACHABLE)
        self.assertIn("cannot connect", result.detail)


# -- time, cancellation, concurrency over real sockets --------------------------

class RealTimeTests(TestCase):
    @async_test
    async def test_silent_identd_means_unreachable_after_the_timeout(self):
        identd, port = await start_identd(self, hanging)
        started = reactor.seconds()
        result = await within(lookup(port, timeout=0.3))
        elapsed = reactor.seconds() - started
        self.assertEqual(result, IdentResult(ident.UNREACHABLE, None, "no answer from identd within 0.3s"))
        self.assertGreaterEqual(elapsed, 0.29)
        self.assertLess(elapsed, 3.0)
        self.assertEqual(len(identd.queries), 1, "the query was sent before the timeout")
        await within(identd.connections[0].closed)

    @async_test
    async def test_cancelling_a_lookup_waiting_for_its_answer_closes_the_query(self):
        identd, port = await start_identd(self, hanging)
        d = lookup(port, timeout=30)
        await wait_until(lambda: identd.queries, what="the query")
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        await within(identd.connections[0].closed)

    @async_test
    async def test_cancelling_a_lookup_still_connecting_raises_cancelled_error(self):
        identd, port = await start_identd(self, hanging)
        d = lookup(port, timeout=30)
        d.cancel()  # the TCP connection is not made yet (the reactor has not run)
        with self.assertRaises(defer.CancelledError):
            await d
        await deferLater(0.1)
        for conn in identd.connections:
            await within(conn.closed)

    @async_test
    async def test_hanging_lookups_do_not_delay_a_good_one(self):
        slow, slow_port = await start_identd(self, hanging)
        good, good_port = await start_identd(self, answering(b":USERID:UNIX:nobody\r\n"))
        pending = [lookup(slow_port, timeout=60, client_port=30000 + i) for i in range(100)]
        await wait_until(lambda: len(slow.queries) == len(pending), what="all slow queries")
        started = reactor.seconds()
        result = await within(lookup(good_port, timeout=60), 5.0)
        self.assertEqual(result.user, "nobody")
        self.assertLess(reactor.seconds() - started, 2.0)
        self.assertFalse(any(d.called for d in pending))
        for d in pending:
            d.cancel()
        for d in pending:
            with self.assertRaises(defer.CancelledError):
                await d
        for conn in slow.connections:
            await within(conn.closed)


# -- the same with a fake clock and in-memory connections ------------------------

class ClockTests(TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def start(self, timeout=15.0, server_host="127.0.0.1"):
        """Start a lookup; return its Deferred and the recorded connect call."""
        d = ident.lookup(self.reactor, "127.0.0.1", CLIENT_PORT, server_host, SERVER_PORT,
                         ident_port=113, timeout=timeout)
        [(host, port, factory, connect_timeout, bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, connect_timeout, bind), ("127.0.0.1", 113, timeout, (server_host, 0)))
        return d, factory

    def connect(self, factory):
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 50000),
                                    peerAddress=IPv4Address("TCP", "127.0.0.1", 113))
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 113))
        proto.makeConnection(transport)
        return proto, transport

    def result(self, d):
        results = []
        d.addBoth(results.append)
        return results[0] if results else None

    def test_query_is_written_as_soon_as_connected(self):
        d, factory = self.start(server_host="127.0.0.9")
        proto, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"40000 , 1080\r\n")
        self.assertNoResult(d)
        proto.dataReceived(b"40000 , 1080 : USERID : UNIX : nobody\r\n")
        self.assertEqual(self.successResultOf(d), IdentResult(ident.OK, "nobody", "USERID UNIX"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [], "the timeout must be cancelled")

    def test_silent_identd_times_out_exactly_at_the_timeout_and_is_aborted(self):
        d, factory = self.start(timeout=15.0)
        proto, transport = self.connect(factory)
        self.reactor.advance(14.999)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting or transport.disconnected)
        self.reactor.advance(0.002)
        self.assertEqual(self.successResultOf(d),
                         IdentResult(ident.UNREACHABLE, None, "no answer from identd within 15s"))
        self.assertTrue(transport.disconnected, "the query connection must be aborted")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_counts_from_the_start_not_from_the_connection(self):
        d, factory = self.start(timeout=15.0)
        self.reactor.advance(10)
        proto, transport = self.connect(factory)
        self.reactor.advance(4.999)
        self.assertNoResult(d)
        self.reactor.advance(0.002)
        self.assertEqual(self.successResultOf(d).status, ident.UNREACHABLE)
        self.assertTrue(transport.disconnected)

    def test_connect_that_never_completes_times_out_and_stops_connecting(self):
        d, factory = self.start(timeout=2.0)
        self.reactor.advance(1.999)
        self.assertNoResult(d)
        self.reactor.advance(0.002)
        self.assertEqual(self.successResultOf(d).status, ident.UNREACHABLE)
        [connector] = self.reactor.connectors
        self.assertTrue(connector.stoppedConnecting)

    def test_answer_just_before_the_timeout_wins(self):
        d, factory = self.start(timeout=15.0)
        proto, transport = self.connect(factory)
        self.reactor.advance(14.999)
        proto.dataReceived(b"40000,1080:ERROR:HIDDEN-USER\n")
        self.assertEqual(self.successResultOf(d).status, ident.NO_USER)
        self.reactor.advance(100)
        self.assertFalse(transport.disconnected)
        self.assertTrue(transport.disconnecting)

    def test_answer_in_pieces(self):
        d, factory = self.start()
        proto, transport = self.connect(factory)
        for piece in (b"40000 ,", b" 1080 : USER", b"ID : UNIX : no", b"body\r", b"\n"):
            self.assertNoResult(d)
            proto.dataReceived(piece)
        self.assertEqual(self.successResultOf(d).user, "nobody")

    def test_cancel_after_connecting_aborts_the_query_connection(self):
        d, factory = self.start()
        proto, transport = self.connect(factory)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_while_connecting_stops_connecting_with_cancelled_error(self):
        d, factory = self.start()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        [connector] = self.reactor.connectors
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
