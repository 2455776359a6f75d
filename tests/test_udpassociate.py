"""The SOCKS5 UDP ASSOCIATE datagram engine over real loopback sockets
(127.0.0.1 and ::1 only): round trips by IPv4, IPv6 and name, who may send,
which answers come back, every drop counted, and stop() freeing every port.

Self-contained (no SOCKS server, no tests.support): the engine is what is
under test, with its check and resolver injected."""

from __future__ import annotations

import socket

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockssuite import udpassociate
from sockssuite.udpassociate import DropLog, UDPAssociation, normalize_address
from sockssuite.wire import udp as udpwire

from .support import async_test


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def until(condition, timeout=3.0, what="condition"):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout}s")


class Echo(protocol.DatagramProtocol):
    """An outside UDP server: echoes each datagram, from ``answer_from``'s
    socket if given (a peer the client never sent to), or not at all."""

    def __init__(self, answer_from=None, answer=True):
        self.answer_from = answer_from
        self.answer = answer
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        if self.answer:
            (self.answer_from or self.transport).write(data, addr)


class Client(protocol.DatagramProtocol):
    """A SOCKS5 UDP client: sends wrapped datagrams, keeps what comes back."""

    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))

    def send(self, relay, host, port, payload, frag=0):
        self.transport.write(udpwire.encode_udp(host, port, payload, frag=frag), relay)

    @property
    def port(self):
        return self.transport.getHost().port

    async def answers(self, count, timeout=3.0):
        await until(lambda: len(self.received) >= count, timeout, f"{count} answer(s)")
        return [udpwire.decode_udp(data) for data, _ in self.received]


