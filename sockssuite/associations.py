"""The datagram forwarder's association table: who talks to whom, for how long.

Pure: no Twisted, no sockets; time comes from an injected clock (the service
passes ``reactor.seconds``, tests a ``twisted.internet.task.Clock``).

An *association* is one inside sender talking through one local port: its key
is ``(local port it arrived on, sender host, sender port)``, so answers can go
back to exactly that sender.  It holds the peer it sends to (a relay line's
resolved host2 and remoteport2), or for an encapsulate port the destinations
it has sent to, an opaque ``handle`` for the service (its outside socket),
counters, and its times.

Policy that lives here, so it is tested once:

* An answer is accepted only from the exact ``(host, port)`` the association
  sent to: the relay peer, or one of the encapsulate association's last
  :data:`MAX_DESTINATIONS` destinations; never for a ``oneway`` association.
  No third party can inject through the relay, and nothing is answered that
  was not asked (no amplification).
* The table is bounded: opening one more than ``max_associations`` evicts the
  least recently active; associations idle ``idle_timeout`` seconds or longer
  are expired.  Both return what they removed, so the service can close their
  sockets and log their counters.

The table is an ``OrderedDict`` in order of last activity: touching moves an
entry to the end, eviction and expiry pop from the front, so every operation
is O(1) (expiry amortized: each association is expired at most once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator

__all__ = ["MAX_DESTINATIONS", "Association", "AssociationKey", "AssociationTable"]

#: (local port, sender host, sender port)
AssociationKey = tuple[int, str, int]

#: How many destinations an encapsulate association remembers for accepting
#: answers (the oldest is forgotten first).
MAX_DESTINATIONS = 64


class Association:
    """One inside sender through one local port.  The table creates these and
    keeps their times and counters; the service reads them and fills
    ``handle``.

    Counters: ``datagrams_out``/``bytes_out`` from the sender towards the
    outside, ``datagrams_in``/``bytes_in`` answers back to the sender,
    ``dropped`` datagrams the service refused for this association.
    """

    __slots__ = (
        "key",
        "peer",
        "handle",
        "oneway",
        "created",
        "last_activity",
        "datagrams_out",
        "bytes_out",
        "datagrams_in",
        "bytes_in",
        "dropped",
        "_destinations",
    )

    def __init__(self, key: AssociationKey, peer: tuple[str, int] | None, handle: Any, oneway: bool, now: float):
        self.key: AssociationKey = key
        #: (host, port) a relay association sends to; None for encapsulate.
        self.peer: tuple[str, int] | None = peer
        #: The service's own object (its outside socket); the table never uses it.
        self.handle: Any = handle
        self.oneway: bool = oneway
        self.created: float = now
        self.last_activity: float = now
        self.datagrams_out = 0
        self.bytes_out = 0
        self.datagrams_in = 0
        self.bytes_in = 0
        self.dropped = 0
        self._destinations: OrderedDict[tuple[str, int], None] = OrderedDict()

    @property
    def local_port(self) -> int:
        return self.key[0]

    @property
    def sender(self) -> tuple[str, int]:
        """(host, port) of the inside sender: where answers go."""
        return self.key[1], self.key[2]

    @property
    def encapsulated(self) -> bool:
        """True for an encapsulate association (no fixed peer)."""
        return self.peer is None

    @property
    def destinations(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) destinations an encapsulate association has sent
        to and still accepts answers from, least recently used first."""
        return tuple(self._destinations)

    def __repr__(self) -> str:
        local_port, host, port = self.key
        towards = "encapsulated" if self.peer is None else f"peer={self.peer[0]}:{self.peer[1]}"
        return (
            f"<Association {host}:{port} via :{local_port} {towards}"
            f"{' oneway' if self.oneway else ''} out={self.datagrams_out}/{self.bytes_out}B"
            f" in={self.datagrams_in}/{self.bytes_in}B dropped={self.dropped}>"
        )


