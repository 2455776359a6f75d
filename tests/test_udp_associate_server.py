"""SOCKS5 UDP ASSOCIATE through the server, over real sockets on loopback:
the association lives as long as its TCP connection, every datagram's
destination goes through sockd.conf (``cmd=udp``), answers come back wrapped
with their source, and a real client (PySocks) uses it."""

import socket

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from sockssuite.wire import socks5 as wire
from sockssuite.wire import udp as udpwire

from . import support
from .support import LogCapture, start_server
from .test_ipv6 import socks5
from .test_server import async_test


class UDPEcho(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(b"echo:" + data, addr)


def udp_echo(testcase, interface="127.0.0.1"):
    port = reactor.listenUDP(0, UDPEcho(), interface=interface)
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def exchange(family, relay, packets, timeout=2.0):
    """Send each datagram to the relay from one client socket (in a thread);
    the decoded answers that came back within *timeout*."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        s.settimeout(timeout)
        for packet in packets:
            s.sendto(packet, relay)
        answers = []
        try:
            while True:
                answers.append(udpwire.decode_udp(s.recv(70000)))
        except socket.timeout:
            pass
        return answers


def port_is_free(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class UDPAssociateTests(TestCase):
    @async_test
    async def test_round_trip_and_the_association_ends_with_its_tcp_connection(self):
        logs = LogCapture(self)
        echo = udp_echo(self)
        server = await start_server(self)
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual((reply.code, reply.host), (wire.SUCCEEDED, "127.0.0.1"))
        relay = (reply.host, reply.port)
        answers = await threads.deferToThread(exchange, socket.AF_INET, relay, [
            udpwire.encode_udp("127.0.0.1", echo, b"one"),
            udpwire.encode_udp("localhost", echo, b"two"),
            udpwire.encode_udp("127.0.0.1", echo, b"fragment", frag=1),  # dropped: no reassembly
        ])
        self.assertEqual(sorted((a.host, a.port, a.data) for a in answers),
                         [("127.0.0.1", echo, b"echo:one"), ("127.0.0.1", echo, b"echo:two")])
        self.assertFalse(port_is_free(*relay))
        client.transport.write(b"ignored: the TCP connection carries nothing")
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["command"], event["outcome"]), ("udp", "closed"))
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (6, 16))
        self.assertEqual(event["datagrams"]["up"], 2)
        self.assertEqual(event["datagrams"]["down"], 2)
        self.assertEqual(event["datagrams"]["drops"], {"fragment": 1})
        self.assertTrue(port_is_free(*relay), "the relay port outlived its TCP connection")

    @async_test
    async def test_each_destination_is_decided_by_the_rules(self):
        allowed, blocked = udp_echo(self), udp_echo(self)
        server = await start_server(self, f"deny cmd=udp 127.0.0.0/8 127.0.0.1/32 eq {blocked}\n"
                                          "permit 127.0.0.0/8\n")
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        answers = await threads.deferToThread(exchange, socket.AF_INET, (reply.host, reply.port), [
            udpwire.encode_udp("127.0.0.1", blocked, b"no"),
            udpwire.encode_udp("127.0.0.1", allowed, b"yes"),
        ])
        self.assertEqual([(a.port, a.data) for a in answers], [(allowed, b"echo:yes")])
        client.transport.loseConnection()

    @async_test
    async def test_a_client_no_line_permits_udp_for_gets_not_allowed(self):
        logs = LogCapture(self)
        server = await start_server(self, "permit cmd=connect,bind 127.0.0.0/8\n")
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual(reply.code, wire.NOT_ALLOWED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["command"], event["outcome"]), ("udp", "denied"))

    @async_test
    async def test_ipv6_client_and_destination(self):
        echo = udp_echo(self, "::1")
        server = await start_server(self, "permit ::1 ::/0\n", listen_on=r"tcp6:0:interface=\:\:1")
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "::", 0, proxy_host="::1")
        self.assertEqual((reply.code, reply.host), (wire.SUCCEEDED, "::1"))
        answers = await threads.deferToThread(exchange, socket.AF_INET6, (reply.host, reply.port),
                                              [udpwire.encode_udp("::1", echo, b"six")])
        self.assertEqual([(a.host, a.port, a.data) for a in answers], [("::1", echo, b"echo:six")])
        client.transport.loseConnection()

    @async_test
    async def test_a_later_line_that_needs_ident_is_not_skipped(self):
        # Line 1 (no ident) permits one destination; line 2 permits the rest
        # under ?=i.  The identd names someone else than the client's USERID
        # (empty, SOCKS5 without authentication): line 2's datagrams must be
        # dropped, as its CONNECTs are refused, and line 1's still go.
        from .test_ident import answering, start_identd
        identd, ident_port = await start_identd(self, answering(b" : USERID : UNIX : mallory\r\n"))
        echo_1, echo_2 = udp_echo(self), udp_echo(self)
        server = await start_server(self, f"permit ?=n cmd=udp 127.0.0.0/8 127.0.0.1/32 eq {echo_1}\n"
                                          "permit ?=i 127.0.0.0/8\n", ident_port=ident_port)
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual(reply.code, wire.SUCCEEDED)
        answers = await threads.deferToThread(exchange, socket.AF_INET, (reply.host, reply.port), [
            udpwire.encode_udp("127.0.0.1", echo_1, b"line 1"),
            udpwire.encode_udp("127.0.0.1", echo_2, b"line 2")])
        self.assertEqual([(a.port, a.data) for a in answers], [(echo_1, b"echo:line 1")])
        self.assertEqual(len(identd.queries), 1)  # asked once, at setup
        logs = LogCapture(self)
        client.transport.loseConnection()
        [event] = await logs.wait_for("session-closed")
        self.assertTrue(event["ident"].startswith("mismatch"), event["ident"])
        self.assertEqual(event["datagrams"]["drops"], {"denied": 1})

    @async_test
    async def test_idle_association_is_closed(self):
        logs = LogCapture(self)
        server = await start_server(self, idle_timeout=0.5)
        client, reply = await socks5(support.port_of(server), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual(reply.code, wire.SUCCEEDED)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "idle-timeout")
        await client.closed

    @async_test
    async def test_pysocks_udp_client(self):
        import socks
        echo = udp_echo(self)
        server = await start_server(self)

        def talk():
            s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.set_proxy(socks.SOCKS5, "127.0.0.1", support.port_of(server))
                s.settimeout(5)
                s.sendto(b"via pysocks", ("127.0.0.1", echo))
                return s.recvfrom(1000)
            finally:
                s.close()

        data, source = await threads.deferToThread(talk)
        self.assertEqual((data, source), (b"echo:via pysocks", ("127.0.0.1", echo)))
        await defer.succeed(None)
