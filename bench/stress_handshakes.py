#!/usr/bin/env python3
"""Hostile handshakes at full size: a million generated and mutated SOCKS
requests against a ``twistd sockssuite`` subprocess (issue 9).

    python bench/stress_handshakes.py                        # 1,000,000 requests
    python bench/stress_handshakes.py --requests 20000       # a short run
    python bench/stress_handshakes.py --minutes 10           # as many as fit

The requests are the CI test's (tests/test_fuzz_sockets.py): valid SOCKS4/4a
requests damaged by the same byte-level mutator, split into pieces and
half-closed at random, and each answer is checked against the same oracle
(90 only for a valid request to the echo server, else exactly one 91, and
the connection closed within a bound).  A normal client runs throughout and
its handshake latency is reported.  The server runs from a generated .tac:
the options of ``twistd sockssuite`` plus a fake resolver (SOCKS4a names
never reach a DNS server) and a log observer that counts session outcomes and
keeps every error-level or failure event.

Everything is on 127.0.0.1; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench import echo_stream as echo  # noqa: E402  (bench/bench.py)

from tests.test_fuzz_sockets import (HANG_LIMIT, NAMES, check, mutated_case,  # noqa: E402
                                     predict, random_valid, rules_for, split)

LOOPBACK = "127.0.0.1"

TAC = r'''
import json, os
from twisted.application import service
from twisted.internet import defer, error, reactor, task
from twisted.internet.interfaces import IResolverSimple
from zope.interface import implementer
from twisted.logger import globalLogPublisher, formatEvent
from sockssuite import tap

NAMES = {names!r}

@implementer(IResolverSimple)
class FakeResolver:
    def getHostByName(self, name, timeout=None):
        address = NAMES.get(name.lower().rstrip("."))
        if address is None:
            return defer.fail(error.DNSLookupError(name))
        return defer.succeed(address)

reactor.installResolver(FakeResolver())
counts = {{}}
bad = []

def observe(event):
    if event.get("event") == "session-closed":
        counts[event["outcome"]] = counts.get(event["outcome"], 0) + 1
    level = getattr(event.get("log_level"), "name", "")
    if "log_failure" in event or level in ("error", "critical"):
        text = formatEvent(event)
        if "log_failure" in event:
            text += "\n" + event["log_failure"].getTraceback()
        bad.append(text[:4000])

def dump():
    tmp = {summary!r} + ".tmp"
    with open(tmp, "w") as f:
        json.dump({{"counts": counts, "bad": bad[:100], "bad_total": len(bad)}}, f)
    os.replace(tmp, {summary!r})

globalLogPublisher.addObserver(observe)
task.LoopingCall(dump).start(1.0)
options = tap.Options()
options.parseOptions({argv!r})
application = service.Application("stress")
tap.makeService(options).setServiceParent(application)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def raise_fd_limit(n: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    except (ValueError, OSError):
        pass


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _has_option(name: str) -> bool:
    from sockssuite import tap
    return any(p[0] == name for p in tap.Options.optParameters)


def start_server(folder: str, echo_port: int, handshake_timeout: float, bind_timeout: float):
    port = free_port()
    access = os.path.join(folder, "sockd.conf")
    with open(access, "w") as f:
        f.write(rules_for(echo_port))
    summary = os.path.join(folder, "summary.json")
    argv = ["--socks", f"tcp:{port}:interface={LOOPBACK}:backlog=4096", "--access", access,
            "--handshake-timeout", str(handshake_timeout), "--bind-timeout", str(bind_timeout),
            "--resolve-timeout", "1", "--connect-timeout", "2", "--max-connections", "100000",
            "--socks-versions", "4"]  # the oracle is SOCKS4's: a first byte 5 must get 91
    if _has_option("max-connections-per-client"):  # every client here is 127.0.0.1
        argv += ["--max-connections-per-client", "100000"]
    tac = os.path.join(folder, "stress.tac")
    with open(tac, "w") as f:
        f.write(TAC.format(names=NAMES, summary=summary, argv=argv))
    twistd = shutil.which("twistd")
    cmd = ([twistd] if twistd else [sys.executable, "-m", "twisted"]) + [
        # --logfile=- (stdout, discarded), never --logfile=/dev/null: twistd
        # rotates its log file at 1 MB by renaming it, which would replace
        # /dev/null with a regular file.
        "-n", "--pidfile=", "--logfile=-", "-y", tac]
    # The twistd log (a line per session) is not kept: the .tac's observer
    # counts outcomes and keeps the error events; start-up errors go to stderr.
    proc = subprocess.Popen(cmd, preexec_fn=raise_fd_limit, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(folder, "stderr.txt"), "w"), cwd=folder)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return proc, port, summary
        except OSError:
            time.sleep(0.1)
    proc.kill()
    with open(os.path.join(folder, "stderr.txt")) as f:
        raise RuntimeError("the server did not start listening:\n" + f.read()[-3000:])


async def one_case(proxy_port, echo_port, case, rng):
    data, pieces, half_close = case
    kind, leftover = predict(data, echo_port)
    received = bytearray()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, proxy_port), 10)
    except (OSError, asyncio.TimeoutError) as e:
        return "connect", f"cannot connect: {e!r}"

    async def read():
        # Read from the start, as a real client does: a 91 that arrived
        # while later pieces were still being sent must not sit unread when
        # the server's RST (for those pieces) purges the receive queue.
        want = 8 + len(leftover) if kind == "granted" else 1 << 20
        try:
            while len(received) < want:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received.extend(chunk)
        except (ConnectionError, OSError):
            pass

    async def talk():
        reading = asyncio.ensure_future(read())
        parts = split(data, pieces, rng)
        try:
            for i, part in enumerate(parts):
                if reading.done():
                    break
                writer.write(part)
                if i < len(parts) - 1:
                    await asyncio.sleep(rng.random() * 0.05)
            if half_close and not reading.done():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        try:
            await reading
        finally:
            reading.cancel()

    try:
        await asyncio.wait_for(talk(), HANG_LIMIT)
        hung = False
    except asyncio.TimeoutError:
        hung = True
    writer.transport.abort() if hung else writer.close()
    if hung:
        return "hung", f"open after {HANG_LIMIT}s ({kind}, got {bytes(received[:40])!r}) for {data[:60]!r}"
    problem = check(kind, leftover, bytes(received), pieces)
    if problem is not None:
        return "wrong", f"{problem} for {data[:60]!r} (pieces={pieces} half_close={half_close})"
    if kind == "refused" and not received:
        return "refused-reply-lost-to-rst", None
    return kind, None


async def normal_client(proxy_port, echo_port, stop, latencies, failures):
    request = bytes([4, 1]) + echo_port.to_bytes(2, "big") + socket.inet_aton(LOOPBACK) + b"normal\0"
    for _ in range(10_000_000):
        if stop.is_set():
            return
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, proxy_port), 10)
            writer.write(request)
            reply = await asyncio.wait_for(reader.readexactly(8), 10)
            latencies.append(time.monotonic() - started)
            if reply[1] != 90:
                failures.append(f"reply {reply[1]}")
            writer.write(b"0123456789abcdef")
            if await asyncio.wait_for(reader.readexactly(16), 10) != b"0123456789abcdef":
                failures.append("echo wrong")
            writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            failures.append(repr(e))
        await asyncio.sleep(0.1)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


async def run(args):
    folder = tempfile.mkdtemp(prefix="stress-hs-")
    echo_server = await asyncio.start_server(echo, LOOPBACK, 0, backlog=4096)
    echo_port = echo_server.sockets[0].getsockname()[1]
    proc, proxy_port, summary = start_server(folder, echo_port, args.handshake_timeout, args.bind_timeout)
    rng = random.Random(args.seed)
    tallies = {}
    problems = []
    latencies, failures = [], []
    stop = asyncio.Event()
    normal = asyncio.ensure_future(normal_client(proxy_port, echo_port, stop, latencies, failures))
    started = time.monotonic()
    deadline = started + args.minutes * 60
    issued = 0
    rss_start = rss_kib(proc.pid)

    async def worker():
        nonlocal issued
        while issued < args.requests and time.monotonic() < deadline:
            issued += 1
            case = mutated_case(rng, random_valid(rng, echo_port))
            tally, problem = await one_case(proxy_port, echo_port, case, rng)
            tallies[tally] = tallies.get(tally, 0) + 1
            if problem is not None and len(problems) < 50:
                problems.append(problem)

    async def progress():
        for _ in range(100000):
            await asyncio.sleep(args.report)
            done = sum(tallies.values())
            print(f"{time.monotonic() - started:7.0f}s {done:9d} done "
                  f"({done / (time.monotonic() - started):.0f}/s) {tallies} "
                  f"normal p99={pct(latencies, 0.99) * 1000:.1f}ms rss={rss_kib(proc.pid)}KiB",
                  flush=True)

    reporter = asyncio.ensure_future(progress())
    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        await normal
        reporter.cancel()
        await asyncio.sleep(2.5)  # the server writes its summary every second
        alive = proc.poll() is None
        rss_end = rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        echo_server.close()
    with open(summary) as f:
        server = json.load(f)
    done = sum(tallies.values())
    result = {
        "requests": done,
        "seconds": round(elapsed, 1),
        "per_second": round(done / elapsed),
        "answers": tallies,
        "wrong_or_hung": done - sum(v for k, v in tallies.items() if k in ("granted", "bind", "refused", "refused-reply-lost-to-rst")),
        "server_outcomes": server["counts"],
        "server_error_events": server["bad_total"],
        "server_alive_at_end": alive,
        "server_rss_kib": [rss_start, rss_end],
        "normal_client": {"handshakes": len(latencies), "failures": len(failures),
                          "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
                          "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
                          "max_ms": round(max(latencies) * 1000, 2) if latencies else None},
    }
    print(json.dumps(result, indent=2))
    for p in problems[:20]:
        print("PROBLEM:", p)
    for b in server["bad"][:5]:
        print("SERVER ERROR EVENT:", b)
    for f in failures[:5]:
        print("NORMAL CLIENT FAILURE:", f)
    shutil.rmtree(folder, ignore_errors=True)
    ok = (result["wrong_or_hung"] == 0 and not server["bad_total"] and alive and not failures)
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=60.0, help="stop after this long in any case")
    parser.add_argument("--concurrency", type=int, default=600)
    parser.add_argument("--handshake-timeout", type=float, default=1.0)
    parser.add_argument("--bind-timeout", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=float, default=30.0, help="seconds between progress lines")
    args = parser.parse_args()
    raise_fd_limit()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
