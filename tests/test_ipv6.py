"""IPv6 end to end on ::1: SOCKS5 CONNECT and BIND to IPv6 destinations (by
address and by a name with only an IPv6 address), a tcp6 listener with IPv6
clients, IPv6 prefixes and the ``cmd=`` field in sockd.conf, and curl
through it all."""

import os
import shutil
import socket
import threading

from twisted.internet import defer, threads, utils
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from sockssuite import names
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


class Names:
    """A resolver of made-up names for the server, IPv4 and IPv6 apart
    (never the system's DNS): ``ipv4`` and ``ipv6`` map a name to its
    address; the names asked for are kept."""

    def __init__(self, ipv4=None, ipv6=None):
        self.ipv4, self.ipv6 = ipv4 or {}, ipv6 or {}
        self.asked4, self.asked6 = [], []

    def getHostByName(self, name, timeout=()):
        self.asked4.append(name)
        if name in self.ipv4:
            return defer.succeed(self.ipv4[name])
        return defer.fail(DNSLookupError(f"{name}: no A record"))

    def getIPv6HostByName(self, name):
        self.asked6.append(name)
        if name in self.ipv6:
            return defer.succeed(self.ipv6[name])
        return defer.fail(names.ResolutionError(f"{name} has no IPv6 address"))


class IPv6NameTests(TestCase):
    """SOCKS5 names with only IPv6 addresses are reached over IPv6; IPv4
    comes first; SOCKS4a stays IPv4."""

    @async_test
    async def test_socks5_name_with_only_an_ipv6_address_is_reached_over_ipv6(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo, interface="::1")
        server = await start_server(self, BUILT_IN)
        server.factory.resolver = resolver = Names(ipv6={"six.test": "::1"})
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "six.test", echo.getHost().port)
        self.assertEqual((reply.code, reply.atyp, reply.host), (wire.SUCCEEDED, wire.ATYP_IPV6, "::1"))
        await echoed(self, client)
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["requested"], event["resolved"], event["outcome"]), ("six.test", "::1", "closed"))
        self.assertEqual((resolver.asked4, resolver.asked6), (["six.test"], ["six.test"]))

    @async_test
    async def test_ipv6_address_of_a_name_is_checked_by_ipv6_lines(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo, interface="::1")
        # IPv4 destinations only: no line matches an IPv6 one.
        server = await start_server(self, "permit 127.0.0.0 255.0.0.0 127.0.0.0 255.0.0.0\n")
        server.factory.resolver = Names(ipv6={"six.test": "::1"})
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "six.test", echo.getHost().port)
        self.assertEqual(reply.code, wire.NOT_ALLOWED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["resolved"], event["outcome"]), ("::1", "denied"))

    @async_test
    async def test_ipv4_mapped_destinations_meet_the_rules_for_their_ipv4_address(self):
        # By name (an AAAA record can say ::ffff:a.b.c.d) and by address: the
        # rules and the "this host" check see the IPv4 address, so neither
        # ::ffff:0.0.0.0 nor ::ffff:127.0.0.1 gets past a deny line for 127/8.
        logs = LogCapture(self)
        echo = await listen(self, Echo)
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0\n"
                                          "permit 127.0.0.0 255.0.0.0\n")
        server.factory.resolver = Names(ipv6={"zero.test": "::ffff:0.0.0.0", "home.test": "::ffff:127.0.0.1"})
        port = echo.getHost().port
        for host in ("zero.test", "home.test", "::ffff:0.0.0.0", "::ffff:127.0.0.1"):
            client, reply = await socks5(support.port_of(server), wire.CONNECT, host, port)
            self.assertEqual(reply.code, wire.NOT_ALLOWED, host)
        events = await logs.wait_for("session-closed", count=4)
        self.assertEqual([(e["resolved"], e["outcome"]) for e in events],
                         [("0.0.0.0", "denied"), ("127.0.0.1", "denied")] * 2)

    @async_test
    async def test_socks5_name_with_an_ipv4_address_goes_there_without_an_ipv6_lookup(self):
        echo = await listen(self, Echo)
        server = await start_server(self, BUILT_IN)
        server.factory.resolver = resolver = Names(ipv4={"both.test": "127.0.0.1"},
                                                   ipv6={"both.test": "::1"})
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "both.test", echo.getHost().port)
        self.assertEqual((reply.code, reply.atyp), (wire.SUCCEEDED, wire.ATYP_IPV4))
        await echoed(self, client)
        client.transport.loseConnection()
        self.assertEqual(resolver.asked6, [])

    @async_test
    async def test_socks5_name_with_neither_gets_host_unreachable_with_both_answers(self):
        logs = LogCapture(self)
        server = await start_server(self, BUILT_IN)
        server.factory.resolver = Names()
        client, reply = await socks5(support.port_of(server), wire.CONNECT, "nowhere.test", 80)
        self.assertEqual(reply.code, wire.HOST_UNREACHABLE)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "resolve-failed")
        self.assertIn("no A record", event["detail"])
        self.assertIn("has no IPv6 address", event["detail"])

    @async_test
    async def test_socks4a_name_is_resolved_to_ipv4_only(self):
        logs = LogCapture(self)
        server = await start_server(self, BUILT_IN)
        server.factory.resolver = resolver = Names(ipv6={"six.test": "::1"})
        client, reply = await socks_connect(support.port_of(server), "six.test", 80, socks4a=True)
        self.assertEqual(reply.code, socks4.REJECTED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "resolve-failed")
        self.assertEqual(resolver.asked6, [])

    @async_test
    async def test_udp_datagram_to_a_name_with_only_an_ipv6_address(self):
        from .test_udp_associate_server import exchange, udp_echo
        from sockssuite.wire import udp as udpwire
        echo = udp_echo(self, "::1")
        server = await start_server(self, BUILT_IN)
        server.factory.resolver = Names(ipv6={"six.test": "::1"})
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual(reply.code, wire.SUCCEEDED)
        answers = await threads.deferToThread(exchange, socket.AF_INET, (reply.host, reply.port),
                                              [udpwire.encode_udp("six.test", echo, b"by name")])
        self.assertEqual([(a.host, a.port, a.data) for a in answers], [("::1", echo, b"echo:by name")])
        client.transport.loseConnection()


