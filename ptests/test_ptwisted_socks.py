"""The SOCKS service under pytest-twisted: real loopback sockets, curl and a raw
SOCKS4 client, each test an ``async def`` run on pytest-twisted's reactor."""

import hashlib

import pytest
import pytest_twisted

from sockssuite.wire import socks4
from tests import support
from tests.support import Echo, LogCapture, listen, socks_connect, start_server
from tests.test_real_clients import CURL_SOCKS_ERROR, WebServer, run_curl


@pytest_twisted.ensureDeferred
async def test_curl_socks4a_downloads_through_the_proxy(cleanups):
    logs = LogCapture(cleanups)
    web = await WebServer(cleanups).start()
    proxy = support.port_of(await start_server(cleanups))
    out, err, code = await run_curl("--fail", "-x", f"socks4a://alice@127.0.0.1:{proxy}",
                                    web.url(host="localhost"))
    assert code == 0, err
    assert hashlib.sha256(out).hexdigest() == web.sha256
    [event] = await logs.wait_for("session-closed")
    assert (event["user"], event["requested"], event["resolved"], event["outcome"]) == (
        "alice", "localhost", "127.0.0.1", "closed")
    assert event["bytes_down"] > len(web.blob)


@pytest_twisted.ensureDeferred
async def test_curl_is_refused_with_its_socks_error_when_denied(cleanups):
    logs = LogCapture(cleanups)
    web = await WebServer(cleanups).start()
    proxy = support.port_of(await start_server(cleanups, "# nothing but port 7\n"
                                                         "permit 127.0.0.0 255.0.0.0 eq 7\n"
                                                         "deny 0.0.0.0 0.0.0.0\n"))
    out, err, code = await run_curl("-x", f"socks4a://127.0.0.1:{proxy}", web.url(host="localhost"))
    assert code == CURL_SOCKS_ERROR, err
    assert out == b""
    [denied] = await logs.wait_for("denied")
    assert denied["rule_line"] == 3


@pytest_twisted.ensureDeferred
async def test_raw_socks4_connect_relays_both_ways(cleanups):
    server = await start_server(cleanups)
    echo = await listen(cleanups, Echo)
    client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port,
                                        userid=b"raw")
    assert reply.code == socks4.GRANTED
    assert reply.address == "127.0.0.1"
    assert reply.port not in (0, echo.getHost().port)
    client.transport.write(b"hello through the proxy")
    assert await client.wait_bytes(23) == b"hello through the proxy"
    client.transport.loseConnection()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_raw_socks4a_connect_with_pipelined_bytes(cleanups):
    logs = LogCapture(cleanups)
    server = await start_server(cleanups)
    echo = await listen(cleanups, Echo)
    client, reply = await socks_connect(support.port_of(server), "localhost", echo.getHost().port,
                                        socks4a=True, extra=b"early|")
    assert reply.code == socks4.GRANTED
    client.transport.write(b"late")
    assert await client.wait_bytes(10) == b"early|late"
    client.transport.loseConnection()
    [event] = await logs.wait_for("session-closed")
    assert (event["requested"], event["resolved"], event["bytes_up"]) == ("localhost", "127.0.0.1", 10)


@pytest.mark.parametrize("rules, expected_line", [
    ("deny 0.0.0.0 0.0.0.0\n", 1),
    ("permit 10.0.0.0 255.0.0.0\n", None),
])
@pytest_twisted.ensureDeferred
async def test_raw_socks4_denied_gets_91(cleanups, rules, expected_line):
    logs = LogCapture(cleanups)
    server = await start_server(cleanups, rules)
    client, reply = await socks_connect(support.port_of(server), "127.0.0.1", 9)
    assert reply.code == socks4.REJECTED
    await client.closed
    [denied] = await logs.wait_for("denied")
    assert denied["rule_line"] == expected_line
