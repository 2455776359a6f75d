#!/usr/bin/env python3
"""Soak: a ``twistd sockssuite`` subprocess under mixed load for a fixed time,
its RSS and open file descriptors sampled every 10 seconds (issue 9).

    python bench/soak.py                          # 30 minutes
    python bench/soak.py --minutes 5 --png docs/_static/soak.png

The load (all on 127.0.0.1, from this process):
  * CONNECT sessions to an echo server, each echoing a random 1 byte to 256 KiB;
  * CONNECT sessions with USERID "soak", which an access line sends through an
    ident check (``?=I``) against a fake identd run here;
  * BIND sessions: BIND request, then this process connects in from
    127.0.0.1, and bytes go both ways;
  * UDP datagrams through a ``relay`` line of an udprelay.conf to a UDP echo,
    a new socket (a new association) every few datagrams;
  * a few long sessions that stay open for a minute each, exchanging a little.

Every 10 s the proxy's RSS (VmRSS) and fd count (/proc/PID/fd) are written to
a CSV with the operation counts so far; at the end, a PNG is drawn when
matplotlib is installed (optional) and a summary is printed: RSS and fds at
the start, after the warm-up and at the end, operations, failures.
Every loop is bounded in time (--minutes) and count.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import socket
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench import Sockssuite, echo_stream as tcp_echo, raise_fd_limit  # noqa: E402  (bench/bench.py)

LOOPBACK = "127.0.0.1"


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def request(command: int, port: int, userid: bytes = b"soaker") -> bytes:
    return struct.pack("!BBH4s", 4, command, port, socket.inet_aton(LOOPBACK)) + userid + b"\0"


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# -- destinations ---------------------------------------------------------------

async def fake_identd(reader, writer):
    """Answers every query: the connection belongs to user "soak"."""
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        ports = line.decode("ascii", "replace").strip()
        writer.write(f"{ports} : USERID : UNIX : soak\r\n".encode())
        await writer.drain()
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


class UDPEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait(data)


# -- load -----------------------------------------------------------------------

class Load:
    def __init__(self, proxy_port, echo_port, udp_port, deadline, rng):
        self.proxy_port = proxy_port
        self.echo_port = echo_port
        self.udp_port = udp_port
        self.deadline = deadline
        self.rng = rng
        self.counts = {"connect": 0, "ident": 0, "bind": 0, "udp": 0, "long": 0}
        self.failures = {}
        self.failure_samples = []

    def fail(self, kind, what):
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.failure_samples) < 20:
            self.failure_samples.append(f"{kind}: {what}")

    async def _open(self, req):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, self.proxy_port), 10)
        writer.write(req)
        reply = await asyncio.wait_for(reader.readexactly(8), 20)
        return reader, writer, reply

    async def _echo_through(self, reader, writer, size):
        payload = self.rng.randbytes(size)
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(size), 30)
        return got == payload

    async def loop(self, kind, body, pause):
        for _ in range(10_000_000):
            if time.monotonic() >= self.deadline:
                return
            try:
                await body()
                self.counts[kind] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, AssertionError) as e:
                self.fail(kind, repr(e))
            await asyncio.sleep(pause)

    async def connect(self, userid=b"soaker"):
        reader, writer, reply = await self._open(request(1, self.echo_port, userid))
        try:
            assert reply[1] == 90, f"reply {reply[1]}"
            assert await self._echo_through(reader, writer, int(2 ** self.rng.uniform(0, 18))), "echo"
        finally:
            writer.close()

    async def ident(self):
        await self.connect(b"soak")

    async def bind(self):
        reader, writer, reply = await self._open(request(2, self.echo_port))
        try:
            assert reply[1] == 90, f"first reply {reply[1]}"
            port = struct.unpack("!H", reply[2:4])[0]
            in_reader, in_writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 10)
            try:
                second = await asyncio.wait_for(reader.readexactly(8), 10)
                assert second[1] == 90, f"second reply {second[1]}"
                data = self.rng.randbytes(self.rng.randrange(1, 4096))
                writer.write(data)
                assert await asyncio.wait_for(in_reader.readexactly(len(data)), 10) == data
                in_writer.write(data)
                assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data
            finally:
                in_writer.close()
        finally:
            writer.close()

    async def udp(self):
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            UDPClient, local_addr=(LOOPBACK, 0), remote_addr=(LOOPBACK, self.udp_port))
        try:
            for _ in range(5):
                data = self.rng.randbytes(self.rng.randrange(1, 1400))
                transport.sendto(data)
                assert await asyncio.wait_for(proto.queue.get(), 5) == data, "udp echo"
        finally:
            transport.close()

    async def long(self):
        reader, writer, reply = await self._open(request(1, self.echo_port))
        try:
            assert reply[1] == 90, f"reply {reply[1]}"
            for _ in range(12):
                if time.monotonic() >= self.deadline:
                    break
                assert await self._echo_through(reader, writer, 100), "echo"
                await asyncio.sleep(5)
        finally:
            writer.close()


async def sampler(pid, load, path, started, deadline, interval):
    rows = []
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["seconds", "rss_kib", "fds", *load.counts, "failures"])
        for _ in range(1_000_000):
            rss = 0
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1])
            except OSError:
                pass
            row = [round(time.monotonic() - started), rss, fd_count(pid), *load.counts.values(),
                   sum(load.failures.values())]
            out.writerow(row)
            f.flush()
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in zip(["t", "rss_kib", "fds", *load.counts, "failures"], row)),
                  flush=True)
            if time.monotonic() >= deadline:
                return rows
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    return rows


def plot(rows, path, minutes, warmup):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)")
        return False
    t = [r[0] / 60 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax1.plot(t, [r[1] / 1024 for r in rows], color="tab:blue")
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, [r[2] for r in rows], color="tab:orange")
    ax2.set_ylabel("open fds")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("minutes")
    for ax in (ax1, ax2):
        ax.axvline(warmup / 60, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    ops = sum(rows[-1][3:-1])
    fig.suptitle(f"sockssuite soak: {minutes:g} min mixed load (CONNECT, ident, BIND, UDP), "
                 f"{ops} operations", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")
    return True


async def run(args):
    folder = tempfile.mkdtemp(prefix="soak-")
    echo_server = await asyncio.start_server(tcp_echo, LOOPBACK, 0, backlog=1024)
    echo_port = echo_server.sockets[0].getsockname()[1]
    identd = await asyncio.start_server(fake_identd, LOOPBACK, 0)
    ident_port = identd.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    udp_echo, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=(LOOPBACK, 0))
    udp_echo_port = udp_echo.get_extra_info("sockname")[1]
    relay_port = free_port(socket.SOCK_DGRAM)
    access = os.path.join(folder, "sockd.conf")
    with open(access, "w") as f:
        f.write("permit ?=I *=soak 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255\n"
                "permit 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255\n")
    udprelay = os.path.join(folder, "udprelay.conf")
    with open(udprelay, "w") as f:
        f.write(f"relay 127.0.0.1 * {relay_port} 127.0.0.1 {udp_echo_port} any\n")
    extra = ["--access", access, "--udprelay", udprelay, "--udp-interface", LOOPBACK,
             "--udp-idle-timeout", "30", "--ident-port", str(ident_port), "--ident-timeout", "5",
             "--bind-interface", LOOPBACK, "--bind-timeout", "10"]
    from sockssuite import tap
    if any(p[0] == "max-connections-per-client" for p in tap.Options.optParameters):
        extra += ["--max-connections-per-client", "100000"]
    proxy = Sockssuite(extra)
    proxy.start()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    rng = random.Random(args.seed)
    load = Load(proxy.port, echo_port, relay_port, deadline, rng)
    tasks = []
    for _ in range(args.connects):
        tasks.append(load.loop("connect", load.connect, 0.005))
    tasks += [load.loop("ident", load.ident, 0.02) for _ in range(2)]
    tasks += [load.loop("bind", load.bind, 0.02) for _ in range(2)]
    tasks += [load.loop("udp", load.udp, 0.02) for _ in range(2)]
    tasks += [load.loop("long", load.long, 0.1) for _ in range(5)]
    try:
        rows, *_ = await asyncio.gather(sampler(proxy.proc.pid, load, args.csv, started, deadline,
                                                args.interval), *tasks)
    finally:
        alive = proxy.proc.poll() is None
        proxy.stop()
        echo_server.close()
        identd.close()
        udp_echo.close()
    warm = next((r for r in rows if r[0] >= args.warmup), rows[-1])
    print(f"csv: {args.csv}")
    print(f"duration: {args.minutes:g} min; operations: {load.counts}; failures: {load.failures}")
    print(f"RSS KiB: start {rows[0][1]}, after {args.warmup}s warm-up {warm[1]}, end {rows[-1][1]}, "
          f"max after warm-up {max(r[1] for r in rows if r[0] >= warm[0])}")
    print(f"fds: start {rows[0][2]}, after warm-up {warm[2]}, end {rows[-1][2]}, "
          f"max after warm-up {max(r[2] for r in rows if r[0] >= warm[0])}")
    print(f"proxy alive at the end: {alive}")
    for s in load.failure_samples[:10]:
        print("  failure:", s)
    if args.png:
        plot(rows, args.png, args.minutes, args.warmup)
    return 0 if alive and not load.failures else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds counted as warm-up")
    parser.add_argument("--connects", type=int, default=8, help="concurrent CONNECT loops")
    parser.add_argument("--csv", default="soak.csv")
    parser.add_argument("--png", default="soak.png", help="'' for none")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    raise_fd_limit()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
