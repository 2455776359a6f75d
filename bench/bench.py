#!/usr/bin/env python3
"""Benchmark sockssuite against a direct connection and Dante, in one run.

    python bench/bench.py                 # the full run (several minutes)
    python bench/bench.py --quick         # a smoke run of a few seconds per figure

Everything talks to 127.0.0.1 only.  The proxies and the backend servers run
as separate processes from the load generator (this script); every loop is
bounded in count and in time.  Machines here are noisy: read the ratios in
the table (same run, same machine), not the absolute figures.

Figures, per target (direct = no proxy; sockssuite; Dante when `danted` is
installed; on request, `--targets floor,...`: a bare SOCKS4 relay on selectors,
what Python and the kernel cost below any real proxy):
  * one-stream throughput, MiB/s, up (client -> server) and down;
  * CPU seconds the proxy spent per relayed GiB (from /proc, all its processes);
  * sessions/s with 50 concurrent clients (connect, handshake, 16-byte echo, close),
    failures, and the proxy's CPU time per session;
  * handshake latency p50/p99 (connect + SOCKS4 request + reply);
  * the same two for SOCKS5 without authentication (greeting, method choice,
    request, reply: a round trip more than SOCKS4);
  * RSS per idle session with N sessions held open (each still answering);
  * RSS growth while a slow reader downloads through the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPBACK = "127.0.0.1"
CHUNK = 1 << 20


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on LOOPBACK, never one this run already handed out: some
    kernels (gVisor) give the same port to every bind(0) in a row."""
    held = []
    try:
        for _ in range(100):
            s = socket.socket()
            held.append(s)
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
        raise RuntimeError("no free port found")
    finally:
        for s in held:
            s.close()


def raise_fd_limit(n: int = 65536) -> None:
    """Room for 10,000 sessions (two descriptors each in a proxy): raise the
    hard limit too where allowed (root), else the soft one up to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((n, max(n, hard)), (min(n, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


def socks4_request(host: str, port: int) -> bytes:
    return struct.pack("!BBH4s", 4, 1, port, socket.inet_aton(host)) + b"bench\0"


#: A SOCKS5 client's opening (no authentication offered) and its CONNECT.
SOCKS5_GREETING = b"\x05\x01\x00"


def socks5_request(host: str, port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)


# -- backends (run in their own process: `bench.py --backends`) ----------------

def _serve_threads(sock, handler):
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _source(conn):
    """Reads an 8-byte count, then sends that many bytes and closes."""
    with conn:
        need = struct.unpack("!Q", _read_exact(conn, 8))[0]
        block = b"\xa5" * CHUNK
        while need > 0:
            n = conn.send(block[:min(need, CHUNK)])
            need -= n


def _sink(conn):
    """Reads until EOF, then answers with the 8-byte count."""
    with conn:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total = 0
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            total += n
        conn.sendall(struct.pack("!Q", total))


def _read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


async def echo_stream(reader, writer, max_reads: int = 1 << 20):
    """An asyncio echo server's handler (bounded in reads, like every loop here)."""
    try:
        for _ in range(max_reads):
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def run_backends(ports):
    raise_fd_limit()
    for port, handler in ((ports[0], _source), (ports[1], _sink)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        s.listen(128)
        threading.Thread(target=_serve_threads, args=(s, handler), daemon=True).start()

    async def main():
        server = await asyncio.start_server(echo_stream, LOOPBACK, ports[2], backlog=4096)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the floor: the least a Python SOCKS4 relay does (`bench.py --floor PORT`) ----

def run_floor(port: int, seconds: float = 3600.0) -> None:
    """A bare SOCKS4 CONNECT relay on ``selectors``: no access rules, no
    limits, no timeouts, no logging, no half-close, no backpressure, not
    safe for anything but this benchmark.  Its figures say what Python and
    this machine's kernel cost by themselves, below any real proxy."""
    import selectors

    raise_fd_limit()
    sel = selectors.DefaultSelector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(4096)
    listener.setblocking(False)
    peers = {}

    def close(s):
        for sock in (s, peers.pop(s, None)):
            if sock is not None:
                peers.pop(sock, None)
                try:
                    sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()

    def accept(sock):
        for _ in range(64):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ, request)

    def request(conn):
        data = conn.recv(512)
        if len(data) < 9 or data[:2] != b"\x04\x01":
            close(conn)
            return
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.connect_ex((socket.inet_ntoa(data[4:8]), struct.unpack("!H", data[2:4])[0]))
        try:
            up.getpeername()  # loopback: connected at once, or give up
        except OSError:
            up.close()
            conn.send(b"\x00\x5b" + bytes(6))
            close(conn)
            return
        conn.send(b"\x00\x5a" + struct.pack("!H", up.getsockname()[1]) + socket.inet_aton(LOOPBACK))
        peers[conn], peers[up] = up, conn
        sel.modify(conn, selectors.EVENT_READ, relay)
        sel.register(up, selectors.EVENT_READ, relay)

    def relay(sock):
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            close(sock)
            return
        try:
            peers[sock].sendall(data)  # blocking would be a bug in a proxy; fine for 16 bytes
        except OSError:
            close(sock)

    sel.register(listener, selectors.EVENT_READ, accept)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            key.data(key.fileobj)


