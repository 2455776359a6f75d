"""SOCKS BIND over real loopback sockets: the listener, its source check, its
timeout, that it is closed in every outcome, and a real active-mode FTP
transfer whose data connection comes in through BIND."""

import hashlib
import os
import shutil
import sys
import tempfile

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from sockssuite import sockdroute
from sockssuite.client import SOCKS4ClientEndpoint, SOCKSRejected, socks4_bind
from sockssuite.wire import socks4

from . import support
from .support import LogCapture, RawClient, connect_raw, start_server
from .test_server import async_test


def proxy(server):
    return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", support.port_of(server))


class Collect(RawClient):
    """An application protocol that keeps what it receives."""


def collect_factory():
    made = []

    class F(protocol.Factory):
        def buildProtocol(self, addr):
            p = Collect()
            made.append(p)
            return p

    return F(), made


def abandon(result):
    """Give up a BIND the test does not complete: close it, expect no peer."""
    result.connected.addErrback(lambda f: None)
    result.connected.cancel()


async def connect_from(host, port, source):
    client = RawClient()
    ep = endpoints.TCP4ClientEndpoint(reactor, host, port, bindAddress=(source, 0))
    await endpoints.connectProtocol(ep, client)
    return client


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class BindTests(TestCase):
    @async_test
    async def test_peer_from_the_named_address_is_relayed_both_ways(self):
        logs = LogCapture(self)
        server = await start_server(self)
        factory, made = collect_factory()
        result = await socks4_bind(proxy(server), "127.0.0.1", 21, factory, user="alice")
        host, port = result.address
        self.assertEqual(host, "127.0.0.1")
        peer = await connect_from(host, port, "127.0.0.1")
        app = await result.connected
        self.assertIs(app, made[0])
        peer.transport.write(b"from the peer")
        self.assertEqual(await app.wait_bytes(13), b"from the peer")
        app.transport.write(b"from the client")
        self.assertEqual(await peer.wait_bytes(15), b"from the client")
        peer.transport.loseConnection()
        await app.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["command"], "bind")
        self.assertEqual(event["bound"], f"127.0.0.1:{port}")
        self.assertEqual(event["peer"].split(":")[0], "127.0.0.1")
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (15, 13))

    @async_test
    async def test_second_reply_carries_the_peer_address(self):
        server = await start_server(self)
        client = await connect_raw(support.port_of(server))
        client.transport.write(socks4.encode_request(socks4.BIND, 21, "127.0.0.1"))
        first = await client.reply()
        del client.received[:8]
        peer = await connect_from(first.address, first.port, "127.0.0.1")
        second = await client.reply()
        self.assertEqual(second.code, socks4.GRANTED)
        self.assertEqual(second.address, "127.0.0.1")
        self.assertEqual(second.port, peer.transport.getHost().port)
        peer.transport.loseConnection()
        await client.closed

    @async_test
    async def test_peer_from_another_address_is_refused_and_the_listener_closed(self):
        logs = LogCapture(self)
        server = await start_server(self)
        factory, made = collect_factory()
        result = await socks4_bind(proxy(server), "127.0.0.1", 21, factory)
        host, port = result.address
        intruder = await connect_from(host, port, "127.0.0.2")
        await self.assertFailure(result.connected, SOCKSRejected)
        await intruder.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "bind-wrong-peer")
        with self.assertRaises(Exception):
            await connect_from(host, port, "127.0.0.1")

    @async_test
    async def test_bind_times_out_and_closes_the_listener(self):
        logs = LogCapture(self)
        server = await start_server(self, bind_timeout=0.3)
        factory, made = collect_factory()
        result = await socks4_bind(proxy(server), "127.0.0.1", 21, factory)
        await self.assertFailure(result.connected, SOCKSRejected)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "bind-timeout")
        with self.assertRaises(Exception):
            await connect_from(*result.address, "127.0.0.1")

    @async_test
    async def test_any_source_bind_needs_the_operator_flag(self):
        server = await start_server(self)
        factory, made = collect_factory()
        await self.assertFailure(socks4_bind(proxy(server), "0.0.0.0", 21, factory), SOCKSRejected)
        server = await start_server(self, bind_any_source=True)
        result = await socks4_bind(proxy(server), "0.0.0.0", 21, factory)
        await connect_from(*result.address, "127.0.0.2")
        app = await result.connected
        app.transport.loseConnection()

    @async_test
    async def test_access_rules_see_the_bind_destination(self):
        logs = LogCapture(self)
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0 127.0.0.9 255.255.255.255 eq 21\n"
                                          "permit 127.0.0.0 255.0.0.0\n")
        factory, _ = collect_factory()
        await self.assertFailure(socks4_bind(proxy(server), "127.0.0.9", 21, factory), SOCKSRejected)
        [denied] = await logs.wait_for("denied")
        self.assertEqual((denied["rule_line"], denied["command"]), (1, "bind"))
        result = await socks4_bind(proxy(server), "127.0.0.9", 20, factory)
        self.assertEqual(result.address[0], "127.0.0.1")
        abandon(result)

    @async_test
    async def test_announced_address_is_never_the_wildcard(self):
        server = await start_server(self, bind_interface="0.0.0.0")
        factory, _ = collect_factory()
        result = await socks4_bind(proxy(server), "127.0.0.1", 21, factory)
        self.assertEqual(result.address[0], "127.0.0.1")
        abandon(result)

    @async_test
    async def test_route_file_picks_the_listening_address(self):
        server = await start_server(self)
        server.factory.routes = sockdroute.parse_routes(
            "127.0.0.5 127.0.0.0 255.255.255.0\n127.0.0.6 0.0.0.0 0.0.0.0\n")
        factory, _ = collect_factory()
        result = await socks4_bind(proxy(server), "127.0.0.1", 21, factory)
        self.assertEqual(result.address[0], "127.0.0.5")
        abandon(result)
        result = await socks4_bind(proxy(server), "127.1.0.1", 21, factory)
        self.assertEqual(result.address[0], "127.0.0.6")
        abandon(result)

    @async_test
    async def test_no_listener_or_descriptor_leaks_after_1000_binds(self):
        # A reset client ends its BIND at once; a FIN may be a half-close, so
        # those wait out the (short) bind timeout: both must leave nothing behind.
        # Up to ~250 sessions from 127.0.0.1 overlap here: lift the per-client cap.
        server = await start_server(self, bind_timeout=3, max_connections_per_client=100000)

        async def attempt(i):
            client = await connect_raw(support.port_of(server))
            client.transport.write(socks4.encode_request(socks4.BIND, 21, "127.0.0.1"))
            first = await client.reply()
            assert first.code == socks4.GRANTED, first
            if i % 10 == 0:  # some complete, with a peer from the wrong address
                peer = await connect_from(first.address, first.port, "127.0.0.2")
                await peer.closed
            client.transport.abortConnection() if i % 2 else client.transport.loseConnection()
            await client.closed

        await support.deferLater(0.1)
        before = open_fds()
        for batch in range(20):
            await defer.gatherResults([defer.ensureDeferred(attempt(batch * 50 + i)) for i in range(50)])
        for _ in range(750):  # the FIN-closed ones wait out the bind timeout
            if not server.factory.sessions:
                break
            await support.deferLater(0.02)
        self.assertEqual(server.factory.sessions, set())
        self.assertLessEqual(open_fds(), before + 2)


