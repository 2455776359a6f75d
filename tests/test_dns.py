"""The DNS forwarder: dig over UDP and TCP, caching, the access rules, and the
option parsing; the upstream is a small twisted.names server on loopback."""

import os
import shutil

from twisted.internet import defer, reactor, utils
from twisted.names import dns, server
from twisted.names.common import ResolverBase
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockssuite import access, tap
from sockssuite.dns import DNSForwarderService, parse_upstream

from .support import LogCapture
from .test_server import async_test


class Zone(ResolverBase):
    """Answers A queries for names under .test from a dict; counts lookups."""

    def __init__(self, records):
        ResolverBase.__init__(self)
        self.records = records
        self.lookups = 0
        self.held = []  # answers for *.hold.test, given when the test says

    def _lookup(self, name, cls, type, timeout):
        self.lookups += 1
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key.endswith(".hold.test"):
            rr = dns.RRHeader(name=key, type=dns.A, ttl=300, payload=dns.Record_A("192.0.2.9", ttl=300), auth=True)
            self.held.append(defer.Deferred())
            return self.held[-1].addCallback(lambda _: ([rr], [], []))
        if type == dns.TXT and key == "big.example.test":  # about 6 KB of answers
            return defer.succeed(([dns.RRHeader(name=key, type=dns.TXT, ttl=300, auth=True,
                                                payload=dns.Record_TXT(b"%02d" % i + b"x" * 198, ttl=300))
                                   for i in range(30)], [], []))
        if type == dns.A and key in self.records:
            rr = dns.RRHeader(name=key, type=dns.A, ttl=300,
                              payload=dns.Record_A(self.records[key], ttl=300), auth=True)
            return defer.succeed(([rr], [], []))
        return defer.fail(dns.AuthoritativeDomainError(name))