class ResolveAddressTests(TestCase):
    """:func:`sockssuite.names.resolve_address` and :class:`SystemResolver`,
    on a fake clock and fake look-ups."""

    def test_ipv4_and_ipv6_lookups_share_one_timeout(self):
        clock = Clock()

        class Slow:
            def __init__(self):
                self.v4, self.v6 = defer.Deferred(), defer.Deferred()

            def getHostByName(self, name, timeout=()):
                return self.v4

            def getIPv6HostByName(self, name):
                return self.v6

        slow = Slow()
        d = names.resolve_address(slow, "slow.test", 15, clock)
        clock.advance(10)
        slow.v4.errback(DNSLookupError("slow.test"))  # after 10 s: 5 s are left for IPv6
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        failure = self.failureResultOf(d, names.ResolutionTimeout)
        self.assertEqual(str(failure.value), "cannot resolve slow.test: DNS lookup failed: slow.test.; no IPv6 answer in 5 s")

    def test_no_ipv6_lookup_after_the_ipv4_one_timed_out(self):
        clock = Clock()
        resolver = Names()
        resolver.getHostByName = lambda name, timeout=(): defer.Deferred()
        d = names.resolve_address(resolver, "slow.test", 15, clock)
        clock.advance(15)
        failure = self.failureResultOf(d, names.ResolutionTimeout)
        self.assertEqual(str(failure.value), "cannot resolve slow.test in 15 s")
        self.assertEqual(resolver.asked6, [])

    def test_numeric_addresses_are_not_looked_up_and_come_out_canonical(self):
        resolver = Names()
        for address, canonical in [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("0:0::1", "::1"),
                                   ("::ffff:127.0.0.1", "127.0.0.1"), ("::ffff:0:0", "0.0.0.0")]:
            d = names.resolve_address(resolver, address, 15, Clock())
            self.assertEqual(self.successResultOf(d), canonical)
        self.assertEqual((resolver.asked4, resolver.asked6), ([], []))

    def test_ipv4_mapped_ipv6_answer_is_its_ipv4_address(self):
        resolver = Names(ipv6={"mapped.test": "::ffff:0.0.0.0", "six.test": "2001:DB8:0::7"})
        d = names.resolve_address(resolver, "mapped.test", 15, Clock())
        self.assertEqual(self.successResultOf(d), "0.0.0.0")
        d = names.resolve_address(resolver, "six.test", 15, Clock())
        self.assertEqual(self.successResultOf(d), "2001:db8::7")

    def test_resolver_without_ipv6_lookups_gives_ipv4_only(self):
        class OnlyV4:
            def getHostByName(self, name, timeout=()):
                return defer.fail(DNSLookupError(name))

        failure = self.failureResultOf(names.resolve_address(OnlyV4(), "six.test", 15, Clock()))
        self.assertTrue(failure.check(names.ResolutionError))

    @async_test
    async def test_system_resolver_asks_getaddrinfo_for_ipv6_and_gives_the_first(self):
        from twisted.internet import reactor
        asked = []

        def getaddrinfo(host, port, family=0, type=0, *rest):
            asked.append((host, port, family, type))
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::7", 0, 0, 0)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::8", 0, 0, 0))]

        address = await names.SystemResolver(reactor, getaddrinfo).getIPv6HostByName("six.test")
        self.assertEqual(address, "2001:db8::7")
        self.assertEqual(asked, [("six.test", None, socket.AF_INET6, socket.SOCK_STREAM)])

    @async_test
    async def test_system_resolver_without_an_ipv6_answer_fails(self):
        from twisted.internet import reactor

        def getaddrinfo(host, *args):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        with self.assertRaises(names.ResolutionError) as caught:
            await names.SystemResolver(reactor, getaddrinfo).getIPv6HostByName("four.test")
        self.assertEqual(str(caught.exception), "four.test has no IPv6 address (Name or service not known)")

    @async_test
    async def test_system_resolver_over_the_real_getaddrinfo(self):
        # A numeric address: getaddrinfo answers it without asking any DNS.
        from twisted.internet import reactor
        self.assertEqual(await names.SystemResolver(reactor).getIPv6HostByName("::1"), "::1")

    @async_test
    async def test_a_late_ipv6_answer_after_the_timeout_is_dropped(self):
        from twisted.internet import reactor
        release = threading.Event()
        self.addCleanup(release.set)

        def getaddrinfo(host, *args):
            release.wait(5)
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))]

        resolver = names.SystemResolver(reactor, getaddrinfo)
        resolver.getHostByName = lambda name, timeout=(): defer.fail(DNSLookupError(name))
        with self.assertRaises(names.ResolutionTimeout):
            await names.resolve_address(resolver, "late.test", 0.2, reactor)
        release.set()
        await support.deferLater(0.1)  # the answer comes in and is dropped without an error

    def test_a_resolver_installed_on_the_reactor_gets_the_ipv4_lookups(self):
        asked = []

        class Installed:  # as reactor.installResolver(twisted.names' resolver) leaves it
            nameResolver = object()

            class resolver:
                @staticmethod
                def getHostByName(name, timeout=()):
                    asked.append(name)
                    return defer.succeed("127.0.0.7")

        d = names.SystemResolver(Installed(), limiter=names.LookupLimiter(Installed())).getHostByName("x.test")
        self.assertEqual((self.successResultOf(d), asked), ("127.0.0.7", ["x.test"]))

    def test_the_server_resolves_with_the_system_resolver_by_default(self):
        from sockssuite.access import DEFAULT_POLICY
        from sockssuite.server import SOCKS4ServerFactory
        factory = SOCKS4ServerFactory(DEFAULT_POLICY, reactor=Clock())
        self.assertIsInstance(factory.resolver, names.SystemResolver)


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