class AssociationTable:
    """The bounded, expiring table of associations.

    :param max_associations: how many may be open at once (at least 1).
    :param idle_timeout: seconds without activity after which
        :meth:`expire` removes an association (more than 0).
    :param clock: a callable returning the current time in seconds; it should
        not run backwards.
    :param max_destinations: how many destinations an encapsulate association
        remembers (default :data:`MAX_DESTINATIONS`).
    :raises ValueError: for a bound or timeout out of range.
    """

    def __init__(
        self,
        max_associations: int,
        idle_timeout: float,
        clock: Callable[[], float],
        *,
        max_destinations: int = MAX_DESTINATIONS,
    ):
        if max_associations < 1:
            raise ValueError(f"max_associations must be at least 1, not {max_associations!r}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be more than 0 seconds, not {idle_timeout!r}")
        if max_destinations < 1:
            raise ValueError(f"max_destinations must be at least 1, not {max_destinations!r}")
        self.max_associations = max_associations
        self.idle_timeout = idle_timeout
        self.max_destinations = max_destinations
        self._clock = clock
        # Least recently active first.
        self._table: OrderedDict[AssociationKey, Association] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Association]:
        """The open associations, least recently active first."""
        return iter(list(self._table.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def get(self, key: AssociationKey) -> Association | None:
        """The open association for *key*, or None.  Does not count as activity."""
        return self._table.get(key)

    def open(
        self,
        key: AssociationKey,
        peer: tuple[str, int] | None,
        handle: Any = None,
        *,
        oneway: bool = False,
    ) -> tuple[Association, list[Association]]:
        """Open an association for *key* sending to *peer* (``(host, port)``,
        the address a relay line's host2 resolved to; None for an encapsulate
        port).  If the table is full, the least recently active association
        is evicted first.

        :returns: the new association, and the evicted ones (to close).
        :raises ValueError: if *key* is already open (use :meth:`get` first).
        """
        key = (key[0], key[1], key[2])
        if key in self._table:
            raise ValueError(f"association {key!r} is already open")
        evicted = []
        while len(self._table) >= self.max_associations:
            evicted.append(self._table.popitem(last=False)[1])
        if peer is not None:
            peer = (peer[0], peer[1])
        association = Association(key, peer, handle, oneway, self._clock())
        self._table[key] = association
        return association, evicted

    def touch(self, association: Association) -> None:
        """Count now as activity of *association* (nothing if it is closed)."""
        if self._table.get(association.key) is association:
            association.last_activity = self._clock()
            self._table.move_to_end(association.key)

    def record_sent(self, association: Association, nbytes: int, destination: tuple[str, int] | None = None) -> None:
        """A datagram of *nbytes* from the sender went out: count it, touch the
        association, and for an encapsulate association remember *destination*
        (the ``(host, port)`` it was sent to) for :meth:`accept_answer`.

        :raises ValueError: for an encapsulate association without a destination.
        """
        if association.peer is None:
            if destination is None:
                raise ValueError("an encapsulate association needs the destination it sent to")
            destinations = association._destinations
            destination = (destination[0], destination[1])
            if destination in destinations:
                destinations.move_to_end(destination)
            else:
                if len(destinations) >= self.max_destinations:
                    destinations.popitem(last=False)
                destinations[destination] = None
        association.datagrams_out += 1
        association.bytes_out += nbytes
        self.touch(association)

    def record_answer(self, association: Association, nbytes: int) -> None:
        """An answer of *nbytes* went back to the sender: count it and touch."""
        association.datagrams_in += 1
        association.bytes_in += nbytes
        self.touch(association)

    def record_drop(self, association: Association) -> None:
        """A datagram for *association* was refused (a spoofed or unwanted
        answer, an oversize or fragmented datagram): count it.  Not activity."""
        association.dropped += 1

    def accept_answer(self, association: Association, from_host: str, from_port: int) -> bool:
        """May a datagram from *from_host*:*from_port* go back to the sender?

        Only while the association is open and not ``oneway``, and only from
        the exact relay peer, or from an address and port the encapsulate
        association has sent to (one of its last ``max_destinations``).
        Addresses compare as text: the service keeps them in the form its
        sockets report them.
        """
        if association.oneway or self._table.get(association.key) is not association:
            return False
        if association.peer is None:
            return (from_host, from_port) in association._destinations
        return association.peer == (from_host, from_port)

    def expire(self) -> list[Association]:
        """Remove and return the associations idle ``idle_timeout`` seconds or
        longer, least recently active first."""
        now = self._clock()
        timeout = self.idle_timeout
        expired = []
        table = self._table
        while table:
            first = next(iter(table.values()))
            # The same sum as next_expiry(), so expire() at that time removes it.
            if first.last_activity + timeout > now:
                break
            expired.append(table.popitem(last=False)[1])
        return expired

    def next_expiry(self) -> float | None:
        """When the least recently active association will be idle for
        ``idle_timeout`` (a time on the clock), or None if the table is empty:
        when to call :meth:`expire` next."""
        if not self._table:
            return None
        return next(iter(self._table.values())).last_activity + self.idle_timeout

    def remove(self, association: Association) -> bool:
        """Remove *association* (its socket failed, the service is stopping);
        False if it was not open."""
        if self._table.get(association.key) is association:
            del self._table[association.key]
            return True
        return False

    def remove_all(self) -> list[Association]:
        """Remove and return every association, least recently active first."""
        removed = list(self._table.values())
        self._table.clear()
        return removed
