"""The UDP forwarder over loopback: relay and encapsulate lines, the sender
check, spoofed answers, expiry, many senders, and socat as a real client."""

import os
import shutil

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial.unittest import TestCase

from sockssuite import access, udprelay_conf
from sockssuite.udprelay import UDPRelayService
from sockssuite.wire import udp as udpwire

from . import support
from .support import LogCapture
from .test_server import async_test


class Echo(protocol.DatagramProtocol):
    """The 'outside' server: echoes each datagram (optionally from elsewhere)."""

    def __init__(self, answer_from=None):
        self.answer_from = answer_from  # another DatagramProtocol's transport to answer from
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        (self.answer_from or self.transport).write(data, addr)


class Inside(protocol.DatagramProtocol):
    """An inside client: collects what comes back."""

    def __init__(self):
        self.received = []
        self.waiters = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def wait(self, count, timeout=3.0):
        deadline = reactor.seconds() + timeout
        while len(self.received) < count and reactor.seconds() < deadline:
            d = defer.Deferred()
            self.waiters.append(d)
            timer = reactor.callLater(0.05, lambda d=d: d.called or d.callback(None))
            await d
            if timer.active():
                timer.cancel()
        return self.received


def free_udp_port():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class UDPRelayTests(TestCase):
    def udp(self, proto, interface="127.0.0.1", port=0):
        p = reactor.listenUDP(port, proto, interface=interface, maxPacketSize=65535)
        self.addCleanup(p.stopListening)
        return p

    def echo_relay(self, **kw):
        """An outside echo server, a relay line to it from a fresh local port
        (any localport2), and an inside client: (echo, local port, the
        service, the client)."""
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        relay = self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} any\n", **kw)
        inside = Inside()
        self.udp(inside)
        return echo, local, relay, inside

    def start(self, conf, rules=support.LOOPBACK_ONLY, **kw):
        config = udprelay_conf.parse_udprelay(conf, "udprelay.conf")
        relay = UDPRelayService(config, access.parse_access(rules, "sockd.conf"), **kw)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    @async_test
    async def test_relay_line_forwards_and_answers_come_back(self):
        logs = LogCapture(self)
        echo, local, relay, inside = self.echo_relay()
        inside.transport.write(b"query", ("127.0.0.1", local))
        [(data, addr)] = await inside.wait(1)
        self.assertEqual((data, addr), (b"query", ("127.0.0.1", local)))
        self.assertEqual(len(echo.received), 1)
        # The outside saw the relay's own port, not the inside client's.
        self.assertNotEqual(echo.received[0][1][1], inside.transport.getHost().port)
        self.assertEqual(logs.named("association-opened")[0]["local_port"], local)
        relay.stopService()
        [closed] = logs.named("association-closed")
        self.assertEqual((closed["datagrams_out"], closed["datagrams_in"]), (1, 1))

    @async_test
    async def test_fixed_port_answers_go_to_the_lines_latest_sender(self):
        # localport2 fixed: all senders share one outside socket, and an
        # answer goes to whoever of them sent last (the original udprelay's
        # rule), also after that one's association has expired.
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local, fixed = free_udp_port(), free_udp_port()
        relay = self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} {fixed}\n", idle_timeout=1.0)
        first, second = Inside(), Inside()
        self.udp(first)
        self.udp(second)
        first.transport.write(b"one", ("127.0.0.1", local))
        await first.wait(1)
        second.transport.write(b"two", ("127.0.0.1", local))
        await second.wait(1)
        self.assertEqual(([d for d, _ in first.received], [d for d, _ in second.received]), ([b"one"], [b"two"]))
        self.assertEqual({addr[1] for _, addr in echo.received}, {fixed})
        await support.deferLater(0.6)
        first.transport.write(b"three", ("127.0.0.1", local))  # first is the latest again
        await first.wait(2)
        await support.deferLater(0.6)  # second's association expires (1 s idle), first's stays
        self.assertEqual([a.sender[1] for a in relay.table], [first.transport.getHost().port])
        echo.transport.write(b"unasked", ("127.0.0.1", fixed))  # an answer nobody just asked for
        await first.wait(3)
        self.assertEqual([d for d, _ in first.received], [b"one", b"three", b"unasked"])
        self.assertEqual([d for d, _ in second.received], [b"two"])

    @async_test
    async def test_no_socket_for_a_new_association_drops_the_datagram(self):
        import errno
        from twisted.internet.error import CannotListenError
        logs = LogCapture(self)
        echo, local, relay, inside = self.echo_relay()
        real = reactor.listenUDP

        def listenUDP(*args, **kwargs):
            raise CannotListenError("", 0, OSError(errno.EMFILE, "Too many open files"))

        self.patch(reactor, "listenUDP", listenUDP)
        inside.transport.write(b"lost", ("127.0.0.1", local))
        [dropped] = await logs.wait_for("datagram-dropped")
        self.assertEqual(dropped["reason"], "no-socket")
        self.assertIn("Too many open files", dropped["detail"])
        self.assertEqual(len(relay.table), 0)
        self.patch(reactor, "listenUDP", real)
        inside.transport.write(b"found", ("127.0.0.1", local))
        [(data, _)] = await inside.wait(1)
        self.assertEqual(data, b"found")

    @async_test
    async def test_sender_no_line_permits_is_dropped_and_logged(self):
        logs = LogCapture(self)
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        relay = self.start(f"relay 127.0.0.2/32 * {local} 127.0.0.1 {outside} any\n")
        inside = Inside()
        self.udp(inside, interface="127.0.0.1")
        inside.transport.write(b"let me in", ("127.0.0.1", local))
        await support.deferLater(0.3)
        self.assertEqual(echo.received, [])
        [dropped] = await logs.wait_for("datagram-dropped")
        self.assertEqual(dropped["reason"], "not-permitted")
        self.assertEqual(relay.counters["dropped-not-permitted"], 1)

    @async_test
    async def test_answer_from_another_port_is_not_forwarded(self):
        logs = LogCapture(self)
        elsewhere = self.udp(protocol.DatagramProtocol())
        echo = Echo(answer_from=elsewhere)
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        relay = self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} any\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(b"hello", ("127.0.0.1", local))
        await logs.wait_for("datagram-dropped")
        await support.deferLater(0.1)
        self.assertEqual(inside.received, [])
        self.assertEqual(relay.counters.get("dropped-spoofed"), 1)

    @async_test
    async def test_oneway_line_sends_nothing_back(self):
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        relay = self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} any oneway\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(b"log line", ("127.0.0.1", local))
        for _ in range(100):
            if echo.received and relay.counters.get("dropped-oneway"):
                break
            await support.deferLater(0.02)
        self.assertEqual(len(echo.received), 1)
        self.assertEqual(inside.received, [])

    @async_test
    async def test_idle_association_expires(self):
        logs = LogCapture(self)
        echo, local, relay, inside = self.echo_relay(idle_timeout=0.3)
        inside.transport.write(b"x", ("127.0.0.1", local))
        await inside.wait(1)
        [closed] = await logs.wait_for("association-closed")
        self.assertEqual(closed["why"], "idle")
        self.assertEqual(len(relay.table), 0)

    @async_test
    async def test_ten_thousand_datagrams_from_fifty_senders_map_back(self):
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        relay = self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} any\n")
        senders = []
        for i in range(50):
            inside = Inside()
            self.udp(inside)
            senders.append(inside)
        per_sender = 200
        window = 4  # 200 datagrams in flight: well inside the sockets' buffers
        for start in range(0, per_sender, window):
            for i, inside in enumerate(senders):
                for n in range(start, start + window):
                    inside.transport.write(b"%d:%d" % (i, n), ("127.0.0.1", local))
            expected = 50 * (start + window)
            received, idle = -1, 0
            while idle < 10:  # until all answers are in, or 0.2 s pass without one
                now = sum(len(x.received) for x in senders)
                if now >= expected:
                    break
                idle = idle + 1 if now == received else 0
                received = now
                await support.deferLater(0.02)
        total = 0
        for i, inside in enumerate(senders):
            got = [data for data, _ in inside.received]
            self.assertTrue(all(d.startswith(b"%d:" % i) for d in got), f"sender {i} got another's answer")
            total += len(got)
        self.assertGreaterEqual(total, 50 * per_sender * 0.99)
        self.assertEqual(len(relay.table), 50)

    @async_test
    async def test_encapsulated_datagrams_go_where_the_header_says_and_come_back_wrapped(self):
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        self.start(f"encapsulate 127.0.0.0/8 {local}\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(udpwire.encode_udp("127.0.0.1", outside, b"wrapped"), ("127.0.0.1", local))
        [(data, _)] = await inside.wait(1)
        packet = udpwire.decode_udp(data)
        self.assertEqual((packet.host, packet.port, packet.data), ("127.0.0.1", outside, b"wrapped"))
        self.assertEqual(echo.received[0][0], b"wrapped")

    @async_test
    async def test_an_answer_too_big_to_wrap_is_dropped_and_counted(self):
        # 65,507 bytes fill an IPv4 datagram: with the header in front, the
        # answer cannot go back; a smaller one can.
        logs = LogCapture(self)

        class Big(protocol.DatagramProtocol):
            def datagramReceived(self, data, addr):
                self.transport.write(b"b" * (65507 if data == b"big" else 100), addr)

        outside = self.udp(Big()).getHost().port
        local = free_udp_port()
        relay = self.start(f"encapsulate 127.0.0.0/8 {local}\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(udpwire.encode_udp("127.0.0.1", outside, b"big"), ("127.0.0.1", local))
        [dropped] = await logs.wait_for("datagram-dropped")
        self.assertEqual(dropped["reason"], "oversize")
        self.assertEqual(relay.counters["dropped-oversize"], 1)
        inside.transport.write(udpwire.encode_udp("127.0.0.1", outside, b"small"), ("127.0.0.1", local))
        [(data, _)] = await inside.wait(1)
        self.assertEqual(len(udpwire.decode_udp(data).data), 100)

    @async_test
    async def test_encapsulated_multicast_and_broadcast_destinations_are_dropped(self):
        logs = LogCapture(self)
        local = free_udp_port()
        relay = self.start(f"encapsulate 127.0.0.0/8 {local}\n", rules="permit 127.0.0.0 255.0.0.0\n")
        inside = Inside()
        self.udp(inside)
        for host in ("224.0.0.251", "255.255.255.255", "::ffff:239.255.255.250", "0.0.0.0"):
            inside.transport.write(udpwire.encode_udp(host, 1900, b"everyone"), ("127.0.0.1", local))
        await logs.wait_for("datagram-dropped")
        for _ in range(50):
            if relay.counters.get("dropped-refused-address") == 4:
                break
            await support.deferLater(0.02)
        self.assertEqual(relay.counters.get("dropped-refused-address"), 4)
        self.assertNotIn("encapsulated-out", relay.counters)

    @async_test
    async def test_encapsulated_destination_denied_by_sockd_conf_is_dropped(self):
        logs = LogCapture(self)
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        self.start(f"encapsulate 127.0.0.0/8 {local}\n",
                   rules=f"deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq {outside}\n"
                         "permit 127.0.0.0 255.0.0.0\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(udpwire.encode_udp("127.0.0.1", outside, b"no"), ("127.0.0.1", local))
        [dropped] = await logs.wait_for("datagram-dropped")
        self.assertEqual(dropped["reason"], "denied")
        self.assertIn("line 1", dropped["detail"])
        self.assertEqual(echo.received, [])

    @async_test
    async def test_fragments_and_bad_headers_are_dropped(self):
        logs = LogCapture(self)
        local = free_udp_port()
        relay = self.start(f"encapsulate 127.0.0.0/8 {local}\n")
        inside = Inside()
        self.udp(inside)
        inside.transport.write(udpwire.encode_udp("127.0.0.1", 9, b"x", frag=1), ("127.0.0.1", local))
        inside.transport.write(b"\x00\x01garbage", ("127.0.0.1", local))
        for _ in range(100):
            if relay.counters.get("dropped-fragment") and relay.counters.get("dropped-bad-header"):
                break
            await support.deferLater(0.02)
        self.assertEqual((relay.counters["dropped-fragment"], relay.counters["dropped-bad-header"]), (1, 1))
        self.assertEqual(len(relay.table), 0)

    @async_test
    async def test_socat_as_the_inside_client(self):
        if not shutil.which("socat"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest(
                "socat is not installed (.ci/run installs it)")
        echo = Echo()
        outside = self.udp(echo).getHost().port
        local = free_udp_port()
        self.start(f"relay 127.0.0.0/8 * {local} 127.0.0.1 {outside} any\n")
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("socat"), ["-t", "2", "-T", "2", "-", f"UDP:127.0.0.1:{local}"],
            env=os.environ.copy(), stdinBytes=b"ping over udp\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"ping over udp\n")


class ReloadAndOptionsTests(TestCase):
    @async_test
    async def test_reload_swaps_lines_and_keeps_them_on_errors(self):
        import tempfile
        logs = LogCapture(self)
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "udprelay.conf")
        first, second = free_udp_port(), free_udp_port()
        with open(path, "w") as f:
            f.write(f"encapsulate 127.0.0.0/8 {first}\n")
        relay = UDPRelayService(udprelay_conf.load_udprelay(path),
                                access.parse_access(support.LOOPBACK_ONLY, "t"), config_path=path)
        relay.startService()
        self.addCleanup(relay.stopService)
        self.assertEqual(set(relay.ports), {first})
        with open(path, "w") as f:
            f.write(f"encapsulate 127.0.0.0/8 {second}\n")
        self.assertTrue(relay.reload())
        self.assertEqual(set(relay.ports), {second})
        with open(path, "w") as f:
            f.write("encapsulate 127.0.0.0/8\n")
        self.assertFalse(relay.reload())
        self.assertEqual(set(relay.ports), {second})
        [failed] = logs.named("reload-failed")
        self.assertIn(f"{path}:1:", failed["problems"])

    def test_udprelay_option_builds_a_named_service(self):
        import tempfile
        from sockssuite import tap
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "udprelay.conf")
        with open(path, "w") as f:
            f.write("relay 127.0.0.0/8 * 15525 127.0.0.1 1525 any\n")
        options = tap.Options()
        options.parseOptions(["--udprelay", path, "--udp-idle-timeout", "30"])
        relay = tap.makeService(options).getServiceNamed("udprelay")
        self.assertEqual(relay.idle_timeout, 30)
        self.assertEqual(relay.config.relays[0].local_port, 15525)
        with open(path, "w") as f:
            f.write("relay 127.0.0.0/8 * 15525\n")
        e = self.assertRaises(Exception, tap.Options().parseOptions, ["--udprelay", path])
        self.assertIn(f"{path}:1:", str(e))