# -- targets -------------------------------------------------------------------

class Target:
    name = "?"
    proxied = True
    only: set[str] | None = None  # the figures it can give, if not all

    def __init__(self):
        self.port = None
        self.proc = None

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        found = [self.proc.pid]
        # children (Dante forks) by walking /proc
        try:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as f:
                            fields = f.read().rsplit(")", 1)[1].split()
                        if int(fields[1]) in found and int(entry) not in found:
                            found.append(int(entry))
                    except (OSError, IndexError, ValueError):
                        pass
        except OSError:
            pass
        return found

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds of all the target's processes,
        including the children they have reaped (Dante's children come and
        go: without that, the CPU of a child that ended between two
        readings would be lost)."""
        ticks = os.sysconf("SC_CLK_TCK")
        user = system = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11]) + int(fields[13])
                system += int(fields[12]) + int(fields[14])
            except (OSError, IndexError):
                pass
        return user / ticks, system / ticks

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def wait_listening(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start listening on {self.port}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Direct(Target):
    name = "direct"
    proxied = False

    def start(self):
        pass


class Floor(Target):
    """:func:`run_floor` in its own process (not in the default targets):
    SOCKS4 latency and sessions/s only."""
    name = "floor"
    only = {"latency", "rate"}

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--floor", str(self.port)],
                                     preexec_fn=raise_fd_limit)
        self.wait_listening()


class Sockssuite(Target):
    name = "sockssuite"

    def __init__(self, extra=()):
        super().__init__()
        self.extra = list(extra)

    def start(self):
        self.port = free_port()
        twistd = shutil.which("twistd") or sys.executable
        argv = ([twistd] if twistd != sys.executable else [sys.executable, "-m", "twisted"]) + [
            # Never --logfile=/dev/null: twistd's LogFile rotates a file at
            # 1 MB by renaming it, which replaces /dev/null with a regular
            # file.  Log to stdout (-) and discard that instead.
            "-n", "-o", "--pidfile=", "--logfile=-", "sockssuite",
            "--socks", f"tcp:{self.port}:interface={LOOPBACK}:backlog=4096",
            "--idle-timeout", "0", "--max-connections", "100000",
            # Every benchmark client is 127.0.0.1: lift the per-client limit (default 256).
            "--max-connections-per-client", "100000", *self.extra]
        self.proc = subprocess.Popen(argv, preexec_fn=raise_fd_limit, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.wait_listening()


class Dante(Target):
    name = "dante"

    def __init__(self, log="error"):
        super().__init__()
        self.log = log

    def start(self):
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="bench-dante-")
        conf = os.path.join(self.folder, "danted.conf")
        with open(conf, "w") as f:
            f.write(f"""logoutput: /dev/null
