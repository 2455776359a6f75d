"""RoutedEndpoint: socks.conf applied by a Twisted client, over loopback through
real sockssuite servers, plus Clock-driven timeout and failure-memory checks.

127.0.0.1 always goes direct (socks.conf semantics), so destinations that
must go through a proxy listen on 127.0.0.2.
"""

import os
import shutil
import tempfile

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from sockssuite.access import BUILT_IN_RULES
from sockssuite import routing
from sockssuite.client import (NoSOCKSServerReachable, RouteDenied, RoutedEndpoint, SOCKS5NotAllowed,
                               SOCKSAuthenticationFailed, SOCKSIdentMismatch, SOCKSNoAcceptableMethod,
                               SOCKSRejected, shared_failures)
from sockssuite.commands import CommandRunner
from sockssuite.wire import socks4
from sockssuite.wire import socks5 as wire5

from . import support
from .support import Echo, LogCapture, RawClient, listen, start_server
from .test_server import async_test
from .test_socks5 import password_file

OTHER_LOOPBACK = "127.0.0.2"


def routes(text):
    return routing.parse_socks_conf(text, "socks.conf")


class Silent(protocol.Protocol):
    """Accepts and never says a word: a hung SOCKS server."""


class Counting(protocol.Factory):
    def __init__(self, proto=Silent):
        self.connections = []
        self.proto = proto

    def buildProtocol(self, addr):
        p = self.proto()
        p.factory = self
        self.connections.append(p)
        return p


async def closed_port(testcase):
    """A loopback port nobody listens on (connections are refused)."""
    port = await listen(testcase, Echo)
    number = port.getHost().port
    await port.stopListening()
    return number