class LookupLimiterTests(TestCase):
    """names.LookupLimiter: name look-ups in the thread pool, bounded in all
    and for each client, counted until their thread returns."""

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.release = threading.Event()
        self.addCleanup(self.release.set)
        self.lock = threading.Lock()
        self.started = []

    def blocking(self, tag):
        with self.lock:
            self.started.append(tag)
        self.release.wait(10)
        return tag

    async def settle(self):
        await support.deferLater(0.2)

    @async_test
    async def test_bounded_in_all_and_for_each_owner(self):
        limiter = names.LookupLimiter(self.reactor, max_running=3, per_owner=2, max_waiting=4)
        results = [limiter.run("a", self.blocking, f"a{i}") for i in range(4)]
        results += [limiter.run("b", self.blocking, f"b{i}") for i in range(2)]
        results += [limiter.run("c", self.blocking, "c0")]
        await self.settle()
        self.assertEqual(sorted(self.started), ["a0", "a1", "b0"])  # 3 at once, 2 for a
        self.release.set()
        self.assertEqual([await d for d in results], ["a0", "a1", "a2", "a3", "b0", "b1", "c0"])
        self.assertEqual((limiter.running, limiter.waiting, limiter.waiting_total), (0, {}, 0))

    @async_test
    async def test_a_cancelled_lookup_keeps_its_slot_until_its_thread_returns(self):
        limiter = names.LookupLimiter(self.reactor, max_running=1, per_owner=1)
        first = limiter.run("a", self.blocking, "first")
        second = limiter.run("a", self.blocking, "second")
        third = limiter.run("a", self.blocking, "third")
        await self.settle()
        first.cancel()  # the caller gives up: the thread goes on
        second.cancel()  # given up while waiting: never runs
        await self.settle()
        self.assertEqual(self.started, ["first"])
        self.assertEqual(limiter.running, 1)
        self.release.set()
        self.assertEqual(await third, "third")
        self.assertEqual(self.started, ["first", "third"])
        self.failureResultOf(first, defer.CancelledError)
        self.failureResultOf(second, defer.CancelledError)

    @async_test
    async def test_too_many_waiting_are_refused_at_once(self):
        limiter = names.LookupLimiter(self.reactor, max_running=1, per_owner=1, max_waiting=2,
                                      max_waiting_total=3)
        running = limiter.run("a", self.blocking, "a0")
        waiting = [limiter.run("a", self.blocking, "a1"), limiter.run("a", self.blocking, "a2")]
        refused = limiter.run("a", self.blocking, "a3")
        self.assertIsInstance(self.failureResultOf(refused).value, names.ResolutionError)
        waiting.append(limiter.run("b", self.blocking, "b0"))
        refused = limiter.run("c", self.blocking, "c0")  # 3 wait in all
        self.assertIn("over 3 name look-ups waiting", str(self.failureResultOf(refused).value))
        self.release.set()
        await running
        for d in waiting:
            await d

    @async_test
    async def test_look_ups_given_up_while_waiting_leave_the_queue(self):
        # Abandoned look-ups must not fill the waiting caps: a client could
        # otherwise keep them full without a connection open.
        limiter = names.LookupLimiter(self.reactor, max_running=1, per_owner=1, max_waiting=2,
                                      max_waiting_total=2)
        running = limiter.run("a", self.blocking, "a0")
        given_up = [limiter.run("a", self.blocking, "a1"), limiter.run("a", self.blocking, "a2")]
        for d in given_up:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((limiter.waiting, limiter.waiting_total), ({}, 0))
        later = [limiter.run("a", self.blocking, "a3"), limiter.run("b", self.blocking, "b0")]
        self.release.set()
        self.assertEqual([await running] + [await d for d in later], ["a0", "a3", "b0"])
        self.assertEqual(sorted(self.started), ["a0", "a3", "b0"])  # a1 and a2 never ran

    @async_test
    async def test_a_look_up_started_on_an_answer_waits_its_turn(self):
        # IPv6 after IPv4 (resolve_address) starts from the first answer's
        # callback: it must queue behind who waited already, not take the slot.
        limiter = names.LookupLimiter(self.reactor, max_running=1, per_owner=1)
        order = []

        def quick(tag):
            order.append(tag)
            return tag

        follow_up = []
        first = limiter.run("a", quick, "a1")
        first.addCallback(lambda _: follow_up.append(limiter.run("a", quick, "a2 (follow-up)")))
        waited = limiter.run("b", quick, "b1 (waited first)")
        await first
        await waited
        await follow_up[0]
        self.assertEqual(order, ["a1", "b1 (waited first)", "a2 (follow-up)"])

    @async_test
    async def test_the_servers_own_look_ups_are_bound_by_the_totals_only(self):
        # A config file's host names (owner None): 40 relay lines' peers are
        # not refused as one client's 2 + 32.
        limiter = names.LookupLimiter(self.reactor, max_running=3, per_owner=1, max_waiting=2)
        results = [limiter.run(None, self.blocking, i) for i in range(10)]
        await self.settle()
        self.assertEqual(len(self.started), 3)
        self.release.set()
        self.assertEqual([await d for d in results], list(range(10)))

    def test_one_limiter_a_reactor(self):
        clock, other = Clock(), Clock()
        self.assertIs(names.limiter_for(clock), names.limiter_for(clock))
        self.assertIsNot(names.limiter_for(clock), names.limiter_for(other))

        class Slotted:
            __slots__ = ()

        self.assertIsInstance(names.limiter_for(Slotted()), names.LookupLimiter)

    @async_test
    async def test_one_client_with_slow_names_does_not_starve_the_others(self):
        # A client asks for names whose look-ups hang (a black-holed name
        # server), far more of them than it may run at once; another
        # client's look-up of a name that answers at once still does.
        from twisted.internet import reactor
        release = self.release

        def getaddrinfo(host, port, family=0, *rest):
            if host.endswith(".slow.test"):
                release.wait(10)
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

        echo = await listen(self, Echo)
        server = await start_server(self, "permit 127.0.0.0 255.0.0.0\n", resolve_timeout=1)
        limiter = names.LookupLimiter(reactor)
        server.factory.resolver = names.SystemResolver(reactor, getaddrinfo, limiter)
        port = support.port_of(server)
        attackers = []
        for i in range(20):
            client = await connect_raw(port, bind="127.0.0.1")
            client.transport.write(socks4.encode_request(socks4.CONNECT, 80, hostname=f"n{i}.slow.test"))
            attackers.append(client)
        await support.deferLater(0.3)
        self.assertEqual(limiter.running_for.get("127.0.0.1"), names.LOOKUPS_PER_CLIENT)
        for _ in range(2):  # while the attacker's look-ups hang, and after its sessions timed out
            victim = await connect_raw(port, bind="127.0.0.2")
            victim.transport.write(socks4.encode_request(socks4.CONNECT, echo.getHost().port,
                                                         hostname="fast.test"))
            self.assertEqual((await victim.reply()).code, socks4.GRANTED)
            victim.transport.loseConnection()
            await support.deferLater(1.2)
        release.set()
        for client in attackers:
            client.transport.loseConnection()
