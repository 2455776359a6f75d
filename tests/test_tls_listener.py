"""A SOCKS port behind TLS (an ``ssl:`` server endpoint, as ``--socks``
accepts any endpoint): every byte the server sends must go through TLS,
including the handshake replies that a plain TCP port sends straight to its
socket."""

import datetime
import os
import socket
import ssl
import tempfile

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from sockssuite import access
from sockssuite.service import SOCKSServerService
from sockssuite.server import ServerSettings
from sockssuite.wire import socks4
from sockssuite.wire import socks5 as wire

from .support import Echo, async_test, listen


def self_signed(folder: str) -> str:
    """A PEM file with a fresh key and a self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = os.path.join(folder, "server.pem")
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


def tls_conversation(port: int, pem: str, send: bytes, expect: int) -> bytes:
    """Over TLS (certificate checked), send bytes, read ``expect`` bytes back."""
    context = ssl.create_default_context(cafile=pem)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(send)
            got = b""
            while len(got) < expect:
                chunk = s.recv(expect - len(got))
                if not chunk:
                    break
                got += chunk
            return got


class TLSListenerTests(TestCase):
    def setUp(self):
        try:
            import OpenSSL  # noqa: F401 - Twisted's ssl: endpoints need it
            import cryptography  # noqa: F401
            import service_identity  # noqa: F401
        except ImportError:
            raise SkipTest("needs Twisted[tls] (the test extra)")

    @async_test
    async def test_socks4_and_socks5_over_tls(self):
        folder = tempfile.mkdtemp()
        pem = self_signed(folder)
        echo = await listen(self, Echo)
        service = SOCKSServerService([f"ssl:0:interface=127.0.0.1:privateKey={pem}"],
                                     access.parse_access("permit 127.0.0.0/8\n"), ServerSettings(),
                                     shutdown_grace=0)
        service.startService()
        self.addCleanup(service.stopService)
        from twisted.internet import defer
        await defer.gatherResults(service._listening)
        port = service.addresses[0].port
        echo_port = echo.getHost().port

        got = await threads.deferToThread(
            tls_conversation, port, pem,
            socks4.encode_request(socks4.CONNECT, echo_port, "127.0.0.1") + b"ping", 8 + 4)
        self.assertEqual(got, socks4.encode_reply(90, echo_port, "127.0.0.1")[:2] + got[2:8] + b"ping")
        self.assertEqual(got[:2], b"\x00\x5a")

        got = await threads.deferToThread(
            tls_conversation, port, pem,
            wire.encode_greeting(b"\x00") + wire.encode_request(wire.CONNECT, "127.0.0.1", echo_port)
            + b"pong", 2 + 10 + 4)
        self.assertEqual(got[:2], b"\x05\x00")
        self.assertEqual(wire.ReplyParser().feed(got[2:12]).code, wire.SUCCEEDED)
        self.assertEqual(got[12:], b"pong")