@implementer(IHostnameResolver)
class FixedResolver:
    """Resolves every name in ``table`` to its addresses, in that order."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        for address in self.table.get(hostName, []):
            receiver.addressResolved(IPv4Address("TCP", address, portNumber))
        receiver.resolutionComplete()
        return None


class RoutedTestCase(TestCase):
    async def echo_on_other_loopback(self):
        return await listen(self, Echo, interface=OTHER_LOOPBACK)

    def endpoint(self, text, host, port, **kwargs):
        kwargs.setdefault("failures", routing.RecentFailures(reactor))
        kwargs.setdefault("user", "alice")
        kwargs.setdefault("timeout", 5.0)
        return RoutedEndpoint(reactor, routes(text) if isinstance(text, str) else text, host, port, **kwargs)

    async def round_trip(self, endpoint, data=b"ping"):
        client = await endpoint.connect(protocol.Factory.forProtocol(RawClient))
        client.transport.write(data)
        got = await client.wait_bytes(len(data))
        client.transport.loseConnection()
        await client.closed
        return client, got


class SockdTests(RoutedTestCase):
    @async_test
    async def test_a_sockd_line_goes_through_its_server(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        ep = self.endpoint(f"sockd @=127.0.0.1:{support.port_of(server)} 0.0.0.0 0.0.0.0\n",
                           OTHER_LOOPBACK, echo.getHost().port)
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().port, support.port_of(server))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "alice")
        self.assertEqual(ep.decision.lineno, 1)

    @async_test
    async def test_failover_when_the_first_server_refuses_the_connection(self):
        server = await start_server(self)
        dead = await closed_port(self)
        echo = await self.echo_on_other_loopback()
        ep = self.endpoint(f"sockd @=127.0.0.1:{dead},127.0.0.1:{support.port_of(server)} "
                           f"{OTHER_LOOPBACK} 255.255.255.255\n", OTHER_LOOPBACK, echo.getHost().port)
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().port, support.port_of(server))

    @async_test
    async def test_failover_when_the_first_server_accepts_but_never_answers(self):
        hung = Counting()
        hung_port = await listen(self, hung)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        failures = routing.RecentFailures(reactor)
        text = (f"sockd @=127.0.0.1:{hung_port.getHost().port},127.0.0.1:{support.port_of(server)} "
                f"0.0.0.0 0.0.0.0\n")
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, timeout=0.3, failures=failures)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(len(hung.connections), 1)
        self.assertTrue(failures.recently_failed(("address", "127.0.0.1", hung_port.getHost().port)))
        # The hung server was given up on (its connection closed) ...
        for _ in range(100):
            if not hung.connections[0].transport.connected:
                break
            await support.deferLater(0.01)
        self.assertFalse(hung.connections[0].transport.connected)
        # ... and the next connection tries it last: no second timeout.
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, timeout=0.3, failures=failures)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(len(hung.connections), 1)

    @async_test
    async def test_the_shared_memory_remembers_across_endpoints(self):
        dead = await closed_port(self)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        text = f"sockd @=127.0.0.1:{dead},127.0.0.1:{support.port_of(server)} 0.0.0.0 0.0.0.0\n"
        memory = shared_failures(reactor)
        self.addCleanup(memory.succeeded, ("address", "127.0.0.1", dead))
        self.addCleanup(memory.succeeded, ("server", "127.0.0.1", dead))
        ep = RoutedEndpoint(reactor, routes(text), OTHER_LOOPBACK, echo.getHost().port, user="x")
        self.assertIs(ep.failures, memory)
        await self.round_trip(ep)
        self.assertTrue(memory.recently_failed(("server", "127.0.0.1", dead)))

    @async_test
    async def test_a_socks_rejection_is_final(self):
        refusing = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        second = Counting()
        second_port = await listen(self, second)
        ep = self.endpoint(f"sockd @=127.0.0.1:{support.port_of(refusing)},"
                           f"127.0.0.1:{second_port.getHost().port} 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 7)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSRejected)
        self.assertEqual(second.connections, [])

    @async_test
    async def test_every_server_down_fails_naming_each_attempt(self):
        dead1 = await closed_port(self)
        dead2 = await closed_port(self)
        ep = self.endpoint(f"\nsockd @=127.0.0.1:{dead1},127.0.0.1:{dead2} 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 80)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), NoSOCKSServerReachable)
        self.assertIsInstance(e, error.ConnectError)
        self.assertEqual([server for server, _ in e.attempts], [f"127.0.0.1:{dead1}", f"127.0.0.1:{dead2}"])
        self.assertIn("refused", str(e))
        self.assertIn("(line 2)", str(e))

    @async_test
    async def test_each_address_of_a_server_name_is_tried_in_turn(self):
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        resolver = FixedResolver({"proxies.test": ["127.0.0.3", "127.0.0.1"]})
        ep = self.endpoint(f"sockd @=proxies.test:{support.port_of(server)} 0.0.0.0 0.0.0.0\n",
                           OTHER_LOOPBACK, echo.getHost().port, resolver=resolver)
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().host, "127.0.0.1")

    @async_test
    async def test_a_server_name_that_does_not_resolve_is_skipped(self):
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        resolver = FixedResolver({})
        ep = self.endpoint(f"sockd @=nowhere.test,127.0.0.1:{support.port_of(server)} 0.0.0.0 0.0.0.0\n",
                           OTHER_LOOPBACK, echo.getHost().port, resolver=resolver)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertIn("nowhere.test", resolver.asked)

    @async_test
    async def test_the_default_server_serves_lines_without_a_list(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        ep = self.endpoint("sockd 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, echo.getHost().port,
                           default_server=f"127.0.0.1:{support.port_of(server)}")
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        await logs.wait_for("session-closed")

    def test_a_malformed_default_server_is_refused_early(self):
        self.assertRaises(ValueError, self.endpoint, "sockd 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 80,
                          default_server="host:99999")

    @async_test
    async def test_names_go_as_socks4a(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        ep = self.endpoint(f"sockd @=127.0.0.1:{support.port_of(server)} 0.0.0.0 0.0.0.0\n",
                           "localhost", echo.getHost().port, resolve_locally=False)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "localhost")
        self.assertEqual(event["resolved"], "127.0.0.1")

    @async_test
    async def test_a_name_line_matches_the_name_asked_for(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await listen(self, Echo)
        text = (f"sockd @=127.0.0.1:{support.port_of(server)} localhost 255.255.255.255\n"
                "deny 0.0.0.0 0.0.0.0\n")
        ep = self.endpoint(text, "LOCALHOST", echo.getHost().port, resolve_locally=False)
        await self.round_trip(ep)
        self.assertEqual(ep.decision.lineno, 1)
        await logs.wait_for("session-closed")
        ep = self.endpoint(text, "localhost.localdomain", 80, resolve_locally=False)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)

    @async_test
    async def test_socks4a_off_sends_the_locally_resolved_address(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        resolver = FixedResolver({"other.test": [OTHER_LOOPBACK]})
        ep = self.endpoint(f"sockd @=127.0.0.1:{support.port_of(server)} 127.0.0.0 255.0.0.0\n",
                           "other.test", echo.getHost().port, socks4a=False, resolver=resolver)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], OTHER_LOOPBACK)

    @async_test
    async def test_the_user_is_matched_and_sent_as_userid(self):
        logs = LogCapture(self)
        server = await start_server(self)
        echo = await self.echo_on_other_loopback()
        text = f"sockd @=127.0.0.1:{support.port_of(server)} *=carol 0.0.0.0 0.0.0.0\n"
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, user="carol")
        await self.round_trip(ep)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "carol")
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, user="dave")
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        self.assertIsNone(e.lineno)

    @async_test
    async def test_cancelling_stops_the_walk(self):
        hung = Counting()
        hung_port = await listen(self, hung)
        other = Counting()
        other_port = await listen(self, other)
        ep = self.endpoint(f"sockd @=127.0.0.1:{hung_port.getHost().port},127.0.0.1:{other_port.getHost().port} "
                           "0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 80, timeout=5.0)
        d = ep.connect(protocol.Factory.forProtocol(RawClient))
        for _ in range(200):
            if hung.connections:
                break
            await support.deferLater(0.01)
        d.cancel()
        await self.assertFailure(d, defer.CancelledError)
        await support.deferLater(0.05)
        self.assertEqual(other.connections, [])


class SOCKS5Tests(RoutedTestCase):
    """Servers written socks5:// in socks.conf.  The servers here speak one
    version only (--socks-versions), so a request in the wrong version fails."""

    async def socks5_server(self, rules=BUILT_IN_RULES, **settings):
        settings.setdefault("passwords", password_file())
        settings.setdefault("require_auth", True)
        return await start_server(self, rules, socks_versions=(5,), **settings)

    @async_test
    async def test_a_socks5_entry_goes_through_socks5_with_the_credentials(self):
        logs = LogCapture(self)
        server = await self.socks5_server("permit *=alice 127.0.0.0 255.0.0.0\n")
        echo = await self.echo_on_other_loopback()
        text = f"sockd @=socks5://127.0.0.1:{support.port_of(server)} 0.0.0.0 0.0.0.0\n"
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, user="nobody",
                           socks5_username="alice", socks5_password="wonderland")
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().port, support.port_of(server))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "alice")
        # A password alone goes with the local user as the name.
        ep = self.endpoint(text, OTHER_LOOPBACK, echo.getHost().port, user="alice", socks5_password="wonderland")
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")

    def test_credentials_the_wire_cannot_carry_are_refused_early(self):
        self.assertRaises(ValueError, self.endpoint, "sockd 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 80,
                          socks5_username="x" * 256, socks5_password="p")
        self.assertRaises(ValueError, self.endpoint, "sockd 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 80,
                          socks5_username="alice")

    @async_test
    async def test_failover_from_a_dead_socks5_server_to_a_live_one(self):
        server = await self.socks5_server(require_auth=False)
        dead = await closed_port(self)
        echo = await self.echo_on_other_loopback()
        ep = self.endpoint(f"sockd @=socks5://127.0.0.1:{dead},socks5://127.0.0.1:{support.port_of(server)} "
                           "0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, echo.getHost().port)
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().port, support.port_of(server))

    @async_test
    async def test_a_server_that_does_not_speak_socks5_is_skipped(self):
        socks4_only = await start_server(self, socks_versions=(4,))
        port = support.port_of(socks4_only)
        echo = await self.echo_on_other_loopback()
        failures = routing.RecentFailures(reactor)
        ep = self.endpoint(f"sockd @=socks5://127.0.0.1:{port},127.0.0.1:{port} 0.0.0.0 0.0.0.0\n",
                           OTHER_LOOPBACK, echo.getHost().port, failures=failures)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")  # the same server, spoken to in SOCKS4 the second time

    @async_test
    async def test_an_authentication_failure_is_final(self):
        server = await self.socks5_server()
        second = Counting()
        second_port = await listen(self, second)
        text = (f"sockd @=socks5://127.0.0.1:{support.port_of(server)},socks5://127.0.0.1:{second_port.getHost().port} "
                "0.0.0.0 0.0.0.0\n")
        ep = self.endpoint(text, OTHER_LOOPBACK, 7, socks5_username="alice", socks5_password="hunter2")
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSAuthenticationFailed)
        ep = self.endpoint(text, OTHER_LOOPBACK, 7)
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKSNoAcceptableMethod)
        self.assertEqual(second.connections, [])

    @async_test
    async def test_a_socks5_refusal_is_final(self):
        refusing = await self.socks5_server("deny 0.0.0.0 0.0.0.0\n", require_auth=False)
        second = Counting()
        second_port = await listen(self, second)
        ep = self.endpoint(f"sockd @=socks5://127.0.0.1:{support.port_of(refusing)},"
                           f"socks5://127.0.0.1:{second_port.getHost().port} 0.0.0.0 0.0.0.0\n", OTHER_LOOPBACK, 7)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), SOCKS5NotAllowed)
        self.assertIsInstance(e, SOCKSRejected)
        self.assertEqual(second.connections, [])

    @async_test
    async def test_a_socks_conf_mixing_socks4_and_socks5_servers(self):
        v4 = await start_server(self, socks_versions=(4,))
        v5 = await self.socks5_server(require_auth=False)
        echo4 = await self.echo_on_other_loopback()
        echo6 = await listen(self, Echo, interface="::1")
        echo_here = await listen(self, Echo)
        text = (f"sockd @=socks5://127.0.0.1:{support.port_of(v5)} ::1/128\n"
                f"sockd @=127.0.0.1:{support.port_of(v4)} {OTHER_LOOPBACK} 255.255.255.255\n"
                f"sockd @=socks5://127.0.0.1:{support.port_of(v5)} 0.0.0.0 0.0.0.0\n")
        conf = routes(text)
        self.assertEqual([[s.version for s in rule.servers] for rule in conf.rules], [[5], [4], [5]])
        resolver = FixedResolver({})  # names do not resolve here: only line 3 matches them
        for host, port, line, server in [("::1", echo6.getHost().port, 1, v5),
                                         (OTHER_LOOPBACK, echo4.getHost().port, 2, v4),
                                         ("localhost", echo_here.getHost().port, 3, v5)]:
            ep = self.endpoint(conf, host, port, resolver=resolver)
            client, got = await self.round_trip(ep)
            self.assertEqual(got, b"ping")
            self.assertEqual(client.transport.getPeer().port, support.port_of(server), host)
            self.assertEqual(ep.decision.lineno, line, host)

    @async_test
    async def test_an_ipv6_destination_skips_the_socks4_servers_of_a_mixed_list(self):
        v4 = Counting()
        v4_port = await listen(self, v4)
        v5 = await self.socks5_server(require_auth=False)
        echo6 = await listen(self, Echo, interface="::1")
        ep = self.endpoint(f"sockd @=127.0.0.1:{v4_port.getHost().port},socks5://127.0.0.1:{support.port_of(v5)} "
                           "::/0\n", "::1", echo6.getHost().port)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(v4.connections, [])
        dead = await closed_port(self)
        ep = self.endpoint(f"sockd @=127.0.0.1:{v4_port.getHost().port},socks5://127.0.0.1:{dead} ::/0\n",
                           "::1", echo6.getHost().port)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), NoSOCKSServerReachable)
        self.assertEqual([reason for _, reason in e.attempts],
                         ["is SOCKS4, which cannot carry an IPv6 destination", "refused the connection"])
        self.assertEqual(e.attempts[1][0], f"socks5://127.0.0.1:{dead}")

    @async_test
    async def test_socks4a_off_sends_the_locally_resolved_address_to_socks5_too(self):
        logs = LogCapture(self)
        server = await self.socks5_server(require_auth=False)
        echo = await self.echo_on_other_loopback()
        resolver = FixedResolver({"other.test": [OTHER_LOOPBACK]})
        ep = self.endpoint(f"sockd @=socks5://127.0.0.1:{support.port_of(server)} 127.0.0.0 255.0.0.0\n",
                           "other.test", echo.getHost().port, socks4a=False, resolver=resolver)
        await self.round_trip(ep)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], OTHER_LOOPBACK)
        # Otherwise the name goes (the server resolves localhost to 127.0.0.1).
        echo_here = await listen(self, Echo)
        resolver = FixedResolver({"localhost": ["127.0.0.9"]})
        ep = self.endpoint(f"sockd @=socks5://127.0.0.1:{support.port_of(server)} 127.0.0.0 255.0.0.0\n",
                           "localhost", echo_here.getHost().port, resolver=resolver)
        await self.round_trip(ep)
        events = await logs.wait_for("session-closed", 2)
        self.assertEqual(events[1]["requested"], "localhost")


class DirectAndDenyTests(RoutedTestCase):
    @async_test
    async def test_a_direct_line_connects_without_a_proxy(self):
        echo = await self.echo_on_other_loopback()
        dead = await closed_port(self)
        ep = self.endpoint(f"direct {OTHER_LOOPBACK} 255.255.255.255\nsockd @=127.0.0.1:{dead} 0.0.0.0 0.0.0.0\n",
                           OTHER_LOOPBACK, echo.getHost().port)
        client, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")
        self.assertEqual(client.transport.getPeer().port, echo.getHost().port)

    @async_test
    async def test_no_file_means_direct(self):
        echo = await self.echo_on_other_loopback()
        ep = self.endpoint(None, OTHER_LOOPBACK, echo.getHost().port)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")

    @async_test
    async def test_127_0_0_1_goes_direct_even_when_every_line_denies(self):
        echo = await listen(self, Echo)
        ep = self.endpoint("deny 0.0.0.0 0.0.0.0\n", "127.0.0.1", echo.getHost().port)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")

    @async_test
    async def test_a_name_resolving_to_127_0_0_1_goes_direct(self):
        echo = await listen(self, Echo)
        ep = self.endpoint("deny 0.0.0.0 0.0.0.0\n", "localhost", echo.getHost().port)
        _, got = await self.round_trip(ep)
        self.assertEqual(got, b"ping")

    @async_test
    async def test_a_deny_line_fails_naming_the_line(self):
        ep = self.endpoint("# no\ndeny 127.0.0.0 255.0.0.0 eq 80\n", OTHER_LOOPBACK, 80)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        self.assertIsInstance(e, error.ConnectError)
        self.assertEqual(e.lineno, 2)
        self.assertEqual(str(e), f"socks.conf denies {OTHER_LOOPBACK}:80: line 2: deny 127.0.0.0 255.0.0.0 eq 80")

    @async_test
    async def test_an_ipv6_destination_cannot_go_through_socks4(self):
        ep = self.endpoint("sockd @=127.0.0.1:9 0.0.0.0 0.0.0.0\n", "::1", 80)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), ValueError)
        self.assertIn("IPv6", str(e))

    @async_test
    async def test_no_matching_line_is_a_denial(self):
        ep = self.endpoint("deny 127.0.0.0 255.0.0.0 eq 80\n", OTHER_LOOPBACK, 81)
        e = await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        self.assertIsNone(e.lineno)
        self.assertIn("no line of socks.conf matches", str(e))


class CommandTests(RoutedTestCase):
    @async_test
    async def test_a_line_command_runs_only_when_enabled(self):
        tmp = tempfile.mkdtemp(prefix="sockssuite-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        text = f"deny 0.0.0.0 0.0.0.0 : /usr/bin/touch {tmp}/denied-%u-%s\n"
        ep = self.endpoint(text, OTHER_LOOPBACK, 80, user="eve")
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        ep = self.endpoint(text, OTHER_LOOPBACK, 80, user="eve", commands=CommandRunner(reactor, enabled=False))
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        await support.deferLater(0.2)
        self.assertEqual(os.listdir(tmp), [])
        ep = self.endpoint(text, OTHER_LOOPBACK, 81, user="eve", commands=CommandRunner(reactor, enabled=True))
        await self.assertFailure(ep.connect(protocol.Factory.forProtocol(RawClient)), RouteDenied)
        for _ in range(500):
            if os.listdir(tmp):
                break
            await support.deferLater(0.01)
        self.assertEqual(os.listdir(tmp), ["denied-eve-81"])


# -- the walk, driven by a Clock ----------------------------------------------


class ClockDrivenTests(TestCase):
    """Timeouts and the failure memory without waiting: a MemoryReactorClock
    records connection attempts (nothing touches the network); the test
    plays the servers."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.failures = routing.RecentFailures(self.reactor, hold=60.0)
        self.conf = routes("sockd @=127.0.9.1,127.0.9.2:1081 0.0.0.0 0.0.0.0\n")

    def connect(self):
        ep = RoutedEndpoint(self.reactor, self.conf, "127.0.0.5", 80, user="u", timeout=10.0,
                            failures=self.failures)
        return ep.connect(protocol.Factory.forProtocol(protocol.Protocol))

    def attempts(self):
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def answer(self, index, reply=socks4.encode_reply(90, 0, "0.0.0.0")):
        host, port, factory, *_ = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proto.makeConnection(transport)
        request = transport.value()
        if reply is not None:
            proto.dataReceived(reply)
        return request, transport

    def fail(self, index):
        _, _, factory, *_ = self.reactor.tcpClients[index]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, error.ConnectionRefusedError())

    def test_the_servers_are_tried_in_listed_order(self):
        d = self.connect()
        self.assertEqual(self.attempts(), [("127.0.9.1", 1080)])
        self.fail(0)
        self.assertEqual(self.attempts(), [("127.0.9.1", 1080), ("127.0.9.2", 1081)])
        request, _ = self.answer(1)
        self.assertEqual(request, socks4.encode_request(socks4.CONNECT, 80, "127.0.0.5", userid=b"u"))
        self.assertIsInstance(self.successResultOf(d), protocol.Protocol)

    def test_a_server_that_does_not_answer_is_skipped_after_the_timeout(self):
        d = self.connect()
        _, transport = self.answer(0, reply=None)  # accepts, never answers
        self.reactor.advance(9.9)
        self.assertEqual(len(self.attempts()), 1)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(self.attempts()[1], ("127.0.9.2", 1081))
        self.answer(1)
        self.successResultOf(d)

    def test_a_server_that_never_accepts_is_skipped_after_the_timeout(self):
        d = self.connect()
        self.reactor.advance(10.0)
        self.assertEqual(self.attempts()[1], ("127.0.9.2", 1081))
        self.fail(1)
        e = self.failureResultOf(d, NoSOCKSServerReachable).value
        self.assertEqual([reason for _, reason in e.attempts],
                         ["did not answer within 10s", "refused the connection"])

    def test_a_failed_server_is_tried_last_until_the_memory_forgets_it(self):
        d = self.connect()
        self.fail(0)
        self.answer(1)
        self.successResultOf(d)
        self.reactor.advance(59.0)
        self.connect()
        self.assertEqual(self.attempts()[2], ("127.0.9.2", 1081))  # the good one first
        self.answer(2)
        self.reactor.advance(1.0)
        self.connect()
        self.assertEqual(self.attempts()[3], ("127.0.9.1", 1080))  # forgotten: listed order again

    def test_a_rejection_is_final_and_the_next_server_is_not_tried(self):
        d = self.connect()
        self.answer(0, reply=socks4.encode_reply(93))
        self.failureResultOf(d, SOCKSIdentMismatch)
        self.assertEqual(len(self.attempts()), 1)
        self.assertFalse(self.failures.recently_failed(("address", "127.0.9.1", 1080)))

    def test_a_socks5_server_that_does_not_answer_is_skipped_after_the_timeout(self):
        self.conf = routes("sockd @=socks5://127.0.9.1,127.0.9.2:1081 0.0.0.0 0.0.0.0\n")
        d = self.connect()
        greeting, transport = self.answer(0, reply=None)
        self.assertEqual(greeting, b"\x05\x01\x00")
        self.reactor.advance(10.0)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(self.attempts()[1], ("127.0.9.2", 1081))
        self.fail(1)
        e = self.failureResultOf(d, NoSOCKSServerReachable).value
        self.assertEqual([server for server, _ in e.attempts], ["socks5://127.0.9.1:1080", "127.0.9.2:1081"])

    def test_a_socks5_server_is_asked_in_socks5(self):
        self.conf = routes("sockd @=socks5://127.0.9.1 0.0.0.0 0.0.0.0\n")
        d = self.connect()
        host, port, factory, *_ = self.reactor.tcpClients[0]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"\x05\x01\x00")
        proto.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), b"\x05\x01\x00" + wire5.encode_request(wire5.CONNECT, "127.0.0.5", 80))
        self.assertNoResult(d)
        proto.dataReceived(wire5.encode_reply(wire5.SUCCEEDED, "127.0.9.1", 4000))
        self.assertIsInstance(self.successResultOf(d), protocol.Protocol)

    def test_cancel_while_connecting_is_a_cancelled_error(self):
        d = self.connect()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.reactor.advance(30)
        self.assertEqual(len(self.attempts()), 1)

