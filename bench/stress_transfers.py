#!/usr/bin/env python3
"""Nothing lost, at full size: concurrent byte-exact transfers through a
``twistd sockssuite`` subprocess (issue 9).

    python bench/stress_transfers.py                          # 500 transfers up to 64 MiB
    python bench/stress_transfers.py --max-mib 8              # smaller
    python bench/stress_transfers.py --engine copy            # one relay engine

The transfers are the CI test's (tests/test_transfers.py): each one sends
pseudo-random bytes both ways at once, both ends read in random-sized slices
and pause at random, and each direction is checked by SHA-256 and byte count,
with both ends closing cleanly.  Then ``--resets`` transfers whose destination
resets mid-stream: each client must see an abortive close (no FIN, not a
clean end) after a prefix of what was sent.

The load generator (this process: clients and destinations, one Twisted
reactor) and the proxy are separate processes.  Everything is on 127.0.0.1;
everything is bounded in count and in time (--minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench import Sockssuite, raise_fd_limit  # noqa: E402  (bench/bench.py)
from twisted.internet import defer, endpoints, protocol, reactor, task  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402

from tests.test_transfers import ClientParty, ServerFactory, random_size  # noqa: E402

MiB = 1 << 20


async def batch(proxy_port, count, largest, seed, reset, deadline, concurrency):
    rng = random.Random(seed)
    plans, clients = {}, {}
    for i in range(count):
        up, down = random_size(rng, largest), random_size(rng, largest)
        abort_after = None
        if reset:
            down = max(down, 2)
            abort_after = rng.randrange(0, down)
        plans[i] = (down, rng.randrange(1 << 30), abort_after)
        clients[i] = (up, rng.randrange(1 << 30))
    factory = ServerFactory(plans, seed)
    destination = await endpoints.TCP4ServerEndpoint(reactor, 0, backlog=4096,
                                                     interface="127.0.0.1").listen(factory)
    parties = []
    started = time.monotonic()
    semaphore = defer.DeferredSemaphore(concurrency)

    async def one(i, up, up_seed):
        party = ClientParty(i, destination.getHost().port, random.Random(rng.random()), up, up_seed)
        parties.append(party)
        try:
            await protocol.ClientCreator(reactor, lambda: party).connectTCP("127.0.0.1", proxy_port)
        except Exception as e:  # noqa: BLE001
            party.reason = e
            return
        await party.done

    def expire():
        for p in parties + list(factory.parties.values()):
            if p.reason is None and p.transport.connected:
                p.transport.abortConnection()

    watchdog = reactor.callLater(max(1.0, deadline - time.monotonic()), expire)
    await defer.gatherResults([semaphore.run(lambda i=i, c=c: defer.ensureDeferred(one(i, *c)))
                               for i, c in clients.items()])
    expired = not watchdog.active()
    if not expired:
        watchdog.cancel()
    for _ in range(1000):
        if all(p.reason is not None for p in factory.parties.values()):
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    elapsed = time.monotonic() - started
    await destination.stopListening()
    return parties, factory.parties, plans, elapsed, expired


def check_transfers(parties, servers, plans):
    failures = []
    for client in parties:
        i = client.transfer_id
        server = servers.get(i)
        if server is None or client.reply is None or client.reply.code != 90:
            failures.append(f"transfer {i}: not connected ({client.reason!r})")
            continue
        if (server.received, client.received) != (client.send_size, server.send_size):
            failures.append(f"transfer {i}: counts up {server.received}/{client.send_size} "
                            f"down {client.received}/{server.send_size}")
        elif server.recv_hash.digest() != client.sent_hash.digest() \
                or client.recv_hash.digest() != server.sent_hash.digest():
            failures.append(f"transfer {i}: SHA-256 mismatch")
        elif not (isinstance(client.reason, ConnectionDone) and isinstance(server.reason, ConnectionDone)):
            failures.append(f"transfer {i}: not a clean close ({client.reason!r}, {server.reason!r})")
    return failures


def check_resets(parties, servers, plans):
    failures = []
    truncated = 0
    for client in parties:
        i = client.transfer_id
        server = servers.get(i)
        down, _, abort_after = plans[i]
        if server is None or client.reply is None:
            failures.append(f"reset {i}: not connected ({client.reason!r})")
            continue
        if client.read_eof or isinstance(client.reason, ConnectionDone):
            failures.append(f"reset {i}: the client saw a clean end after {client.received} of "
                            f"{abort_after} bytes")
        elif client.received > abort_after or client.recv_hash.digest() != hashlib.sha256(
                server.sent_prefix(client.received)).digest():
            failures.append(f"reset {i}: received bytes are not a prefix of what was sent")
        truncated += client.received < abort_after
    return failures, truncated


async def main(reactor_, args):
    raise_fd_limit()
    extra = ["--relay-engine", args.engine]
    from sockssuite import tap
    if any(p[0] == "max-connections-per-client" for p in tap.Options.optParameters):
        extra += ["--max-connections-per-client", "100000"]
    proxy = Sockssuite(extra)
    proxy.start()
    ok = True
    try:
        deadline = time.monotonic() + args.minutes * 60
        rss_start = proxy.rss_kib()
        cpu_start = proxy.cpu_seconds()
        parties, servers, plans, elapsed, expired = await batch(
            proxy.port, args.transfers, args.max_mib * MiB, args.seed, False, deadline, args.concurrency)
        failures = check_transfers(parties, servers, plans)
        total = sum(p.send_size for p in parties) + sum(s.send_size for s in servers.values())
        print(f"transfers: {len(parties)} (up to {args.max_mib} MiB each way, engine {args.engine}, "
              f"{args.concurrency} at once), {total / MiB:.0f} MiB relayed in {elapsed:.1f}s "
              f"({total / MiB / elapsed:.0f} MiB/s), byte-exact: {len(parties) - len(failures)}, "
              f"failed: {len(failures)}{' (DEADLINE HIT)' if expired else ''}")
        print(f"proxy: RSS {rss_start} -> {proxy.rss_kib()} KiB, CPU {proxy.cpu_seconds() - cpu_start:.1f}s")
        for f in failures[:20]:
            print("  FAILED:", f)
        ok = ok and not failures and not expired
        if args.resets:
            parties, servers, plans, elapsed, expired = await batch(
                proxy.port, args.resets, args.max_mib * MiB, args.seed + 1, True,
                time.monotonic() + args.minutes * 60, args.concurrency)
            failures, truncated = check_resets(parties, servers, plans)
            print(f"resets: {len(parties)} destinations reset mid-stream in {elapsed:.1f}s: "
                  f"abortive close seen by {len(parties) - len(failures)} clients "
                  f"({truncated} of them cut short of what the destination had sent), "
                  f"failed: {len(failures)}{' (DEADLINE HIT)' if expired else ''}")
            for f in failures[:20]:
                print("  FAILED:", f)
            ok = ok and not failures and not expired
        print(f"proxy still running: {proxy.proc.poll() is None}")
        ok = ok and proxy.proc.poll() is None
    finally:
        proxy.stop()
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=500)
    parser.add_argument("--max-mib", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=500, help="transfers running at once")
    parser.add_argument("--resets", type=int, default=200, help="reset-mid-stream transfers after")
    parser.add_argument("--engine", default="auto", choices=["auto", "copy", "splice"])
    parser.add_argument("--minutes", type=float, default=60.0, help="abort what is still running then")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    task.react(lambda r: defer.ensureDeferred(main(r, args)))
