"""IPv6 end to end on ::1: SOCKS5 CONNECT and BIND to IPv6 destinations, a
tcp6 listener with IPv6 clients, IPv6 prefixes and the ``cmd=`` field in
sockd.conf, and curl through it all."""

import os
import shutil

from twisted.internet import utils
from twisted.trial.unittest import SkipTest, TestCase

from sockssuite.access import BUILT_IN_RULES
from sockssuite.wire import socks4
from sockssuite.wire import socks5 as wire

from . import support
from .support import Echo, LogCapture, connect_raw, listen, socks_connect, start_server
from .test_server import async_test

V6_LISTENER = r"tcp6:0:interface=\:\:1"
BUILT_IN = BUILT_IN_RULES


async def socks5(port, command, host, dport, proxy_host="127.0.0.1"):
    """Greet (no auth) and send one request; the client and the first reply
    (None if the server closed without one)."""
    client = await connect_raw(port, proxy_host)
    client.transport.write(wire.encode_greeting(b"\x00") + wire.encode_request(command, host, dport))
    await client.wait_bytes(2 + 4)
    if bytes(client.received[:2]) != b"\x05\x00":
        raise AssertionError(f"method reply {bytes(client.received[:2])!r}")
    del client.received[:2]
    return client, await read_reply(client)


async def read_reply(client):
    parser = wire.ReplyParser()
    await client.wait_bytes(4)
    reply = parser.feed(bytes(client.received))
    while reply is None and not client.read_eof:
        await client.wait_bytes(len(client.received) + 1)
        reply = parser.feed(bytes(client.received))
    if reply is None:
        raise AssertionError(f"no complete reply in {bytes(client.received)!r}")
    del client.received[:len(client.received) - len(parser.leftover)]
    return reply


async def echoed(testcase, client, data=b"ping over IPv6"):
    client.transport.write(data)
    got = await client.wait_bytes(len(data))
    testcase.assertEqual(bytes(got[:len(data)]), data)


class IPv6Tests(TestCase):
    @async_test
    async def test_socks5_connect_to_an_ipv6_destination(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo, interface="::1")
        server = await start_server(self, BUILT_IN)
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "::1", echo.getHost().port)
        self.assertEqual((reply.code, reply.atyp, reply.host), (wire.SUCCEEDED, wire.ATYP_IPV6, "::1"))
        await echoed(self, client)
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["requested"], event["outcome"]), ("::1", "closed"))

    @async_test
    async def test_tcp6_listener_serves_ipv6_clients_under_the_built_in_rules(self):
        echo4 = await listen(self, Echo)
        echo6 = await listen(self, Echo, interface="::1")
        server = await start_server(self, BUILT_IN, listen_on=V6_LISTENER)
        port = support.port_of(server)
        self.assertEqual(server.addresses[0].host, "::1")
        for host, echo in (("127.0.0.1", echo4), ("::1", echo6)):
            client, reply = await socks5(port, wire.CONNECT, host, echo.getHost().port, proxy_host="::1")
            self.assertEqual(reply.code, wire.SUCCEEDED, host)
            await echoed(self, client)
            client.transport.loseConnection()
        # SOCKS4 from an IPv6 client to an IPv4 destination works too.
        client = await connect_raw(port, "::1")
        client.transport.write(socks4.encode_request(socks4.CONNECT, echo4.getHost().port, "127.0.0.1"))
        self.assertEqual((await client.reply()).code, socks4.GRANTED)
        del client.received[:8]
        await echoed(self, client)
        client.transport.loseConnection()

    @async_test
    async def test_ipv4_lines_do_not_admit_ipv6_clients(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo)
        server = await start_server(self, "permit 127.0.0.0 255.0.0.0\n", listen_on=V6_LISTENER)
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "127.0.0.1", echo.getHost().port,
                                     proxy_host="::1")
        self.assertEqual(reply.code, wire.NOT_ALLOWED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["outcome"], event["detail"]), ("denied", "no line matched"))
        self.assertRegex(event["client"], r"^\[::1\]:\d+$")

    @async_test
    async def test_ipv6_destination_prefixes_and_ports(self):
        allowed = await listen(self, Echo, interface="::1")
        blocked = await listen(self, Echo, interface="::1")
        server = await start_server(
            self, f"deny 127.0.0.0/8 ::1/128 eq {blocked.getHost().port}\n"
                  "permit 127.0.0.0/8 2001:db8::/32\n"
                  "permit 127.0.0.0/8 ::/0 gt 1023\n")
        port = support.port_of(server)
        client, reply = await socks5(port, wire.CONNECT, "::1", blocked.getHost().port)
        self.assertEqual(reply.code, wire.NOT_ALLOWED)
        client, reply = await socks5(port, wire.CONNECT, "::1", allowed.getHost().port)
        self.assertEqual(reply.code, wire.SUCCEEDED)
        await echoed(self, client)
        client.transport.loseConnection()

    @async_test
    async def test_cmd_field_restricts_the_command(self):
        echo = await listen(self, Echo)
        server = await start_server(self, "permit cmd=bind 127.0.0.0/8\n")
        port = support.port_of(server)
        client, reply = await socks_connect(port, "127.0.0.1", echo.getHost().port)
        self.assertEqual(reply.code, socks4.REJECTED)
        client = await connect_raw(port)
        client.transport.write(socks4.encode_request(socks4.BIND, 21, "127.0.0.1"))
        self.assertEqual((await client.reply()).code, socks4.GRANTED)
        client.transport.loseConnection()

    @async_test
    async def test_socks5_bind_on_ipv6(self):
        from twisted.internet import endpoints, reactor
        server = await start_server(self, BUILT_IN)
        client, first = await socks5(support.port_of(server), wire.BIND, "::1", 0)
        self.assertEqual((first.code, first.host), (wire.SUCCEEDED, "::1"))
        peer = support.RawClient()
        await endpoints.connectProtocol(endpoints.TCP6ClientEndpoint(reactor, "::1", first.port), peer)
        second = await read_reply(client)
        self.assertEqual((second.code, second.host, second.port), (wire.SUCCEEDED, "::1", peer.transport.getHost().port))
        peer.transport.write(b"inbound over IPv6")
        got = await client.wait_bytes(17)
        self.assertEqual(bytes(got), b"inbound over IPv6")
        client.transport.write(b"and back")
        self.assertEqual(bytes(await peer.wait_bytes(8)), b"and back")
        client.transport.loseConnection()
        peer.transport.loseConnection()


class CurlIPv6Tests(TestCase):
    def setUp(self):
        if not shutil.which("curl"):
            raise SkipTest("needs curl (.ci/run installs it)")

    @async_test
    async def test_curl_to_an_ipv6_site_through_an_ipv6_proxy(self):
        from twisted.web import resource, server as web_server, static
        root = resource.Resource()
        root.putChild(b"six", static.Data(b"served on ::1", "text/plain"))
        web = await listen(self, web_server.Site(root), interface="::1")
        proxy = await start_server(self, BUILT_IN, listen_on=V6_LISTENER)
        for scheme in ("socks5", "socks5h"):
            out, err, code = await utils.getProcessOutputAndValue(
                shutil.which("curl"), ["-s", "-x", f"{scheme}://[::1]:{support.port_of(proxy)}",
                                       f"http://[::1]:{web.getHost().port}/six"], env=os.environ.copy())
            self.assertEqual((code, out), (0, b"served on ::1"), scheme)