internal: {LOOPBACK} port = {self.port}
external: {LOOPBACK}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: error }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 log: {self.log} }}
""")
        # -N 1: one mother process; Dante then forks children by load itself.
        self.proc = subprocess.Popen(["danted", "-f", conf, "-N", "1"], preexec_fn=raise_fd_limit,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening()

    def stop(self):
        for pid in reversed(self.pids()):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        super().stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- measurements ----------------------------------------------------------------

def open_session(target, port, timeout=10.0, version=4):
    """A connected socket to LOOPBACK:port, through the target's proxy if any
    (SOCKS4, or SOCKS5 without authentication: greeting, method, request,
    reply: one round trip more, as every SOCKS5 client makes)."""
    if not target.proxied:
        s = socket.create_connection((LOOPBACK, port), timeout=timeout)
    elif version == 5:
        s = socket.create_connection((LOOPBACK, target.port), timeout=timeout)
        s.sendall(SOCKS5_GREETING)
        if _read_exact(s, 2) != b"\x05\x00":
            s.close()
            raise ConnectionError("SOCKS5 method not accepted")
        s.sendall(socks5_request(LOOPBACK, port))
        reply = _read_exact(s, 10)
        if reply[1] != 0:
            s.close()
            raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    else:
        s = socket.create_connection((LOOPBACK, target.port), timeout=timeout)
        s.sendall(socks4_request(LOOPBACK, port))
        reply = _read_exact(s, 8)
        if reply[1] != 90:
            s.close()
            raise ConnectionError(f"SOCKS reply {reply[1]}")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def throughput(target, backends, mib):
    size = mib * CHUNK
    # down: the source sends `size` bytes
    cpu0 = target.cpu_seconds()
    s = open_session(target, backends["source"])
    start = time.perf_counter()
    s.sendall(struct.pack("!Q", size))
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = s.recv_into(view)
        if not n:
            break
        got += n
    down = time.perf_counter() - start
    s.close()
    # up: we send `size` bytes to the sink
    s = open_session(target, backends["sink"])
    block = b"\x5a" * CHUNK
    start = time.perf_counter()
    sent = 0
    while sent < size:
        s.sendall(block)
        sent += CHUNK
    s.shutdown(socket.SHUT_WR)
    count = struct.unpack("!Q", _read_exact(s, 8))[0]
    up = time.perf_counter() - start
    s.close()
    cpu = target.cpu_seconds() - cpu0
    if got != size or count != size:
        raise RuntimeError(f"{target.name}: lost bytes (down {got}/{size}, up {count}/{size})")
    return {"down": mib / down, "up": mib / up, "cpu_per_gib": cpu / (2 * mib / 1024)}


def latency(target, backends, n, seconds, version=4):
    """Handshake times, one session at a time.  A failed session (a proxy
    out of ephemeral ports answers "network unreachable") is counted, not
    timed, and the run goes on."""
    samples = []
    failures = 0
    deadline = time.time() + seconds
    for _ in range(n):
        if time.time() > deadline:
            break
        start = time.perf_counter()
        try:
            s = open_session(target, backends["echo"], version=version)
        except (OSError, ConnectionError):
            failures += 1
            time.sleep(0.01)
            continue
        samples.append(time.perf_counter() - start)
        s.close()
    samples.sort()
    suffix = "" if version == 4 else "_5"
    if not samples:
        return {"latency_failures" + suffix: failures}
    return {"p50_ms" + suffix: 1000 * samples[len(samples) // 2],
            "p99_ms" + suffix: 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            "samples" + suffix: len(samples), "latency_failures" + suffix: failures}


async def _one_session(target, port, version=4):
    if target.proxied and version == 5:
        reader, writer = await asyncio.open_connection(LOOPBACK, target.port)
        writer.write(SOCKS5_GREETING)
        if await reader.readexactly(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 method not accepted")
        writer.write(socks5_request(LOOPBACK, port))
        reply = await reader.readexactly(10)
        if reply[1] != 0:
            raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    elif target.proxied:
        reader, writer = await asyncio.open_connection(LOOPBACK, target.port)
        writer.write(socks4_request(LOOPBACK, port))
        reply = await reader.readexactly(8)
        if reply[1] != 90:
            raise ConnectionError(f"SOCKS reply {reply[1]}")
    else:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"0123456789abcdef")
    await reader.readexactly(16)
    writer.close()
    await writer.wait_closed()


async def _rate(target, port, concurrency, seconds, max_sessions, version=4):
    done = failures = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal done, failures
        while time.perf_counter() < deadline and done + failures < max_sessions:
            try:
                await asyncio.wait_for(_one_session(target, port, version), 10)
                done += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    suffix = "" if version == 4 else "_5"
    return {"sessions_per_s" + suffix: done / (time.perf_counter() - start), "failures" + suffix: failures,
            "sessions" + suffix: done}


def rate(target, backends, seconds, concurrency=50, max_sessions=200000, version=4, py_spy=None):
    """Sessions/s, and the proxy's CPU time per session (user + system, all
    its processes): a figure less noisy than the rate, which also depends
    on how much CPU the load generator and the echo server got."""
    cpu_before = target.cpu_split() if target.proxied else None
    spy = None
    if py_spy and target.proxied:
        # Samples of the first process's Python stacks for the whole figure:
        # bench/profile_split.py says where the time went.
        spy = subprocess.Popen(["py-spy", "record", "--rate", "400", "--format", "raw", "--output", py_spy,
                                "--pid", str(target.pids()[0]), "--duration", str(int(seconds) + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches
    result = asyncio.run(_rate(target, backends["echo"], concurrency, seconds, max_sessions, version))
    if spy is not None:
        spy.wait(timeout=seconds + 30)
    suffix = "" if version == 4 else "_5"
    if cpu_before is not None and result["sessions" + suffix]:
        user, system = (after - before for after, before in zip(target.cpu_split(), cpu_before))
        result["cpu_us_per_session" + suffix] = 1e6 * (user + system) / result["sessions" + suffix]
        if user + system:
            result["cpu_system_share" + suffix] = 100 * system / (user + system)
    return result


async def _idle(target, port, n, seconds):
    before = target.rss_kib()
    conns = []
    deadline = time.perf_counter() + seconds
    sem = asyncio.Semaphore(200)

    async def open_one():
        async with sem:
            if target.proxied:
                reader, writer = await asyncio.open_connection(LOOPBACK, target.port)
                writer.write(socks4_request(LOOPBACK, port))
                await reader.readexactly(8)
            else:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            conns.append((reader, writer))

    tasks = [asyncio.create_task(open_one()) for _ in range(n)]
    for t in tasks:
        try:
            await asyncio.wait_for(t, max(0.1, deadline - time.perf_counter()))
        except Exception:
            pass
    await asyncio.sleep(1.0)
    after = target.rss_kib()
    answering = 0

    async def check(reader, writer):
        nonlocal answering
        try:
            writer.write(b"?")
            await asyncio.wait_for(reader.readexactly(1), 10)
            answering += 1
        except Exception:
            pass

    for i in range(0, len(conns), 500):
        await asyncio.gather(*[check(r, w) for r, w in conns[i:i + 500]])
    for _, w in conns:
        w.close()
    return {"held": len(conns), "answering": answering,
            "kib_per_session": (after - before) / max(1, len(conns))}


def idle(target, backends, n, seconds):
    return asyncio.run(_idle(target, backends["echo"], n, seconds))


def slow_reader(target, backends, mib, rate_mib):
    """Download `mib` MiB reading at about `rate_mib` MiB/s; RSS growth of the proxy."""
    size = mib * CHUNK
    s = open_session(target, backends["source"])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    base = target.rss_kib()
    peak = base
    s.sendall(struct.pack("!Q", size))
    got = 0
    step = 64 * 1024
    start = time.perf_counter()
    while got < size:
        data = s.recv(step)
        if not data:
            break
        got += len(data)
        expected = got / (rate_mib * CHUNK)
        lag = expected - (time.perf_counter() - start)
        if lag > 0:
            time.sleep(lag)
        peak = max(peak, target.rss_kib()) if got % (4 * CHUNK) < step else peak
    s.close()
    return {"mib": got / CHUNK, "rss_growth_mib": (peak - base) / 1024}


# -- the run ---------------------------------------------------------------------

#: What a run can measure (--figures).
FIGURES = ("latency", "stream", "rate", "socks5", "idle", "slow")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--targets", default="direct,sockssuite,dante")
    parser.add_argument("--stream-mib", type=int, default=1024)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--latency-n", type=int, default=2000)
    parser.add_argument("--idle-n", type=int, default=10000)
    parser.add_argument("--slow-mib", type=int, default=256)
    parser.add_argument("--slow-rate", type=float, default=16.0, help="MiB/s of the slow reader")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds to wait between figures (TIME_WAIT sockets drain)")
    parser.add_argument("--sockssuite-args", default="", help="extra options for twistd sockssuite")
    parser.add_argument("--dante-log", default="error",
                        help="what Dante logs of each session, its 'log:' keywords (default: error; "
                             "'connect disconnect error' logs a line per session, as sockssuite does)")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"which figures, comma-separated (default all: {','.join(FIGURES)})")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="record the sockssuite process's stacks with py-spy (if installed) during "
                             "its SOCKS4 sessions/s figure, to FILE (raw format; bench/profile_split.py "
                             "reads it)")
    parser.add_argument("--backends", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backends:
        run_backends(args.backends)
        return
    if args.floor:
        run_floor(args.floor)
        return
    if args.py_spy and not shutil.which("py-spy"):
        parser.error("--py-spy needs py-spy (pip install py-spy)")
    if args.quick:
        args.stream_mib, args.rate_seconds, args.latency_n = 64, 1.0, 200
        args.idle_n, args.slow_mib, args.slow_rate = 500, 16, 32.0
    raise_fd_limit()
    ports = [free_port() for _ in range(3)]
    backends = dict(zip(("source", "sink", "echo"), ports))
    backend_proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--backends", *map(str, ports)],
                                    stdout=subprocess.PIPE, preexec_fn=raise_fd_limit)
    assert backend_proc.stdout.readline().strip() == b"ready"
    targets = []
    for name in args.targets.split(","):
        if name == "direct":
            targets.append(Direct())
        elif name == "floor":
            targets.append(Floor())
        elif name == "sockssuite":
            targets.append(Sockssuite(args.sockssuite_args.split()))
        elif name == "dante":
            if shutil.which("danted") and os.geteuid() == 0:
                targets.append(Dante(args.dante_log))
            else:
                print("note: danted not installed (or not root): Dante left out", file=sys.stderr)
    results = {}
    try:
        for target in targets:
            figures = set(args.figures.split(","))
            if target.only is not None:
                figures &= target.only
            target.start()
            r = results[target.name] = {}
            if "latency" in figures:
                r.update(latency(target, backends, args.latency_n, 30))
                time.sleep(args.pause)
            if "stream" in figures:
                r.update(throughput(target, backends, args.stream_mib))
            if "rate" in figures:
                r.update(rate(target, backends, args.rate_seconds,
                              py_spy=args.py_spy if target.name == "sockssuite" else None))
                time.sleep(args.pause)
            if target.proxied and "socks5" in figures:
                r.update(latency(target, backends, args.latency_n, 30, version=5))
                time.sleep(args.pause)
                r.update(rate(target, backends, args.rate_seconds, version=5))
                time.sleep(args.pause)
            if target.proxied and "idle" in figures:
                r.update(idle(target, backends, args.idle_n, 60))
            if target.proxied and "slow" in figures:
                r.update(slow_reader(target, backends, args.slow_mib, args.slow_rate))
            target.stop()
            time.sleep(args.pause)  # the next target starts with the ephemeral ports free
            print(f"{target.name}: done", file=sys.stderr)
    finally:
        for target in targets:
            target.stop()
        backend_proc.terminate()
        backend_proc.wait()
    print_table(results, args)


def print_table(results, args):
    rows = [
        ("one stream up, MiB/s", "up", "{:.0f}", True),
        ("one stream down, MiB/s", "down", "{:.0f}", True),
        ("proxy CPU s per relayed GiB", "cpu_per_gib", "{:.2f}", False),
        ("sessions/s, 50 concurrent", "sessions_per_s", "{:.0f}", True),
        ("  failures", "failures", "{:d}", False),
        ("  proxy CPU per session, us", "cpu_us_per_session", "{:.0f}", False),
        ("    of it system time, %", "cpu_system_share", "{:.0f}", False),
        ("handshake p50, ms", "p50_ms", "{:.3f}", False),
        ("handshake p99, ms", "p99_ms", "{:.3f}", False),
        ("  failures", "latency_failures", "{:d}", False),
        ("SOCKS5: sessions/s, 50 concurrent", "sessions_per_s_5", "{:.0f}", True),
        ("  failures", "failures_5", "{:d}", False),
        ("  proxy CPU per session, us", "cpu_us_per_session_5", "{:.0f}", False),
        ("    of it system time, %", "cpu_system_share_5", "{:.0f}", False),
        ("SOCKS5: handshake p50, ms", "p50_ms_5", "{:.3f}", False),
        ("SOCKS5: handshake p99, ms", "p99_ms_5", "{:.3f}", False),
        ("  failures", "latency_failures_5", "{:d}", False),
        (f"idle sessions held (of {args.idle_n})", "held", "{:d}", True),
        ("  of them still answering", "answering", "{:d}", True),
        ("RSS per idle session, KiB", "kib_per_session", "{:.2f}", False),
        (f"slow reader ({args.slow_mib} MiB at {args.slow_rate:g} MiB/s): RSS growth, MiB",
         "rss_growth_mib", "{:.1f}", False),
    ]
    names = list(results)
    width = max(len(r[0]) for r in rows) + 2
    header = "".join(f"{n:>14}" for n in names)
    if "sockssuite" in results and "dante" in results:
        header += f"{'sockssuite/dante':>18}"
    print(f"{'':{width}}{header}")
    for label, key, fmt, _ in rows:
        line = f"{label:{width}}"
        for n in names:
            v = results[n].get(key)
            line += f"{(fmt.format(v) if v is not None else '-'):>14}"
        if "sockssuite" in results and "dante" in results:
            a, b = results["sockssuite"].get(key), results["dante"].get(key)
            line += f"{(f'{a / b:.2f}x' if a is not None and b not in (None, 0) else '-'):>18}"
        print(line)


if __name__ == "__main__":
    main()
