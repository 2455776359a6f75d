"""Tests for sockssuite.associations: the bounded, expiring association table."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.associations import MAX_DESTINATIONS, Association, AssociationTable

PEER = ("192.0.2.53", 53)


def key(n, host="10.0.0.1", local_port=5353):
    return (local_port, host, 40000 + n)


class TableTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = AssociationTable(max_associations=3, idle_timeout=120, clock=self.clock.seconds)

    def open(self, n, peer=PEER, handle=None, **kwargs):
        association, evicted = self.table.open(key(n), peer, handle, **kwargs)
        self.assertEqual(evicted, [])
        return association


class OpenAndGetTests(TableTestCase):
    def test_new_table_is_empty(self):
        self.assertEqual(len(self.table), 0)
        self.assertIsNone(self.table.get(key(1)))
        self.assertEqual(list(self.table), [])
        self.assertIsNone(self.table.next_expiry())

    def test_open_association_is_found_by_its_key(self):
        self.clock.advance(5)
        handle = object()
        association = self.open(1, handle=handle)
        self.assertIs(self.table.get(key(1)), association)
        self.assertIn(key(1), self.table)
        self.assertEqual(len(self.table), 1)
        self.assertEqual(association.key, (5353, "10.0.0.1", 40001))
        self.assertEqual(association.local_port, 5353)
        self.assertEqual(association.sender, ("10.0.0.1", 40001))
        self.assertEqual(association.peer, PEER)
        self.assertIs(association.handle, handle)
        self.assertEqual((association.created, association.last_activity), (5, 5))
        self.assertFalse(association.oneway)
        self.assertFalse(association.encapsulated)

    def test_counters_start_at_zero(self):
        association = self.open(1)
        self.assertEqual(
            (association.datagrams_out, association.bytes_out, association.datagrams_in, association.bytes_in,
             association.dropped),
            (0, 0, 0, 0, 0),
        )

    def test_handle_can_be_filled_in_later(self):
        association = self.open(1)
        self.assertIsNone(association.handle)
        association.handle = "socket"
        self.assertEqual(self.table.get(key(1)).handle, "socket")

    def test_key_parts_each_make_a_different_association(self):
        table = AssociationTable(10, 120, self.clock.seconds)
        keys = [(5353, "10.0.0.1", 4000), (5354, "10.0.0.1", 4000), (5353, "10.0.0.2", 4000), (5353, "10.0.0.1", 4001)]
        associations = [table.open(k, PEER)[0] for k in keys]
        self.assertEqual(len(table), 4)
        for k, association in zip(keys, associations):
            self.assertIs(table.get(k), association)

    def test_opening_an_open_key_is_a_value_error(self):
        self.open(1)
        self.assertRaises(ValueError, self.table.open, key(1), PEER, None)
        self.assertEqual(len(self.table), 1)

    def test_key_may_be_any_sequence_of_three(self):
        association = self.open(1)
        self.assertIs(self.table.get(tuple([5353, "10.0.0.1", 40001])), association)
        other, _ = self.table.open([5353, "10.0.0.1", 1], ["192.0.2.1", 7])
        self.assertEqual((other.key, other.peer), ((5353, "10.0.0.1", 1), ("192.0.2.1", 7)))

    def test_bounds_must_make_sense(self):
        self.assertRaises(ValueError, AssociationTable, 0, 120, self.clock.seconds)
        self.assertRaises(ValueError, AssociationTable, 1, 0, self.clock.seconds)
        self.assertRaises(ValueError, AssociationTable, 1, -1, self.clock.seconds)
        self.assertRaises(ValueError, AssociationTable, 1, 1, self.clock.seconds, max_destinations=0)

    def test_repr_names_sender_peer_and_counters(self):
        association = self.open(1)
        self.table.record_sent(association, 40)
        self.assertEqual(
            repr(association),
            "<Association 10.0.0.1:40001 via :5353 peer=192.0.2.53:53 out=1/40B in=0/0B dropped=0>",
        )


class ExpiryTests(TableTestCase):
    def test_association_idle_for_the_timeout_expires(self):
        association = self.open(1)
        self.clock.advance(119.9)
        self.assertEqual(self.table.expire(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.table.expire(), [association])
        self.assertIsNone(self.table.get(key(1)))
        self.assertEqual(len(self.table), 0)

    def test_activity_postpones_expiry(self):
        association = self.open(1)
        self.clock.advance(100)
        self.table.touch(association)
        self.clock.advance(100)
        self.assertEqual(self.table.expire(), [])
        self.assertEqual(association.last_activity, 100)
        self.clock.advance(20)
        self.assertEqual(self.table.expire(), [association])

    def test_sent_and_answered_datagrams_are_activity(self):
        association = self.open(1)
        self.clock.advance(60)
        self.table.record_sent(association, 10)
        self.clock.advance(60)
        self.table.record_answer(association, 10)
        self.clock.advance(119)
        self.assertEqual(self.table.expire(), [])
        self.assertEqual(association.last_activity, 120)

    def test_drops_are_not_activity(self):
        # A flood of refused answers must not keep an association alive.
        association = self.open(1)
        for _ in range(12):
            self.clock.advance(10)
            self.table.record_drop(association)
        self.assertEqual(association.dropped, 12)
        self.assertEqual(self.table.expire(), [association])

    def test_only_the_idle_ones_expire_least_recently_active_first(self):
        first, second, third = self.open(1), None, None
        self.clock.advance(30)
        second = self.open(2)
        self.clock.advance(30)
        third = self.open(3)
        self.table.touch(first)  # now the most recently active
        self.clock.advance(90)
        self.assertEqual(self.table.expire(), [second])
        self.clock.advance(30)
        self.assertEqual(self.table.expire(), [third, first])

    def test_next_expiry_is_when_expire_will_remove_the_oldest(self):
        association = self.open(1)
        self.clock.advance(0.1)
        self.open(2)
        self.assertEqual(self.table.next_expiry(), 120)
        self.clock.advance(7.3)
        self.table.touch(association)
        self.assertEqual(self.table.next_expiry(), 0.1 + 120)
        self.clock.rightNow = self.table.next_expiry()
        self.assertEqual([a.key for a in self.table.expire()], [key(2)])

    def test_expire_at_next_expiry_never_finds_nothing(self):
        # A timer set for next_expiry() must not spin: at that time expire()
        # removes at least one association, whatever the float sums give.
        rng = random.Random(1)
        table = AssociationTable(1000, 0.3, self.clock.seconds)
        for n in range(200):
            self.clock.advance(rng.random() / 7)
            table.open(key(n), PEER)
        while len(table):
            self.clock.rightNow = table.next_expiry()
            self.assertTrue(table.expire())

    def test_expiring_ten_thousand_stops_at_the_first_active_one(self):
        table = AssociationTable(20000, 10, self.clock.seconds)
        for n in range(10000):
            table.open(key(n), PEER)
        self.clock.advance(5)
        keep = table.open(key(-1), PEER)[0]
        self.clock.advance(5)
        self.assertEqual(len(table.expire()), 10000)
        self.assertEqual(list(table), [keep])


class EvictionTests(TableTestCase):
    def test_oldest_idle_association_is_evicted_at_the_bound(self):
        first = self.open(1)
        self.clock.advance(1)
        self.open(2)
        self.clock.advance(1)
        self.open(3)
        self.clock.advance(1)
        fourth, evicted = self.table.open(key(4), PEER)
        self.assertEqual(evicted, [first])
        self.assertEqual(len(self.table), 3)
        self.assertIsNone(self.table.get(key(1)))
        self.assertIs(self.table.get(key(4)), fourth)

    def test_recent_activity_protects_from_eviction(self):
        first = self.open(1)
        second = self.open(2)
        self.open(3)
        self.clock.advance(1)
        self.table.record_sent(first, 1)
        _, evicted = self.table.open(key(4), PEER)
        self.assertEqual(evicted, [second])
        self.assertIs(self.table.get(key(1)), first)

    def test_evicted_association_keeps_its_handle_and_counters_for_the_log(self):
        first = self.open(1, handle="socket-1")
        self.table.record_sent(first, 100)
        self.table.record_answer(first, 300)
        self.open(2)
        self.open(3)
        _, [evicted] = self.table.open(key(4), PEER)
        self.assertEqual((evicted.handle, evicted.bytes_out, evicted.bytes_in), ("socket-1", 100, 300))

    def test_table_of_one_evicts_the_previous_association(self):
        table = AssociationTable(1, 120, self.clock.seconds)
        previous = None
        for n in range(5):
            association, evicted = table.open(key(n), PEER)
            self.assertEqual(evicted, [] if previous is None else [previous])
            previous = association
        self.assertEqual(len(table), 1)

    def test_touching_an_evicted_association_does_not_bring_it_back(self):
        first = self.open(1)
        self.open(2)
        self.open(3)
        self.table.open(key(4), PEER)
        self.table.touch(first)
        self.table.record_sent(first, 1)
        self.assertIsNone(self.table.get(key(1)))
        self.assertEqual(len(self.table), 3)

    def test_reopened_key_is_a_new_association(self):
        first = self.open(1)
        self.table.remove(first)
        second = self.open(1)
        self.assertIsNot(first, second)
        self.table.touch(first)  # the stale one must not move the new one
        self.assertFalse(self.table.accept_answer(first, *PEER))
        self.assertTrue(self.table.accept_answer(second, *PEER))
        self.assertFalse(self.table.remove(first))
        self.assertIs(self.table.get(key(1)), second)


class RemoveTests(TableTestCase):
    def test_remove_takes_the_association_out(self):
        association = self.open(1)
        self.assertTrue(self.table.remove(association))
        self.assertFalse(self.table.remove(association))
        self.assertEqual(len(self.table), 0)

    def test_remove_all_returns_everything_least_recently_active_first(self):
        first, second = self.open(1), self.open(2)
        self.clock.advance(1)
        self.table.touch(first)
        self.assertEqual(self.table.remove_all(), [second, first])
        self.assertEqual(len(self.table), 0)

    def test_iteration_is_least_recently_active_first_and_safe_to_remove_during(self):
        first, second, third = self.open(1), self.open(2), self.open(3)
        self.table.touch(first)
        for association in self.table:
            self.table.remove(association)
        self.assertEqual(len(self.table), 0)


class CounterTests(TableTestCase):
    def test_sent_and_answered_datagrams_and_bytes_are_counted(self):
        association = self.open(1)
        for size in (10, 20, 30):
            self.table.record_sent(association, size)
        self.table.record_answer(association, 512)
        self.table.record_drop(association)
        self.assertEqual(
            (association.datagrams_out, association.bytes_out, association.datagrams_in, association.bytes_in,
             association.dropped),
            (3, 60, 1, 512, 1),
        )

    def test_empty_datagrams_count_as_datagrams(self):
        association = self.open(1)
        self.table.record_sent(association, 0)
        self.assertEqual((association.datagrams_out, association.bytes_out), (1, 0))


class AnswerTests(TableTestCase):
    def test_answer_from_the_exact_peer_is_accepted(self):
        self.assertTrue(self.table.accept_answer(self.open(1), "192.0.2.53", 53))

    def test_spoofed_answer_from_another_port_is_refused(self):
        association = self.open(1)
        self.assertFalse(self.table.accept_answer(association, "192.0.2.53", 54))
        self.assertFalse(self.table.accept_answer(association, "192.0.2.53", 5353))

    def test_spoofed_answer_from_another_host_is_refused(self):
        association = self.open(1)
        self.assertFalse(self.table.accept_answer(association, "192.0.2.54", 53))
        self.assertFalse(self.table.accept_answer(association, "10.0.0.1", 40001))  # the sender itself

    def test_refusing_an_answer_changes_nothing(self):
        association = self.open(1)
        self.clock.advance(10)
        self.table.accept_answer(association, "203.0.113.1", 53)
        self.assertEqual((association.last_activity, association.dropped), (0, 0))

    def test_oneway_association_accepts_no_answer(self):
        association = self.open(1, oneway=True)
        self.assertTrue(association.oneway)
        self.assertFalse(self.table.accept_answer(association, *PEER))

    def test_closed_association_accepts_no_answer(self):
        association = self.open(1)
        self.clock.advance(120)
        self.table.expire()
        self.assertFalse(self.table.accept_answer(association, *PEER))

    def test_encapsulate_association_accepts_answers_from_where_it_sent(self):
        association = self.open(1, peer=None)
        self.assertTrue(association.encapsulated)
        self.assertFalse(self.table.accept_answer(association, "192.0.2.1", 53))
        self.table.record_sent(association, 30, ("192.0.2.1", 53))
        self.table.record_sent(association, 30, ("198.51.100.7", 123))
        self.assertTrue(self.table.accept_answer(association, "192.0.2.1", 53))
        self.assertTrue(self.table.accept_answer(association, "198.51.100.7", 123))
        self.assertFalse(self.table.accept_answer(association, "192.0.2.1", 123))
        self.assertFalse(self.table.accept_answer(association, "198.51.100.7", 53))
        self.assertEqual(association.destinations, (("192.0.2.1", 53), ("198.51.100.7", 123)))

    def test_encapsulate_association_needs_the_destination(self):
        association = self.open(1, peer=None)
        self.assertRaises(ValueError, self.table.record_sent, association, 10)
        self.assertEqual(association.datagrams_out, 0)

    def test_relay_association_ignores_a_destination(self):
        association = self.open(1)
        self.table.record_sent(association, 10, ("203.0.113.9", 9))
        self.assertFalse(self.table.accept_answer(association, "203.0.113.9", 9))
        self.assertEqual(association.destinations, ())

    def test_encapsulate_destinations_are_bounded_oldest_forgotten_first(self):
        association = self.open(1, peer=None)
        for n in range(MAX_DESTINATIONS + 1):
            self.table.record_sent(association, 1, ("192.0.2.1", 1000 + n))
        self.assertEqual(len(association.destinations), MAX_DESTINATIONS)
        self.assertFalse(self.table.accept_answer(association, "192.0.2.1", 1000))
        self.assertTrue(self.table.accept_answer(association, "192.0.2.1", 1001))
        self.assertTrue(self.table.accept_answer(association, "192.0.2.1", 1000 + MAX_DESTINATIONS))

    def test_sending_again_keeps_a_destination_remembered(self):
        table = AssociationTable(3, 120, self.clock.seconds, max_destinations=2)
        association, _ = table.open(key(1), None)
        table.record_sent(association, 1, ("192.0.2.1", 1))
        table.record_sent(association, 1, ("192.0.2.2", 2))
        table.record_sent(association, 1, ("192.0.2.1", 1))  # refreshed
        table.record_sent(association, 1, ("192.0.2.3", 3))  # forgets .2
        self.assertEqual(association.destinations, (("192.0.2.1", 1), ("192.0.2.3", 3)))
        self.assertFalse(table.accept_answer(association, "192.0.2.2", 2))

    def test_oneway_encapsulate_association_accepts_no_answer(self):
        association = self.open(1, peer=None, oneway=True)
        self.table.record_sent(association, 1, ("192.0.2.1", 53))
        self.assertFalse(self.table.accept_answer(association, "192.0.2.1", 53))


class ManySendersTests(SynchronousTestCase):
    def test_ten_thousand_keys_from_fifty_senders_map_back_correctly(self):
        clock = Clock()
        table = AssociationTable(max_associations=10000, idle_timeout=120, clock=clock.seconds)
        rng = random.Random(5)
        senders = [f"10.0.{n // 10}.{n % 10 + 1}" for n in range(50)]
        keys = [(53, host, 1024 + port) for host in senders for port in range(200)]
        self.assertEqual(len(set(keys)), 10000)
        peers = {k: (f"192.0.2.{i % 250 + 1}", 53 + i % 3) for i, k in enumerate(keys)}
        order = keys * 2
        rng.shuffle(order)
        sizes = {}
        for k in order:
            association = table.get(k)
            if association is None:
                association, evicted = table.open(k, peers[k], handle=("socket", k))
                self.assertEqual(evicted, [])
            size = rng.randrange(1, 512)
            sizes[k] = sizes.get(k, 0) + size
            table.record_sent(association, size)
            clock.advance(0.001)
        self.assertEqual(len(table), 10000)
        for i, k in enumerate(keys):
            association = table.get(k)
            self.assertEqual(association.key, k)
            self.assertEqual(association.sender, (k[1], k[2]))
            self.assertEqual(association.handle, ("socket", k))
            self.assertEqual((association.datagrams_out, association.bytes_out), (2, sizes[k]))
            self.assertTrue(table.accept_answer(association, *peers[k]))
            # The next association's peer is refused unless it is the same peer.
            other = peers[keys[(i + 1) % len(keys)]]
            self.assertEqual(table.accept_answer(association, *other), other == peers[k])

    def test_bound_holds_with_ten_thousand_senders(self):
        clock = Clock()
        table = AssociationTable(max_associations=500, idle_timeout=120, clock=clock.seconds)
        evicted_total = 0
        for n in range(10000):
            _, evicted = table.open((53, "10.0.0.1", n + 1), PEER)
            evicted_total += len(evicted)
            self.assertLessEqual(len(table), 500)
        self.assertEqual(evicted_total, 9500)
        self.assertEqual([a.key[2] for a in table][:2], [9501, 9502])


class AssociationRecordTests(SynchronousTestCase):
    def test_association_has_fixed_slots(self):
        association = Association((1, "10.0.0.1", 2), PEER, None, False, 0.0)
        self.assertRaises(AttributeError, setattr, association, "colour", "red")