class Events:
    """sockssuite.udpassociate log events while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event):
        if event.get("log_namespace") == "sockssuite.udpassociate":
            self.events.append(event)

    def named(self, name):
        return [e for e in self.events if e.get("event") == name]


def allow_all(address, port):
    return None


def no_names(name):
    return defer.fail(AssertionError(f"no resolver in this test (asked for {name})"))


def port_is_free(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class AssociationTestCase(TestCase):
    def udp(self, proto, interface="127.0.0.1"):
        port = reactor.listenUDP(0, proto, interface=interface, maxPacketSize=65535)
        self.addCleanup(port.stopListening)
        return port

    def echo(self, interface="127.0.0.1", **kw):
        echo = Echo(**kw)
        return echo, self.udp(echo, interface).getHost().port

    def client(self, interface="127.0.0.1"):
        client = Client()
        self.udp(client, interface)
        return client

    async def associate(self, client_host="127.0.0.1", client_port=0, listen_interface=None,
                        check=allow_all, resolve=no_names, **kw):
        association = UDPAssociation(reactor, client_host=client_host, client_port=client_port,
                                     listen_interface=listen_interface or client_host,
                                     check=check, resolve=resolve, **kw)
        relay = await association.start()
        self.addCleanup(association.stop)
        return association, relay

    async def drops(self, association, reason, count=1):
        await until(lambda: association.counters.drops.get(reason, 0) >= count, what=f"{count} {reason} drop(s)")
        # Nothing else arrives late.
        await sleep(0.05)
        return association.counters.drops


class RoundTripTests(AssociationTestCase):
    @async_test
    async def test_ipv4_round_trip_answers_carry_the_echo_servers_address(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate()
        self.assertEqual(relay[0], "127.0.0.1")
        self.assertNotEqual(relay[1], 0)
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"hello over udp")
        [answer] = await client.answers(1)
        self.assertEqual((answer.atyp, answer.host, answer.port, answer.frag, answer.data),
                         (udpwire.ATYP_IPV4, "127.0.0.1", echo_port, 0, b"hello over udp"))
        self.assertEqual(client.received[0][1], relay)
        # The outside saw the association's outward socket, not the client.
        [(data, seen_from)] = echo.received
        self.assertEqual(data, b"hello over udp")
        self.assertNotIn(seen_from[1], (client.port, relay[1]))
        counters = association.counters
        self.assertEqual((counters.datagrams_out, counters.bytes_out, counters.datagrams_in, counters.bytes_in),
                         (1, 14, 1, 14))
        self.assertEqual(counters.drops, {})

    @async_test
    async def test_ipv6_round_trip_answers_carry_atyp_4(self):
        echo, echo_port = self.echo("::1")
        association, relay = await self.associate(client_host="::1")
        self.assertEqual(relay[0], "::1")
        client = self.client("::1")
        client.send(relay, "::1", echo_port, b"six")
        [answer] = await client.answers(1)
        self.assertEqual((answer.atyp, answer.host, answer.port, answer.data),
                         (udpwire.ATYP_IPV6, "::1", echo_port, b"six"))

    @async_test
    async def test_ipv4_client_reaches_ipv6_destinations_and_back(self):
        echo4, port4 = self.echo()
        echo6, port6 = self.echo("::1")
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", port4, b"four")
        client.send(relay, "::1", port6, b"six")
        answers = await client.answers(2)
        self.assertEqual(sorted((a.host, a.port, a.data) for a in answers),
                         sorted([("127.0.0.1", port4, b"four"), ("::1", port6, b"six")]))
        # One outward socket per family, besides the client-facing one.
        self.assertEqual(len(association.bound_addresses()), 3)

    @async_test
    async def test_by_name_resolves_once_and_checks_the_address(self):
        echo4, port4 = self.echo()
        echo6, port6 = self.echo("::1")
        asked, checked = [], []
        addresses = {"localhost": "127.0.0.1", "ip6-localhost": "::1"}

        def resolve(name):
            asked.append(name)
            return task.deferLater(reactor, 0.01, lambda: addresses[name])

        def check(address, port):
            checked.append((address, port))

        association, relay = await self.associate(check=check, resolve=resolve)
        client = self.client()
        client.send(relay, "LocalHost.", port4, b"one")
        client.send(relay, "localhost", port4, b"two")  # waits for the same look-up
        client.send(relay, "ip6-localhost", port6, b"three")
        answers = await client.answers(3)
        # Answers name the address they came from, never the name.
        self.assertEqual(sorted((a.atyp, a.host, a.port, a.data) for a in answers),
                         sorted([(1, "127.0.0.1", port4, b"one"), (1, "127.0.0.1", port4, b"two"),
                                 (4, "::1", port6, b"three")]))
        client.send(relay, "localhost", port4, b"four")  # from the cache
        await client.answers(4)
        self.assertEqual(sorted(asked), ["ip6-localhost", "localhost"])
        self.assertEqual(sorted(set(checked)), [("127.0.0.1", port4), ("::1", port6)])

    @async_test
    async def test_name_cache_entries_expire(self):
        echo, echo_port = self.echo()
        asked = []

        def resolve(name):
            asked.append(name)
            return defer.succeed("127.0.0.1")

        association, relay = await self.associate(resolve=resolve, name_ttl=0.1)
        client = self.client()
        client.send(relay, "localhost", echo_port, b"x")
        await client.answers(1)
        await sleep(0.15)
        client.send(relay, "localhost", echo_port, b"y")
        await client.answers(2)
        self.assertEqual(asked, ["localhost", "localhost"])

    @async_test
    async def test_ipv4_mapped_destination_goes_out_over_ipv4(self):
        echo, echo_port = self.echo()
        checked = []
        association, relay = await self.associate(check=lambda a, p: checked.append(a))
        client = self.client()
        client.send(relay, "::ffff:127.0.0.1", echo_port, b"mapped")
        [answer] = await client.answers(1)
        self.assertEqual((answer.atyp, answer.host), (udpwire.ATYP_IPV4, "127.0.0.1"))
        self.assertEqual(checked, ["127.0.0.1"])
        self.assertEqual(len(association.bound_addresses()), 2)  # no IPv6 socket

    @async_test
    async def test_ipv4_mapped_client_and_listen_addresses_count_as_ipv4(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate(client_host="::ffff:127.0.0.1",
                                                  listen_interface="::ffff:127.0.0.1")
        self.assertEqual(relay[0], "127.0.0.1")
        self.assertEqual(association.client_host, "127.0.0.1")
        client = self.client()
        # As a dual-stack socket would report the client:
        mapped_source = ("::ffff:127.0.0.1", client.port)
        association._client_socket.protocol.datagramReceived(
            udpwire.encode_udp("127.0.0.1", echo_port, b"via mapped"), mapped_source)
        [answer] = await client.answers(1)
        self.assertEqual(answer.data, b"via mapped")
        self.assertEqual(association.client_port, client.port)


class WhoMaySendTests(AssociationTestCase):
    @async_test
    async def test_datagrams_from_another_address_are_dropped(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate()
        stranger = self.client("127.0.0.2")
        stranger.send(relay, "127.0.0.1", echo_port, b"let me in")
        drops = await self.drops(association, "wrong-sender")
        self.assertEqual(drops, {"wrong-sender": 1})
        self.assertEqual(echo.received, [])
        self.assertEqual(association.client_port, 0)  # a stranger does not lock the port

    @async_test
    async def test_announced_port_is_the_only_one_accepted(self):
        echo, echo_port = self.echo()
        client, other = self.client(), self.client()
        association, relay = await self.associate(client_port=client.port)
        other.send(relay, "127.0.0.1", echo_port, b"not me")
        await self.drops(association, "wrong-sender")
        client.send(relay, "127.0.0.1", echo_port, b"me")
        [answer] = await client.answers(1)
        self.assertEqual(answer.data, b"me")
        self.assertEqual([data for data, _ in echo.received], [b"me"])
        self.assertEqual(other.received, [])

    @async_test
    async def test_unannounced_port_is_locked_by_the_first_datagram(self):
        echo, echo_port = self.echo()
        first, second = self.client(), self.client()
        association, relay = await self.associate(client_port=0)
        first.send(relay, "127.0.0.1", echo_port, b"first")
        await first.answers(1)
        self.assertEqual(association.client_port, first.port)
        second.send(relay, "127.0.0.1", echo_port, b"second")
        await self.drops(association, "wrong-sender")
        first.send(relay, "127.0.0.1", echo_port, b"first again")
        answers = await first.answers(2)
        self.assertEqual([a.data for a in answers], [b"first", b"first again"])
        self.assertEqual(second.received, [])
        self.assertEqual([data for data, _ in echo.received], [b"first", b"first again"])


class AnswerTests(AssociationTestCase):
    @async_test
    async def test_answer_from_another_port_of_the_same_host_is_dropped(self):
        elsewhere = self.udp(protocol.DatagramProtocol())
        echo, echo_port = self.echo(answer_from=elsewhere)
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"hello")
        drops = await self.drops(association, "unsolicited")
        self.assertEqual(drops, {"unsolicited": 1})
        self.assertEqual(client.received, [])
        self.assertEqual(association.counters.datagrams_in, 0)

    @async_test
    async def test_a_third_party_cannot_inject_through_the_outward_socket(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"ask")
        await client.answers(1)
        outward = echo.received[0][1]
        intruder = self.client()
        intruder.transport.write(b"injected", outward)
        await self.drops(association, "unsolicited")
        self.assertEqual(len(client.received), 1)

    @async_test
    async def test_the_least_recently_used_peer_is_forgotten_past_max_peers(self):
        quiet_a, port_a = self.echo(answer=False)
        quiet_b, port_b = self.echo(answer=False)
        association, relay = await self.associate(max_peers=1)
        client = self.client()
        client.send(relay, "127.0.0.1", port_a, b"to a")
        await until(lambda: quiet_a.received)
        client.send(relay, "127.0.0.1", port_b, b"to b")
        await until(lambda: quiet_b.received)
        quiet_a.transport.write(b"late from a", quiet_a.received[0][1])
        await self.drops(association, "unsolicited")
        quiet_b.transport.write(b"from b", quiet_b.received[0][1])
        [answer] = await client.answers(1)
        self.assertEqual((answer.port, answer.data), (port_b, b"from b"))

    @async_test
    async def test_oversized_answers_are_dropped(self):
        talker, talker_port = self.echo(answer=False)
        association, relay = await self.associate(max_datagram=100)
        client = self.client()
        client.send(relay, "127.0.0.1", talker_port, b"q")
        await until(lambda: talker.received)
        talker.transport.write(b"x" * 101, talker.received[0][1])
        await self.drops(association, "oversize")
        talker.transport.write(b"x" * 100, talker.received[0][1])
        [answer] = await client.answers(1)
        self.assertEqual(len(answer.data), 100)


class DropTests(AssociationTestCase):
    @async_test
    async def test_fragments_and_malformed_headers_are_dropped_and_counted(self):
        events = Events(self)
        echo, echo_port = self.echo()
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"part", frag=1)
        client.send(relay, "127.0.0.1", echo_port, b"last part", frag=0x81)
        client.transport.write(b"\x00\x01garbage", relay)
        client.transport.write(b"\x00\x00\x00\x05" + b"\x00" * 8, relay)  # ATYP 5
        client.transport.write(b"", relay)
        drops = await self.drops(association, "bad-header", 3)
        self.assertEqual(drops, {"fragment": 2, "bad-header": 3})
        self.assertEqual(echo.received, [])
        reasons = sorted(e["reason"] for e in events.named("datagram-dropped"))
        self.assertEqual(reasons, ["bad-header", "fragment"])  # one line a second per reason
        [fragment] = [e for e in events.named("datagram-dropped") if e["reason"] == "fragment"]
        self.assertIn("FRAG 1", fragment["detail"])

    @async_test
    async def test_oversized_payloads_are_dropped(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate(max_datagram=100)
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"x" * 101)
        await self.drops(association, "oversize")
        client.send(relay, "127.0.0.1", echo_port, b"x" * 100)
        await client.answers(1)
        self.assertEqual([len(data) for data, _ in echo.received], [100])

    @async_test
    async def test_a_full_size_datagram_is_not_cut_short(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate()
        client = self.client()
        payload = bytes(range(256)) * 200  # 51,200 bytes: far over Twisted's 8 KiB default
        client.send(relay, "127.0.0.1", echo_port, payload)
        [answer] = await client.answers(1)
        self.assertEqual(answer.data, payload)

    @async_test
    async def test_unspecified_destinations_are_refused_before_the_check(self):
        checked = []
        names = {"zero.example": "0.0.0.0", "weird.example": "not an address"}
        association, relay = await self.associate(
            check=lambda a, p: checked.append(a), resolve=lambda name: defer.succeed(names[name]))
        client = self.client()
        for host in ("0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0", "zero.example", "weird.example"):
            client.send(relay, host, 9, b"nowhere")
        drops = await self.drops(association, "refused-address", 6)
        self.assertEqual(drops, {"refused-address": 6})
        self.assertEqual(checked, [])

    @async_test
    async def test_multicast_and_broadcast_destinations_are_refused_before_the_check(self):
        # Nothing is sent to them (the check would have to be asked first).
        checked = []
        names = {"ssdp.example": "239.255.255.250"}
        association, relay = await self.associate(
            check=lambda a, p: checked.append(a), resolve=lambda name: defer.succeed(names[name]))
        client = self.client()
        hosts = ("224.0.0.251", "239.255.255.250", "255.255.255.255", "240.0.0.1", "ff02::1", "FF05::C",
                 "::ffff:224.0.0.1", "ssdp.example")
        for host in hosts:
            client.send(relay, host, 9, b"everyone")
        drops = await self.drops(association, "refused-address", len(hosts))
        self.assertEqual(drops, {"refused-address": len(hosts)})
        self.assertEqual(checked, [])

    def test_not_a_datagram_destination(self):
        from sockssuite.names import not_a_datagram_destination as special
        for address in ("127.0.0.1", "10.1.2.3", "223.255.255.255", "::1", "2001:db8::1", "fe80::1", "ff::1",
                        "ff0::1", "fff:1::"):
            self.assertIsNone(special(address), address)
        for address, why in [("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
                             ("239.1.2.3", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"),
                             ("255.255.255.255", "broadcast")]:
            self.assertIn(why, special(address), address)

    @async_test
    async def test_check_denial_drops_and_logs_the_reason(self):
        events = Events(self)
        echo, echo_port = self.echo()
        association, relay = await self.associate(check=lambda a, p: f"denied by line 4 ({a}:{p})")
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"no")
        await self.drops(association, "denied")
        self.assertEqual(echo.received, [])
        [dropped] = events.named("datagram-dropped")
        self.assertEqual(dropped["reason"], "denied")
        self.assertIn(f"denied by line 4 (127.0.0.1:{echo_port})", dropped["detail"])

    @async_test
    async def test_deferred_check_denies_and_allows(self):
        echo, echo_port = self.echo()
        denied_port = echo_port + 1 if echo_port < 65535 else echo_port - 1

        def check(address, port):
            verdict = None if port == echo_port else "denied by a slow rule"
            return task.deferLater(reactor, 0.02, lambda: verdict)

        association, relay = await self.associate(check=check)
        client = self.client()
        client.send(relay, "127.0.0.1", denied_port, b"no")
        client.send(relay, "127.0.0.1", echo_port, b"yes")
        [answer] = await client.answers(1)
        self.assertEqual(answer.data, b"yes")
        drops = await self.drops(association, "denied")
        self.assertEqual(drops, {"denied": 1})
        self.assertEqual(association._held, 0)

    @async_test
    async def test_a_failing_check_drops(self):
        def check(address, port):
            if port == 1:
                raise ValueError("address is not a dotted quad")
            return defer.fail(RuntimeError("policy store unreachable"))

        association, relay = await self.associate(check=check)
        client = self.client()
        client.send(relay, "127.0.0.1", 1, b"a")
        client.send(relay, "127.0.0.1", 2, b"b")
        drops = await self.drops(association, "check-failed", 2)
        self.assertEqual(drops, {"check-failed": 2})

    @async_test
    async def test_a_check_that_never_answers_times_out_and_waiting_is_bounded(self):
        forever = []

        def check(address, port):
            forever.append(defer.Deferred())
            return forever[-1]

        association, relay = await self.associate(check=check, max_pending=2, pending_timeout=0.2)
        client = self.client()
        for port in (1, 2, 3):
            client.send(relay, "127.0.0.1", port, b"wait")
        await self.drops(association, "busy")
        drops = await self.drops(association, "check-failed", 2)
        self.assertEqual(drops, {"busy": 1, "check-failed": 2})
        self.assertEqual(association._held, 0)
        forever[0].callback(None)  # too late: nothing is sent
        self.assertEqual(association.counters.datagrams_out, 0)

    @async_test
    async def test_resolution_failures_are_dropped_and_not_cached(self):
        asked = []

        def resolve(name):
            asked.append(name)
            return defer.fail(OSError("NXDOMAIN"))

        association, relay = await self.associate(resolve=resolve)
        client = self.client()
        client.send(relay, "nowhere.invalid", 53, b"?")
        await self.drops(association, "resolve-failed")
        client.send(relay, "nowhere.invalid", 53, b"?")
        drops = await self.drops(association, "resolve-failed", 2)
        self.assertEqual(drops, {"resolve-failed": 2})
        self.assertEqual(asked, ["nowhere.invalid"] * 2)

    @async_test
    async def test_send_errors_are_counted_not_raised(self):
        import errno
        from twisted.internet import udp
        real_write = udp.Port.write

        def write(port, data, addr=None):
            if addr is not None and addr[1] == 9:  # as the kernel answers a send it refuses
                raise OSError(errno.EACCES, "Permission denied")
            return real_write(port, data, addr)

        self.patch(udp.Port, "write", write)
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", 9, b"refused")
        drops = await self.drops(association, "send-failed")
        self.assertEqual(drops, {"send-failed": 1})

    @async_test
    async def test_outside_interface_of_one_family_drops_the_other(self):
        echo, echo_port = self.echo()
        association, relay = await self.associate(outside_interface="127.0.0.1")
        client = self.client()
        client.send(relay, "::1", 9, b"six")
        await self.drops(association, "no-outside-socket")
        client.send(relay, "127.0.0.1", echo_port, b"four")
        [answer] = await client.answers(1)
        self.assertEqual(echo.received[0][1][0], "127.0.0.1")
        self.assertEqual(answer.data, b"four")

    @async_test
    async def test_a_bug_in_a_datagram_path_is_counted_never_raised(self):
        association, relay = await self.associate()
        association._client_datagram = lambda data, addr: 1 / 0
        association._client_socket.protocol.datagramReceived(b"x", ("127.0.0.1", 1))
        self.assertEqual(association.counters.drops, {"internal-error": 1})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class LifeCycleTests(AssociationTestCase):
    @async_test
    async def test_stop_closes_every_socket_and_is_idempotent(self):
        echo4, port4 = self.echo()
        echo6, port6 = self.echo("::1")
        association, relay = await self.associate()
        client = self.client()
        client.send(relay, "127.0.0.1", port4, b"4")
        client.send(relay, "::1", port6, b"6")
        await client.answers(2)
        bound = association.bound_addresses()
        self.assertEqual(len(bound), 3)
        outward = [echo4.received[0][1][1], echo6.received[0][1][1]]
        self.assertEqual(sorted(port for _, port in bound[1:]), sorted(outward))
        for host, port in [("127.0.0.1", relay[1]), ("127.0.0.1", outward[0]), ("::1", outward[1])]:
            self.assertFalse(port_is_free(host, port), f"{host}:{port} should be in use")
        first, second = association.stop(), association.stop()
        await first
        await second
        await association.stop()
        self.assertFalse(association.running)
        self.assertEqual(association.bound_addresses(), [])
        for host, port in [("127.0.0.1", relay[1]), ("127.0.0.1", outward[0]), ("::1", outward[1])]:
            self.assertTrue(port_is_free(host, port), f"{host}:{port} is still bound after stop()")

    @async_test
    async def test_waiting_datagrams_are_bounded_in_bytes_and_freed_at_the_timeout(self):
        # A name whose look-up never answers: the datagrams for it are
        # bounded in bytes too, and released (not kept for the look-up,
        # which may answer much later) when they time out.
        pending = []

        def resolve(name):
            pending.append(defer.Deferred())
            return pending[-1]

        association, relay = await self.associate(resolve=resolve, max_pending=64, max_pending_bytes=25000,
                                                  pending_timeout=0.3)
        client = self.client()
        for _ in range(3):
            client.send(relay, "slow.test", 53, b"x" * 10000)
        await self.drops(association, "busy")
        self.assertEqual((association._held, association._held_bytes), (2, 20000))
        drops = await self.drops(association, "resolve-failed", 2)
        self.assertEqual(drops, {"busy": 1, "resolve-failed": 2})
        self.assertEqual((association._held, association._held_bytes), (0, 0))
        self.assertEqual(len(pending), 1)  # one look-up for the name
        pending[0].callback("127.0.0.1")  # too late: nothing is sent, nothing was kept for it
        self.assertEqual(association.counters.datagrams_out, 0)

    @async_test
    async def test_stop_while_a_verdict_is_pending_sends_nothing_later(self):
        echo, echo_port = self.echo()
        later = defer.Deferred()
        association, relay = await self.associate(check=lambda a, p: later)
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"too late")
        await until(lambda: association._held == 1)
        await association.stop()
        later.callback(None)
        await sleep(0.05)
        self.assertEqual(echo.received, [])
        self.assertEqual(association.counters.datagrams_out, 0)

    @async_test
    async def test_stop_before_start_and_start_twice(self):
        association = UDPAssociation(reactor, client_host="127.0.0.1", client_port=0,
                                     listen_interface="127.0.0.1", check=allow_all, resolve=no_names)
        await association.stop()
        with self.assertRaises(RuntimeError):
            await association.start()
        association, relay = await self.associate()
        with self.assertRaises(RuntimeError):
            await association.start()

    @async_test
    async def test_start_fails_on_an_address_not_ours(self):
        association = UDPAssociation(reactor, client_host="192.0.2.1", client_port=0,
                                     listen_interface="192.0.2.1", check=allow_all, resolve=no_names)
        with self.assertRaises(CannotListenError):
            await association.start()
        await association.stop()

    @async_test
    async def test_start_and_stop_are_logged_with_the_prefix_and_counters(self):
        events = Events(self)
        echo, echo_port = self.echo()
        association, relay = await self.associate(log_prefix="session 7: ")
        client = self.client()
        client.send(relay, "127.0.0.1", echo_port, b"abc")
        await client.answers(1)
        await association.stop()
        [started] = events.named("udp-association-started")
        self.assertEqual((started["host"], started["port"], started["prefix"]),
                         ("127.0.0.1", relay[1], "session 7: "))
        [stopped] = events.named("udp-association-stopped")
        self.assertEqual((stopped["datagrams_out"], stopped["bytes_out"], stopped["datagrams_in"],
                          stopped["bytes_in"], stopped["dropped"]), (1, 3, 1, 3, 0))

    def test_bad_parameters_are_refused(self):
        base = dict(client_host="127.0.0.1", client_port=0, listen_interface="127.0.0.1",
                    check=allow_all, resolve=no_names)
        for bad in [dict(client_host="localhost"), dict(client_host="127.1"),
                    dict(client_host="0.0.0.0", listen_interface="0.0.0.0"), dict(client_port=70000),
                    dict(client_port=True), dict(listen_interface="::1"), dict(listen_interface=""),
                    dict(outside_interface="eth0"), dict(max_peers=0), dict(max_datagram=0),
                    dict(pending_timeout=0)]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                UDPAssociation(reactor, **{**base, **bad})
        # An IPv4 client may reach the IPv6 wildcard (a dual-stack socket).
        UDPAssociation(reactor, **{**base, "listen_interface": "::"})


class ArbitraryBytesTests(AssociationTestCase):
    """Whatever the client sends, nothing raises and every datagram is either
    sent or dropped for a reason.  Fed to the client-facing protocol directly
    (the socket only adds latency); what is forwarded goes to loopback."""

    @async_test
    async def test_arbitrary_datagrams_never_raise_and_are_all_accounted_for(self):
        def check(address, port):
            return None if address in ("127.0.0.1", "::1") else "only loopback here"

        association, relay = await self.associate(check=check,
                                                  resolve=lambda name: defer.succeed("127.0.0.1"))
        client = self.client()
        source = ("127.0.0.1", client.port)
        receive = association._client_socket.protocol.datagramReceived
        hosts = st.sampled_from(["127.0.0.1", "::1", "192.0.2.1", "0.0.0.0", "::", "localhost",
                                 "::ffff:127.0.0.1"])
        # Not to the relay itself: that would come back as a late, asynchronous drop.
        ports = st.integers(1, 65535).filter(lambda port: port != relay[1])
        headers = st.builds(lambda host, port, data, frag: udpwire.encode_udp(host, port, data, frag),
                            hosts, ports, st.binary(max_size=64), st.sampled_from([0, 0, 1]))
        datagrams = st.one_of(st.binary(max_size=300), headers,
                              st.tuples(headers, st.integers(0, 40)).map(lambda t: t[0][:t[1]]))
        seen = [0]

        @settings(max_examples=400, deadline=None, database=None)
        @given(datagrams, st.sampled_from([source, source, ("127.0.0.2", client.port),
                                           ("::ffff:127.0.0.1", client.port)]))
        def feed(data, addr):
            receive(data, addr)
            seen[0] += 1
            counters = association.counters
            self.assertEqual(counters.datagrams_out + counters.dropped, seen[0])
            self.assertNotIn("internal-error", counters.drops)

        feed()
        self.assertEqual(association._held, 0)


class PureTests(SynchronousTestCase):
    def test_normalize_address(self):
        cases = {"127.0.0.1": "127.0.0.1", "::1": "::1", "0:0:0:0:0:0:0:1": "::1",
                 "::FFFF:10.0.0.1": "10.0.0.1", "2001:DB8::1": "2001:db8::1",
                 "localhost": None, "127.1": None, "0x7f.0.0.1": None, "fe80::1%eth0": None,
                 "": None, "1.2.3.4\0": None, None: None, 7: None}
        for text, expected in cases.items():
            self.assertEqual(normalize_address(text), expected, repr(text))

    @given(st.binary(min_size=16, max_size=16))
    def test_normalize_matches_what_the_kernel_reports(self, packed):
        text = socket.inet_ntop(socket.AF_INET6, packed)
        normalized = normalize_address(text)
        if packed.startswith(b"\0" * 10 + b"\xff\xff"):
            self.assertEqual(normalized, socket.inet_ntop(socket.AF_INET, packed[12:]))
        else:
            self.assertEqual(normalized, text)

    def test_drop_log_reports_once_an_interval_with_the_count_suppressed(self):
        clock = task.Clock()
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        drops = DropLog(clock.seconds, interval=1.0)
        for _ in range(5):
            drops.dropped("denied", "to 192.0.2.1:53", "session 1: ")
        drops.dropped("fragment", "FRAG 1")
        clock.advance(1.0)
        drops.dropped("denied", "to 192.0.2.1:53\nforged line")
        logged = [e for e in events if e.get("event") == "datagram-dropped"]
        self.assertEqual([(e["reason"], e["suppressed"]) for e in logged],
                         [("denied", 0), ("fragment", 0), ("denied", 4)])
        self.assertEqual(logged[0]["prefix"], "session 1: ")
        self.assertNotIn("\n", logged[2]["detail"])

    def test_counters_total(self):
        counters = udpassociate.UDPCounters(drops={"denied": 2, "bad-header": 3})
        self.assertEqual(counters.dropped, 5)