FTP_SERVER = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
authorizer = DummyAuthorizer()
authorizer.add_anonymous(sys.argv[1])
FTPHandler.authorizer = authorizer
server = FTPServer(("127.0.0.1", 0), FTPHandler)
print(server.address[1], flush=True)
server.serve_forever()
"""


class FTPControl(LineReceiver):
    """Just enough of an FTP client: send a command, await its final reply."""

    delimiter = b"\r\n"

    def connectionMade(self):
        self.replies = defer.DeferredQueue()
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            self.replies.put(line)

    def reply(self):
        return self.replies.get()

    def command(self, text):
        self.sendLine(text.encode())
        return self.reply()


class ActiveFTPTests(TestCase):
    try:
        import pyftpdlib  # noqa: F401
    except ImportError:
        skip = "needs pyftpdlib (the test extra)"

    @async_test
    async def test_active_mode_transfer_through_connect_and_bind(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        with open(os.path.join(folder, "data.bin"), "wb") as f:
            f.write(payload)

        started = defer.Deferred()
        ended = defer.Deferred()

        class FTPProcess(protocol.ProcessProtocol):
            out = b""
            err = b""

            def outReceived(self, data):
                self.out += data
                if b"\n" in self.out and not started.called:
                    started.callback(int(self.out.split(b"\n")[0]))

            def errReceived(self, data):
                self.err += data

            def processEnded(self, reason):
                if not started.called:
                    started.errback(RuntimeError(f"FTP server died: {self.err.decode()}"))
                ended.callback(None)

        ftp_proc = FTPProcess()
        reactor.spawnProcess(ftp_proc, sys.executable, [sys.executable, "-c", FTP_SERVER, folder],
                             env=os.environ.copy())

        async def stop_ftp():
            ftp_proc.transport.signalProcess("KILL")
            await ended
        self.addCleanup(lambda: defer.ensureDeferred(stop_ftp()))
        ftp_port = await started

        logs = LogCapture(self)
        server = await start_server(self)
        control = await SOCKS4ClientEndpoint(proxy(server), "127.0.0.1", ftp_port, user="alice").connect(
            protocol.Factory.forProtocol(FTPControl))
        greeting = await control.reply()
        self.assertTrue(greeting.startswith(b"220"), greeting)
        self.assertTrue((await control.command("USER anonymous")).startswith(b"331"))
        self.assertTrue((await control.command("PASS guest@")).startswith(b"230"))
        self.assertTrue((await control.command("TYPE I")).startswith(b"200"))

        factory, made = collect_factory()
        bind = await socks4_bind(proxy(server), "127.0.0.1", ftp_port, factory, user="alice")
        host, port = bind.address
        port_arg = ",".join(host.split(".") + [str(port >> 8), str(port & 0xFF)])
        self.assertTrue((await control.command(f"PORT {port_arg}")).startswith(b"200"), control.lines)
        retr = control.command("RETR data.bin")
        data = await bind.connected
        await data.closed
        self.assertTrue((await retr)[:3] in (b"125", b"150"), control.lines)
        self.assertTrue((await control.reply()).startswith(b"226"), control.lines)
        self.assertEqual(hashlib.sha256(bytes(data.received)).hexdigest(),
                         hashlib.sha256(payload).hexdigest())
        await control.command("QUIT")
        events = await logs.wait_for("session-closed", 2)
        bind_events = [e for e in events if e["command"] == "bind"]
        self.assertEqual(bind_events[0]["bytes_down"], len(payload))
