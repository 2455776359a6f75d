#!/usr/bin/env python3
"""Slowloris against ``twistd sockssuite``: the full-size run of issue 9.

Starts ``twistd -n sockssuite`` on a free loopback port in a child process,
opens CLIENTS connections (in waves of 50, the listen backlog) that each send
the start of a SOCKS4 request one byte every INTERVAL seconds and never finish
it, and meanwhile measures a normal client's handshake (connect, CONNECT
request, reply 90 from a loopback destination) every 0.25 s.  Reports how
many attackers were cut, how long after connecting, the normal client's
handshake times, and the daemon's CPU and RSS.

Loopback only; every wait is bounded (the run gives up after
HANDSHAKE_TIMEOUT + 60 s).

    python bench/stress_slowloris.py [--clients 2000] [--handshake-timeout 5] [--interval 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REQUEST_START = bytes([4, 1, 0, 80, 127, 0, 0, 1]) + b"u" * 1000  # never NUL-terminated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd() -> list[str]:
    sibling = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [sibling] if os.access(sibling, os.X_OK) else [sys.executable, "-m", "twisted"]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def handshake(port: int, destination_port: int) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(5)
        s.sendall(bytes([4, 1]) + destination_port.to_bytes(2, "big") + bytes([127, 0, 0, 1]) + b"\0")
        reply = b""
        while len(reply) < 8:
            chunk = s.recv(8 - len(reply))
            if not chunk:
                break
            reply += chunk
    if len(reply) != 8 or reply[1] != 90:
        raise RuntimeError(f"normal client got {reply!r}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--handshake-timeout", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between an attacker's bytes")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    need = args.clients + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        print(f"need {need} file descriptors, the hard limit is {hard}", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    folder = tempfile.mkdtemp(prefix="slowloris-")
    port = free_port()
    daemon = subprocess.Popen(
        twistd() + ["-n", "-o", "--pidfile=", f"--logfile={folder}/twistd.log", "sockssuite",
                    "--socks", f"tcp:{port}:interface=127.0.0.1",
                    "--handshake-timeout", str(args.handshake_timeout),
                    "--max-connections", str(args.clients + 100),
                    "--max-connections-per-client", str(args.clients + 100)],
        cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    destination = socket.socket()
    destination.bind(("127.0.0.1", 0))
    destination.listen(1024)
    destination_port = destination.getsockname()[1]
    selector = selectors.DefaultSelector()
    attackers: dict[socket.socket, dict] = {}
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("twistd sockssuite did not start")
                time.sleep(0.1)
        handshake(port, destination_port)  # warm up
        cpu0, started = cpu_seconds(daemon.pid), time.monotonic()
        give_up = started + args.handshake_timeout + 60
        opened = 0
        times: list[float] = []
        next_normal = started
        next_drip = started + args.interval
        cut_after: list[float] = []
        got_91 = 0
        peak_rss = 0
        while (opened < args.clients or attackers) and time.monotonic() < give_up:
            now = time.monotonic()
            if opened < args.clients:
                for _ in range(min(50, args.clients - opened)):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    attackers[s] = {"t": time.monotonic(), "sent": 0, "got": b""}
                    selector.register(s, selectors.EVENT_READ)
                    opened += 1
            if now >= next_drip:
                next_drip = now + args.interval
                for s, state in list(attackers.items()):
                    try:
                        s.send(REQUEST_START[state["sent"]:state["sent"] + 1])
                        state["sent"] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        pass  # it was cut; the read side notices
            if now >= next_normal and opened >= min(args.clients, 200):
                next_normal = now + 0.25
                times.append(handshake(port, destination_port))
                try:
                    destination.setblocking(False)
                    while True:
                        destination.accept()[0].close()
                except OSError:
                    pass
                peak_rss = max(peak_rss, rss_kib(daemon.pid))
            for key, _ in selector.select(0.02):
                s = key.fileobj
                state = attackers[s]
                try:
                    data = s.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                state["got"] += data
                if not data:
                    cut_after.append(time.monotonic() - state["t"])
                    got_91 += state["got"] == bytes([0, 91, 0, 0, 0, 0, 0, 0])
                    selector.unregister(s)
                    s.close()
                    del attackers[s]
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(daemon.pid) - cpu0) / elapsed
        result = {
            "clients": args.clients,
            "handshake_timeout_s": args.handshake_timeout,
            "cut": len(cut_after),
            "cut_with_91": got_91,
            "still_open_at_give_up": len(attackers),
            "cut_after_min_s": round(min(cut_after), 3) if cut_after else None,
            "cut_after_max_s": round(max(cut_after), 3) if cut_after else None,
            "normal_handshakes": len(times),
            "normal_handshake_median_ms": round(statistics.median(times) * 1000, 2) if times else None,
            "normal_handshake_max_ms": round(max(times) * 1000, 2) if times else None,
            "daemon_cpu_share": round(cpu, 3),
            "daemon_peak_rss_kib": peak_rss,
            "run_s": round(elapsed, 1),
            "daemon_alive": daemon.poll() is None,
        }
    finally:
        for s in attackers:
            s.close()
        destination.close()
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    ok = (result["cut"] == args.clients and result["normal_handshake_max_ms"] is not None
          and result["normal_handshake_max_ms"] < 100)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