class DNSForwarderTests(TestCase):
    async def start(self, rules="permit 127.0.0.0 255.0.0.0\n"):
        if not shutil.which("dig"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest(
                "dig is not installed (.ci/run installs bind9-dnsutils)")
        self.zone = Zone({"www.example.test": "192.0.2.80"})
        factory = server.DNSServerFactory(authorities=[self.zone])
        from twisted.internet.error import CannotListenError
        for _ in range(20):  # a UDP port whose TCP twin is free too
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            try:
                tcp = reactor.listenTCP(udp.getHost().port, factory, interface="127.0.0.1")
                break
            except CannotListenError:
                udp.stopListening()
        self.addCleanup(udp.stopListening)
        self.addCleanup(tcp.stopListening)
        forwarder = DNSForwarderService("tcp:0:interface=127.0.0.1", [("127.0.0.1", udp.getHost().port)],
                                        access.parse_access(rules, "sockd.conf"))
        forwarder.startService()
        self.addCleanup(forwarder.stopService)
        return forwarder

    async def dig(self, forwarder, *args):
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("dig"), ["@127.0.0.1", "-p", str(forwarder.address.port), "+time=2", "+tries=1",
                                  *args], env=os.environ.copy())
        return out.decode(), code

    @async_test
    async def test_dig_over_udp_and_tcp_gets_the_upstream_answer(self):
        forwarder = await self.start()
        out, code = await self.dig(forwarder, "www.example.test", "A", "+short")
        self.assertEqual((out.strip(), code), ("192.0.2.80", 0))
        out, code = await self.dig(forwarder, "www.example.test", "A", "+short", "+tcp")
        self.assertEqual((out.strip(), code), ("192.0.2.80", 0))

    @async_test
    async def test_answers_are_cached(self):
        forwarder = await self.start()
        for _ in range(3):
            out, _ = await self.dig(forwarder, "www.example.test", "A", "+short")
            self.assertEqual(out.strip(), "192.0.2.80")
        self.assertEqual(self.zone.lookups, 1)

    @async_test
    async def test_unknown_name_is_nxdomain(self):
        forwarder = await self.start()
        out, code = await self.dig(forwarder, "nothing.example.test", "A")
        self.assertIn("status: NXDOMAIN", out)

    @async_test
    async def test_clients_the_rules_do_not_permit_are_refused(self):
        logs = LogCapture(self)
        forwarder = await self.start("permit 10.0.0.0 255.0.0.0\n")
        out, code = await self.dig(forwarder, "www.example.test", "A")
        self.assertIn("status: REFUSED", out)
        self.assertEqual(self.zone.lookups, 0)
        self.assertEqual(forwarder.refused, 1)
        await logs.wait_for("dns-refused")


    @async_test
    async def test_udp_answers_are_no_bigger_than_the_client_takes(self):
        # Without EDNS 512 bytes, with EDNS what the query says (at most
        # 4096): a bigger answer goes out truncated (TC), and whole over TCP.
        # twisted.names alone sends 6 KB for a 40-byte query: an amplifier.
        import re
        forwarder = await self.start()
        for options, limit in [(["+noedns"], 512), (["+bufsize=1232"], 1232), (["+bufsize=65000"], 4096)]:
            out, code = await self.dig(forwarder, "big.example.test", "TXT", "+notcp", "+ignore", *options)
            size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", out).group(1))
            self.assertLessEqual(size, limit, options)
            self.assertRegex(out, r"flags:[a-z ]* tc[ ;]", options)
        out, code = await self.dig(forwarder, "big.example.test", "TXT", "+tcp")
        self.assertEqual(out.count('"'), 60)  # all 30 answers
        self.assertNotRegex(out, r"flags:[a-z ]* tc[ ;]")

    @async_test
    async def test_tcp_from_a_refused_client_is_closed_at_once(self):
        from . import support
        forwarder = await self.start("permit 10.0.0.0 255.0.0.0\n")
        client = await support.connect_raw(forwarder.address.port)
        await client.closed
        self.assertEqual(bytes(client.received), b"")
        self.assertEqual(forwarder.refused, 1)

    @async_test
    async def test_idle_tcp_connections_are_closed(self):
        from sockssuite import dns as dns_module
        from . import support
        self.patch(dns_module, "TCP_IDLE_TIMEOUT", 0.2)
        forwarder = await self.start()
        client = await support.connect_raw(forwarder.address.port)
        started = reactor.seconds()
        await client.closed
        self.assertLess(reactor.seconds() - started, 2)
        self.assertEqual(forwarder.factory.tcp_connections, 0)

    @async_test
    async def test_dribbled_bytes_do_not_keep_a_tcp_connection_open(self):
        from sockssuite import dns as dns_module
        from . import support
        self.patch(dns_module, "TCP_IDLE_TIMEOUT", 0.5)
        forwarder = await self.start()
        client = await support.connect_raw(forwarder.address.port)
        client.transport.write(b"\x00\x64")  # a 100-byte query announced, then a byte every 0.2 s
        started = reactor.seconds()
        while not client.closed.called and reactor.seconds() - started < 5:
            client.transport.write(b"x")
            await support.deferLater(0.2)
        self.assertTrue(client.closed.called)
        self.assertLess(reactor.seconds() - started, 2)

    @async_test
    async def test_pipelined_tcp_queries_are_read_as_answers_go_out(self):
        # 40 queries sent at once, the upstream slow: the forwarder reads no
        # more than 16 ahead of its answers, and answers all 40 in the end.
        import struct
        from sockssuite import dns as dns_module
        from . import support
        forwarder = await self.start()
        client = await support.connect_raw(forwarder.address.port)

        async def close():
            client.transport.abortConnection()
            await client.closed

        self.addCleanup(lambda: defer.ensureDeferred(close()))
        for i in range(40):
            query = dns.Message(id=i + 1, recDes=1)
            query.addQuery(f"n{i}.hold.test".encode(), dns.A)
            data = query.toStr()
            client.transport.write(struct.pack("!H", len(data)) + data)
        await support.deferLater(0.5)
        self.assertEqual(self.zone.lookups, dns_module.MAX_TCP_PIPELINE)
        released = 0
        for _ in range(100):  # answer what was asked; the forwarder reads on
            for d in self.zone.held[released:]:
                d.callback(None)
            released = len(self.zone.held)
            if released == 40:
                break
            await support.deferLater(0.05)
        answers = []
        for _ in range(100):
            data = bytes(client.received)
            answers = []
            while len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                size = struct.unpack("!H", data[:2])[0]
                message = dns.Message()
                message.fromStr(data[2:2 + size])
                answers.append(message.id)
                data = data[2 + size:]
            if len(answers) == 40:
                break
            await support.deferLater(0.05)
        self.assertEqual(sorted(answers), list(range(1, 41)))
        self.assertEqual(self.zone.lookups, 40)

    @async_test
    async def test_tcp_connections_are_bounded(self):
        from sockssuite import dns as dns_module
        from . import support
        self.patch(dns_module, "MAX_TCP_CONNECTIONS", 2)
        forwarder = await self.start()
        held = [await support.connect_raw(forwarder.address.port) for _ in range(2)]
        third = await support.connect_raw(forwarder.address.port)
        await third.closed
        for client in held:
            self.assertFalse(client.closed.called)
            client.transport.loseConnection()
            await client.closed

    @async_test
    async def test_the_cache_is_bounded_in_entries_and_time(self):
        from sockssuite import dns as dns_module
        self.patch(dns_module, "MAX_CACHE_ENTRIES", 2)
        self.patch(dns_module, "MAX_CACHE_SECONDS", 5.0)
        forwarder = await self.start()
        self.zone.records.update({"a.example.test": "192.0.2.1", "b.example.test": "192.0.2.2",
                                  "c.example.test": "192.0.2.3"})
        for name in ("a", "b", "c"):
            out, code = await self.dig(forwarder, f"{name}.example.test", "A", "+short")
            self.assertEqual(code, 0)
        cached = forwarder._cache
        self.assertEqual(sorted(q.name.name for q in cached.cache), [b"b.example.test", b"c.example.test"])
        for call in cached.cancel.values():  # a TTL of 300 s, kept 5 s
            self.assertLessEqual(call.getTime() - reactor.seconds(), 5.0)


class OptionTests(SynchronousTestCase):
    def test_upstream_forms(self):
        self.assertEqual(parse_upstream("192.0.2.53"), ("192.0.2.53", 53))
        self.assertEqual(parse_upstream("192.0.2.53:5353"), ("192.0.2.53", 5353))
        self.assertEqual(parse_upstream("[2001:db8::1]:53"), ("2001:db8::1", 53))
        self.assertEqual(parse_upstream("2001:db8::1"), ("2001:db8::1", 53))
        for bad in ["dns.example", "1.2.3.4:x", "1.2.3.4:70000", "[::1]x"]:
            self.assertRaises(ValueError, parse_upstream, bad)

    def test_dns_option_builds_a_named_service(self):
        options = tap.Options()
        options.parseOptions(["--dns", "tcp:5353:interface=127.0.0.1", "--dns-upstream", "127.0.0.1:5300"])
        root = tap.makeService(options)
        forwarder = root.getServiceNamed("dns")
        self.assertEqual(forwarder.upstreams, [("127.0.0.1", 5300)])

    def test_dns_needs_a_tcp_endpoint(self):
        options = tap.Options()
        self.assertRaises(Exception, options.parseOptions,
                          ["--dns", "unix:/tmp/x", "--dns-upstream", "127.0.0.1"])
