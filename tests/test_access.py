"""Tests for sockssuite.access: the sockd.conf parser and the first-match decision."""

import os
import pickle
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sockssuite.access import (
    DEFAULT_POLICY,
    AccessPolicy,
    AccessRequest,
    AccessRule,
    AddressPattern,
    ConfigError,
    Decision,
    PortMatch,
    Problem,
    decide,
    load_access,
    parse_access,
)

SERVICES = {"telnet": 23, "http": 80, "ftp": 21, "smtp": 25}


def fake_getservbyname(name):
    try:
        return SERVICES[name]
    except KeyError:
        raise OSError("service/proto not found") from None


class FakeFiles:
    """A read_file that serves a dict and records what was read."""

    def __init__(self, files=None):
        self.files = files or {}
        self.reads = []

    def __call__(self, path):
        self.reads.append(path)
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None


def parse(text, files=None):
    return parse_access(
        text, "sockd.conf", read_file=FakeFiles(files), getservbyname=fake_getservbyname
    )


def errors(text, files=None):
    """The problems of a file that must not parse, as strings."""
    try:
        parse(text, files)
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    raise AssertionError(f"no ConfigError for {text!r}")


def request(user="someone", src="10.0.0.1", dst="192.0.2.1", port=80, src_name=None, dst_name=None):
    return AccessRequest(user, src, dst, port, src_name, dst_name)


def deciding_line(policy, **kwargs):
    """The line number that decides, or None for no match."""
    decision = decide(policy, request(**kwargs))
    return None if decision.rule is None else decision.rule.lineno


def permitted(text, **kwargs):
    return decide(parse(text), request(**kwargs)).permitted


PACKAGE_EXAMPLE = (
    "deny\t*=bonnie,clyde\t128.12.6.0 255.255.255.0 : /usr/ucb/mail -s 'Rejected SOCKS access by %u' $USER\n"
    "permit\t*=ylee\t128.12.6.4 255.255.255.255 137.12.0.0 255.255.0.0\n"
    "deny\t128.12.0.0 255.255.0.0 eq telnet\n"
    "permit\t128.12.0.0 255.255.0.0\n"
    "#NO_IDENTD: /usr/ucb/mail -s 'please run identd on %A' $USER\n"
    "#BAD_ID: /usr/ucb/mail -s '%U pretends to be %u on %A' $USER\n"
)


class PackageExampleTests(TestCase):
    """The socks4 package's own test file and the decisions it expects."""

    def setUp(self):
        self.policy = parse(PACKAGE_EXAMPLE)

    def assertDecision(self, permitted, line, **kwargs):
        decision = decide(self.policy, request(**kwargs))
        self.assertEqual(decision.permitted, permitted)
        self.assertEqual(None if decision.rule is None else decision.rule.lineno, line)

    def test_bonnie_from_the_subnet_is_denied_by_line_1(self):
        self.assertDecision(False, 1, user="bonnie", src="128.12.6.9")

    def test_clyde_from_the_subnet_is_denied_by_line_1(self):
        self.assertDecision(False, 1, user="clyde", src="128.12.6.4", dst="137.12.1.1")

    def test_ylee_from_her_host_to_137_12_is_permitted_by_line_2(self):
        self.assertDecision(True, 2, user="ylee", src="128.12.6.4", dst="137.12.1.1", port=80)

    def test_ylee_to_telnet_elsewhere_is_denied_by_line_3(self):
        self.assertDecision(False, 3, user="ylee", src="128.12.6.4", dst="10.1.1.1", port=23)

    def test_anyone_from_128_12_to_telnet_is_denied_by_line_3(self):
        self.assertDecision(False, 3, user="x", src="128.12.3.3", port=23)

    def test_anyone_from_128_12_to_http_is_permitted_by_line_4(self):
        self.assertDecision(True, 4, user="x", src="128.12.3.3", port=80)

    def test_other_networks_match_no_line_and_are_denied(self):
        self.assertDecision(False, None, user="x", src="10.0.0.1", port=80)

    def test_deny_line_keeps_its_command(self):
        rule = self.policy.rules[0]
        self.assertEqual(rule.command, "/usr/ucb/mail -s 'Rejected SOCKS access by %u' $USER")
        self.assertEqual(rule.argv, ("/usr/ucb/mail", "-s", "Rejected SOCKS access by %u", "$USER"))
        self.assertEqual(rule.users, frozenset({"bonnie", "clyde"}))

    def test_rules_keep_their_text_and_line(self):
        self.assertEqual([rule.lineno for rule in self.policy.rules], [1, 2, 3, 4])
        self.assertEqual(self.policy.rules[2].text, "deny\t128.12.0.0 255.255.0.0 eq telnet")

    def test_special_lines_are_read(self):
        self.assertEqual(self.policy.no_identd.lineno, 5)
        self.assertEqual(self.policy.no_identd.command, "/usr/ucb/mail -s 'please run identd on %A' $USER")
        self.assertEqual(self.policy.bad_id.lineno, 6)
        self.assertEqual(self.policy.bad_id.argv, ("/usr/ucb/mail", "-s", "%U pretends to be %u on %A", "$USER"))

    def test_needs_no_names_and_no_ident(self):
        self.assertFalse(self.policy.uses_src_names)
        self.assertFalse(self.policy.uses_dst_names)
        self.assertFalse(self.policy.needs_ident)
        self.assertEqual(self.policy.warnings, ())


LAN_EXAMPLE = """\
# Programs on the proxy host itself may go anywhere.
permit  127.0.0.0 255.0.0.0
# Nobody else reaches the proxy host's own services or cloud metadata services.
deny    0.0.0.0 0.0.0.0   127.0.0.0 255.0.0.0
deny    0.0.0.0 0.0.0.0   169.254.0.0 255.255.0.0
deny    0.0.0.0 0.0.0.0   100.100.100.200 255.255.255.255
# The LAN may use the web; identd is checked where it runs.
permit  ?=i 192.168.1.0 255.255.255.0   ALL 0.0.0.0   eq 443
permit  ?=i 192.168.1.0 255.255.255.0   ALL 0.0.0.0   eq http
# Staff may also use ssh, but only to our own domain.
permit  ?=I *=/etc/socks/staff 192.168.1.0 255.255.255.0 .example.org 0.0.0.0 eq 22
"""


class DocumentedLanExampleTests(TestCase):
    """The second example of docs/sockd-conf.rst and the decisions it states."""

    def setUp(self):
        self.policy = parse(LAN_EXAMPLE, {"/etc/socks/staff": "alice\n"})

    def decide(self, **kwargs):
        decision = decide(self.policy, request(**kwargs))
        return decision.permitted, None if decision.rule is None else decision.rule.lineno, decision.ident

    def test_local_programs_reach_metadata(self):
        self.assertEqual(self.decide(src="127.0.0.1", dst="169.254.169.254", port=80), (True, 2, "n"))

    def test_lan_clients_do_not_reach_metadata(self):
        self.assertEqual(self.decide(src="192.168.1.20", dst="169.254.169.254", port=80), (False, 5, "n"))

    def test_lan_clients_reach_the_web_with_optional_ident(self):
        self.assertEqual(self.decide(src="192.168.1.20", dst="203.0.113.7", port=443), (True, 8, "i"))

    def test_ssh_needs_staff_user_and_confirmed_domain(self):
        self.assertEqual(self.decide(src="192.168.1.20", dst="203.0.113.7", port=22), (False, None, "n"))
        self.assertEqual(
            self.decide(user="alice", src="192.168.1.20", dst="203.0.113.7", port=22),
            (False, None, "n"),
        )
        self.assertEqual(
            self.decide(user="alice", src="192.168.1.20", dst="203.0.113.7", port=22, dst_name="ssh.example.org"),
            (True, 11, "I"),
        )

    def test_outside_clients_are_denied(self):
        self.assertEqual(self.decide(src="10.0.0.1", dst="203.0.113.7", port=443), (False, None, "n"))

    def test_policy_asks_for_destination_names_and_ident(self):
        self.assertTrue(self.policy.uses_dst_names)
        self.assertFalse(self.policy.uses_src_names)
        self.assertTrue(self.policy.needs_ident)


class FirstMatchTests(TestCase):
    def test_deny_line_before_permit_wins(self):
        self.assertFalse(permitted("deny 10.0.0.0 255.0.0.0\npermit 0.0.0.0 0.0.0.0\n"))

    def test_permit_line_before_deny_wins(self):
        self.assertTrue(permitted("permit 10.0.0.0 255.0.0.0\ndeny 0.0.0.0 0.0.0.0\n"))

    def test_no_matching_line_denies(self):
        decision = decide(parse("permit 172.16.0.0 255.240.0.0\n"), request())
        self.assertEqual(decision, Decision(False, None, "n"))

    def test_empty_file_denies_everything_and_warns(self):
        policy = parse("# nothing here\n\n")
        self.assertEqual(policy.rules, ())
        self.assertFalse(decide(policy, request()).permitted)
        self.assertEqual(
            [str(w) for w in policy.warnings],
            ["sockd.conf:0:0: no permit or deny lines: every request is denied"],
        )

    def test_decision_names_the_rule(self):
        policy = parse("deny 1.2.3.4 255.255.255.255\npermit 0.0.0.0 0.0.0.0\n")
        decision = decide(policy, request())
        self.assertIs(decision.rule, policy.rules[1])

    def test_rule_matches_agrees_with_decide(self):
        policy = parse(PACKAGE_EXAMPLE)
        req = request(user="x", src="128.12.3.3", port=23)
        self.assertEqual([rule.matches(req) for rule in policy.rules], [False, False, True, True])

    def test_bad_request_address_is_a_value_error(self):
        self.assertRaises(ValueError, decide, DEFAULT_POLICY, request(src="127.1"))
        self.assertRaises(ValueError, decide, DEFAULT_POLICY, request(dst="not an address"))


class AddressMaskTests(TestCase):
    def test_all_ones_mask_matches_exactly_that_host(self):
        text = "permit 10.1.2.3 255.255.255.255\n"
        self.assertTrue(permitted(text, src="10.1.2.3"))
        self.assertFalse(permitted(text, src="10.1.2.4"))

    def test_zero_mask_matches_any_address(self):
        text = "permit 203.0.113.5 0.0.0.0\n"
        self.assertTrue(permitted(text, src="8.8.8.8"))
        self.assertTrue(permitted(text, src="0.0.0.0"))

    def test_network_mask_matches_the_network(self):
        text = "permit 192.168.0.0 255.255.0.0\n"
        self.assertTrue(permitted(text, src="192.168.255.255"))
        self.assertFalse(permitted(text, src="192.169.0.0"))

    def test_host_bits_in_the_address_are_ignored(self):
        self.assertTrue(permitted("permit 10.9.9.9 255.0.0.0\n", src="10.0.0.1"))

    def test_non_contiguous_mask_compares_only_its_bits(self):
        text = "permit 10.0.0.5 255.0.0.255\n"
        self.assertTrue(permitted(text, src="10.77.88.5"))
        self.assertFalse(permitted(text, src="10.77.88.6"))

    def test_destination_pair_restricts_the_destination(self):
        text = "permit 0.0.0.0 0.0.0.0 198.51.100.0 255.255.255.0\n"
        self.assertTrue(permitted(text, dst="198.51.100.200"))
        self.assertFalse(permitted(text, dst="198.51.101.1"))

    def test_missing_destination_means_any(self):
        rule = parse("permit 0.0.0.0 0.0.0.0\n").rules[0]
        self.assertEqual(rule.dst, AddressPattern.any())

    def test_pattern_keeps_integers(self):
        rule = parse("permit 10.1.2.3 255.255.0.0\n").rules[0]
        self.assertEqual(rule.src, AddressPattern.numeric(0x0A010203, 0xFFFF0000))
        self.assertFalse(rule.src.is_name)

    @given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    def test_numeric_match_is_the_mask_formula(self, addr, mask, address):
        pattern = AddressPattern.numeric(addr, mask)
        self.assertEqual(pattern.matches(address, None), (address & mask) == (addr & mask))

    @given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    def test_parsed_rule_match_is_the_mask_formula(self, addr, mask, address):
        def dotted(n):
            return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))

        policy = parse(f"permit {dotted(addr)} {dotted(mask)}\n")
        self.assertEqual(
            decide(policy, request(src=dotted(address))).permitted,
            (address & mask) == (addr & mask),
        )


class AddressLiteralTests(TestCase):
    """Ambiguous address spellings are refused, not guessed (security lesson)."""

    def assertRejected(self, token, expected):
        [problem] = errors(f"permit {token} 255.255.255.255\n")
        self.assertIn(f"sockd.conf:1:8: invalid source address '{token}': ", problem)
        self.assertIn(expected, problem)

    def test_shortened_address_is_rejected(self):
        self.assertRejected("127.1", "write 4 decimal octets")

    def test_octal_address_is_rejected(self):
        self.assertRejected("0177.0.0.1", "leading zero")

    def test_hex_address_is_rejected(self):
        self.assertRejected("0x7f.0.0.1", "write 4 decimal octets")

    def test_single_number_address_is_rejected(self):
        self.assertRejected("2130706433", "write 4 decimal octets")

    def test_leading_zero_octet_is_rejected(self):
        self.assertRejected("10.010.0.1", "octet '010' has a leading zero")

    def test_octet_over_255_is_rejected(self):
        self.assertRejected("10.0.0.256", "octet '256' is out of range 0..255")

    def test_five_octets_are_rejected(self):
        self.assertRejected("1.2.3.4.5", "write 4 decimal octets")

    def test_non_ascii_digits_are_rejected(self):
        [problem] = errors("permit \u0661.2.3.4 255.255.255.255\n")
        self.assertIn("invalid source address", problem)

    def test_bad_mask_is_rejected(self):
        self.assertEqual(
            errors("permit 10.0.0.0 255.0\n"),
            [
                "sockd.conf:1:17: invalid source mask '255.0': write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)"
            ],
        )

    def test_zero_is_a_valid_octet(self):
        self.assertEqual(parse("permit 0.0.0.0 0.0.0.0\n").rules[0].src.mask, 0)


class NamePatternTests(TestCase):
    def test_all_matches_any_address_without_a_name(self):
        text = "permit ALL 0.0.0.0\n"
        self.assertTrue(permitted(text, src="203.0.113.9"))

    def test_all_is_case_insensitive(self):
        self.assertEqual(parse("permit all 0.0.0.0 All 0.0.0.0\n").rules[0].dst, AddressPattern.any())

    def test_all_is_not_a_name_pattern(self):
        policy = parse("permit ALL 0.0.0.0 ALL 0.0.0.0\n")
        self.assertFalse(policy.uses_src_names)
        self.assertFalse(policy.uses_dst_names)

    def test_domain_matches_itself_and_names_under_it(self):
        policy = parse("permit .xyz.com 0.0.0.0\n")
        for name in ("xyz.com", "ab.xyz.com", "a.b.XYZ.COM", "ab.xyz.com."):
            self.assertEqual(deciding_line(policy, src_name=name), 1, name)

    def test_domain_does_not_match_a_longer_label(self):
        policy = parse("permit .xyz.com 0.0.0.0\n")
        for name in ("abxyz.com", "xyz.com.evil.net", "com"):
            self.assertIsNone(deciding_line(policy, src_name=name), name)

    def test_host_name_matches_only_that_host(self):
        policy = parse("permit gateway.xyz.com 0.0.0.0\n")
        self.assertEqual(deciding_line(policy, src_name="Gateway.XYZ.com."), 1)
        self.assertIsNone(deciding_line(policy, src_name="a.gateway.xyz.com"))
        self.assertIsNone(deciding_line(policy, src_name="xyz.com"))

    def test_name_pattern_never_matches_without_a_confirmed_name(self):
        policy = parse("permit .xyz.com 0.0.0.0\npermit host.xyz.com 0.0.0.0\n")
        self.assertIsNone(deciding_line(policy, src_name=None))
        self.assertFalse(AddressPattern.domain(".xyz.com").matches(0, None))
        self.assertFalse(AddressPattern.host("host.xyz.com").matches(0, None))

    def test_name_pattern_ignores_the_address(self):
        pattern = AddressPattern.host("h.example")
        self.assertTrue(pattern.matches(0x01020304, "h.example"))
        self.assertTrue(pattern.matches(0xFFFFFFFF, "H.EXAMPLE."))

    def test_destination_names_use_the_destination_name(self):
        policy = parse("deny ALL 0.0.0.0 .evil.example 0.0.0.0\npermit ALL 0.0.0.0\n")
        self.assertTrue(policy.uses_dst_names)
        self.assertFalse(policy.uses_src_names)
        self.assertEqual(deciding_line(policy, src_name="www.evil.example"), 2)
        self.assertEqual(deciding_line(policy, dst_name="www.evil.example"), 1)

    def test_source_names_set_uses_src_names(self):
        self.assertTrue(parse("permit .xyz.com 0.0.0.0\n").uses_src_names)
        self.assertTrue(AddressPattern.domain("xyz.com").is_name)

    def test_mask_after_a_name_is_required_but_ignored(self):
        policy = parse("permit host.example 255.255.255.255\n")
        self.assertEqual(deciding_line(policy, src="1.1.1.1", src_name="host.example"), 1)
        self.assertEqual(
            errors("permit host.example\n"),
            ["sockd.conf:1:8: expected a mask (dotted quad) after source address 'host.example'"],
        )

    def test_invalid_host_name_is_an_error(self):
        [problem] = errors("permit bad!name 0.0.0.0\n")
        self.assertTrue(problem.startswith("sockd.conf:1:8: invalid source address 'bad!name': "))

    def test_empty_label_is_an_error(self):
        self.assertEqual(len(errors("permit a..b 0.0.0.0\n")), 1)

    def test_bare_dot_domain_is_an_error(self):
        [problem] = errors("permit . 0.0.0.0\n")
        self.assertIn("a domain needs a name after the dot", problem)

    def test_name_ending_in_a_number_is_an_address_attempt(self):
        [problem] = errors("permit host.123 0.0.0.0\n")
        self.assertIn("write 4 decimal octets", problem)

    def test_name_starting_with_a_digit_is_a_name(self):
        self.assertTrue(parse("permit 3com.example 0.0.0.0\n").rules[0].src.is_name)


class PortTests(TestCase):
    def assertPortMatches(self, op, port, expected):
        policy = parse(f"permit 0.0.0.0 0.0.0.0 {op} 100\n")
        for requested, result in zip((port - 1, port, port + 1), expected):
            self.assertEqual(
                decide(policy, request(port=requested)).permitted, result, f"{op} 100 vs {requested}"
            )

    def test_eq_matches_only_the_port(self):
        self.assertPortMatches("eq", 100, (False, True, False))

    def test_neq_matches_every_other_port(self):
        self.assertPortMatches("neq", 100, (True, False, True))

    def test_lt_matches_below(self):
        self.assertPortMatches("lt", 100, (True, False, False))

    def test_gt_matches_above(self):
        self.assertPortMatches("gt", 100, (False, False, True))

    def test_le_matches_below_and_equal(self):
        self.assertPortMatches("le", 100, (True, True, False))

    def test_ge_matches_above_and_equal(self):
        self.assertPortMatches("ge", 100, (False, True, True))

    def test_port_after_destination_pair(self):
        rule = parse("permit 0.0.0.0 0.0.0.0 10.0.0.0 255.0.0.0 lt 1024\n").rules[0]
        self.assertEqual(rule.port, PortMatch("lt", 1024))
        self.assertEqual(rule.dst, AddressPattern.numeric(0x0A000000, 0xFF000000))

    def test_missing_port_part_means_any_port(self):
        self.assertIsNone(parse("permit 0.0.0.0 0.0.0.0\n").rules[0].port)

    def test_service_name_is_looked_up(self):
        self.assertEqual(parse("deny 0.0.0.0 0.0.0.0 eq telnet\n").rules[0].port, PortMatch("eq", 23))

    def test_each_service_name_is_looked_up_once(self):
        looked_up = []

        def getservbyname(name):
            looked_up.append(name)
            return 21

        parse_access("deny 0.0.0.0 0.0.0.0 eq ftp\ndeny 1.0.0.0 0.0.0.0 eq ftp\n", getservbyname=getservbyname)
        self.assertEqual(looked_up, ["ftp"])

    def test_default_service_lookup_uses_the_system_database(self):
        try:
            import socket

            expected = socket.getservbyname("telnet", "tcp")
        except OSError:
            raise self.skipTest("no telnet in this system's services database")
        self.assertEqual(parse_access("deny 0.0.0.0 0.0.0.0 eq telnet").rules[0].port.port, expected)

    def test_unknown_service_name_is_an_error(self):
        self.assertEqual(
            errors("deny 0.0.0.0 0.0.0.0 eq gopherz\n"),
            ["sockd.conf:1:25: unknown service name 'gopherz' (not a tcp service in the services database)"],
        )

    def test_port_bounds_are_accepted(self):
        self.assertEqual(parse("permit 0.0.0.0 0.0.0.0 ge 0\n").rules[0].port.port, 0)
        self.assertEqual(parse("permit 0.0.0.0 0.0.0.0 le 65535\n").rules[0].port.port, 65535)

    def test_port_out_of_range_is_an_error(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 eq 65536\n"),
            ["sockd.conf:1:27: port '65536' out of range (0..65535)"],
        )

    def test_huge_port_number_is_an_error(self):
        self.assertEqual(len(errors("permit 0.0.0.0 0.0.0.0 eq " + "9" * 5000 + "\n")), 1)

    def test_unknown_operator_is_an_error(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 eqq 23\n"),
            ["sockd.conf:1:24: unknown port operator 'eqq' (expected eq, neq, lt, gt, le, ge)"],
        )

    def test_operators_are_lower_case(self):
        self.assertEqual(len(errors("permit 0.0.0.0 0.0.0.0 EQ 23\n")), 1)

    def test_port_without_operator_is_an_error(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 23\n"),
            ["sockd.conf:1:24: expected a port operator (eq, neq, lt, gt, le, ge) before port '23'"],
        )

    def test_operator_without_port_is_an_error(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 eq\n"),
            ["sockd.conf:1:24: expected a port number or service name after 'eq'"],
        )

    @given(st.sampled_from(["eq", "neq", "lt", "gt", "le", "ge"]), st.integers(0, 65535), st.integers(0, 65535))
    def test_port_match_is_the_comparison(self, op, port, requested):
        expected = {
            "eq": requested == port,
            "neq": requested != port,
            "lt": requested < port,
            "gt": requested > port,
            "le": requested <= port,
            "ge": requested >= port,
        }[op]
        self.assertEqual(PortMatch(op, port).matches(requested), expected)


class UserListTests(TestCase):
    def test_listed_user_matches(self):
        text = "permit *=alice,bob 0.0.0.0 0.0.0.0\n"
        self.assertTrue(permitted(text, user="bob"))
        self.assertFalse(permitted(text, user="carol"))

    def test_user_names_are_case_sensitive(self):
        self.assertFalse(permitted("permit *=alice 0.0.0.0 0.0.0.0\n", user="Alice"))

    def test_no_user_list_means_any_user(self):
        self.assertIsNone(parse("permit 0.0.0.0 0.0.0.0\n").rules[0].users)

    def test_empty_user_list_means_any_user(self):
        rule = parse("permit *= 0.0.0.0 0.0.0.0\n").rules[0]
        self.assertIsNone(rule.users)
        self.assertTrue(permitted("permit *= 0.0.0.0 0.0.0.0\n", user="anybody"))

    def test_empty_user_id_matches_only_an_unrestricted_rule(self):
        self.assertFalse(permitted("permit *=alice 0.0.0.0 0.0.0.0\n", user=""))

    def test_empty_entry_is_an_error(self):
        self.assertEqual(
            errors("permit *=alice,,bob 0.0.0.0 0.0.0.0\n"),
            ["sockd.conf:1:16: empty entry in user list (a doubled comma, or a comma at the start or end)"],
        )

    def test_trailing_comma_is_an_error(self):
        self.assertEqual(len(errors("permit *=alice, 0.0.0.0 0.0.0.0\n")), 1)

    def test_file_entry_is_read_at_parse_time(self):
        files = {"/etc/socks/staff": "alice bob\n"}
        rule = parse("permit *=carol,/etc/socks/staff 0.0.0.0 0.0.0.0\n", files).rules[0]
        self.assertEqual(rule.users, frozenset({"alice", "bob", "carol"}))

    def test_file_separators_and_comments(self):
        files = {"/u": "# staff list\nalice, bob\tcarol  # not-a-user\r\n\n,dave,,\n  eve#x\n"}
        rule = parse("permit *=/u 0.0.0.0 0.0.0.0\n", files).rules[0]
        self.assertEqual(rule.users, frozenset({"alice", "bob", "carol", "dave", "eve"}))

    def test_file_read_once_per_parse(self):
        read_file = FakeFiles({"/u": "alice"})
        parse_access("permit *=/u 1.0.0.0 0.0.0.0\npermit *=/u 2.0.0.0 0.0.0.0\n", read_file=read_file)
        self.assertEqual(read_file.reads, ["/u"])

    def test_missing_file_warns_and_matches_nobody(self):
        policy = parse("permit *=/missing 0.0.0.0 0.0.0.0\n")
        self.assertEqual(policy.rules[0].users, frozenset())
        self.assertEqual(
            [str(w) for w in policy.warnings],
            [
                "sockd.conf:1:10: cannot read user list file '/missing': No such file or directory; "
                "this entry matches nobody"
            ],
        )
        self.assertFalse(decide(policy, request(user="/missing")).permitted)

    def test_missing_file_leaves_other_entries_in_force(self):
        policy = parse("deny *=bonnie,/missing 0.0.0.0 0.0.0.0\npermit 0.0.0.0 0.0.0.0\n")
        self.assertEqual(deciding_line(policy, user="bonnie"), 1)
        self.assertEqual(deciding_line(policy, user="clyde"), 2)

    def test_default_reader_reads_a_real_file(self):
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("alice\nj\u00f6rg\n")
        policy = parse_access(f"permit *={path} 0.0.0.0 0.0.0.0\n")
        self.assertEqual(policy.rules[0].users, frozenset({"alice", "j\u00f6rg"}))
        self.assertEqual(policy.warnings, ())

    def test_default_reader_refuses_a_device(self):
        policy = parse_access("permit *=/dev/null 0.0.0.0 0.0.0.0\n")
        [warning] = policy.warnings
        self.assertIn("not a regular file", warning.message)

    def test_default_reader_reports_a_missing_file(self):
        policy = parse_access("permit *=/nonexistent/socks-users 0.0.0.0 0.0.0.0\n")
        self.assertEqual(len(policy.warnings), 1)
        self.assertEqual(policy.rules[0].users, frozenset())


class IdentFieldTests(TestCase):
    def decision(self, text, default="n"):
        return decide(parse(text), request(), default)

    def test_ident_required(self):
        self.assertEqual(self.decision("permit ?=I 0.0.0.0 0.0.0.0\n").ident, "I")

    def test_ident_if_answered(self):
        self.assertEqual(self.decision("permit ?=i 0.0.0.0 0.0.0.0\n").ident, "i")

    def test_ident_off_overrides_server_default(self):
        self.assertEqual(self.decision("permit ?=n 0.0.0.0 0.0.0.0\n", default="I").ident, "n")

    def test_no_ident_field_uses_server_default(self):
        rule = parse("permit 0.0.0.0 0.0.0.0\n").rules[0]
        self.assertIsNone(rule.ident)
        self.assertEqual(self.decision("permit 0.0.0.0 0.0.0.0\n", default="i").ident, "i")
        self.assertEqual(self.decision("permit 0.0.0.0 0.0.0.0\n").ident, "n")

    def test_denial_never_asks_for_ident(self):
        self.assertEqual(self.decision("deny ?=I 0.0.0.0 0.0.0.0\n", default="I").ident, "n")

    def test_invalid_default_is_a_value_error(self):
        self.assertRaises(ValueError, decide, DEFAULT_POLICY, request(src="127.0.0.1"), "x")

    def test_ident_and_user_fields_in_either_order(self):
        a = parse("permit ?=I *=bob 0.0.0.0 0.0.0.0\n").rules[0]
        b = parse("permit *=bob ?=I 0.0.0.0 0.0.0.0\n").rules[0]
        self.assertEqual((a.ident, a.users), ("I", frozenset({"bob"})))
        self.assertEqual((b.ident, b.users), ("I", frozenset({"bob"})))

    def test_invalid_ident_mode_is_an_error(self):
        self.assertEqual(
            errors("permit ?=X 0.0.0.0 0.0.0.0\n"),
            ["sockd.conf:1:8: invalid ident mode '?=X' (expected ?=I, ?=i or ?=n)"],
        )

    def test_duplicate_field_is_an_error(self):
        self.assertEqual(
            errors("permit ?=i ?=I 0.0.0.0 0.0.0.0\n"),
            ["sockd.conf:1:12: duplicate ?= field (the first is at column 8)"],
        )

    def test_field_after_the_address_is_an_error(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 *=bob\n"),
            ["sockd.conf:1:24: '*=bob' must come right after the action, before the source address"],
        )

    def test_needs_ident_only_for_permit_rules_that_ask(self):
        self.assertTrue(parse("permit ?=i 0.0.0.0 0.0.0.0\n").needs_ident)
        self.assertTrue(parse("permit ?=I 0.0.0.0 0.0.0.0\n").needs_ident)
        self.assertFalse(parse("deny ?=I 0.0.0.0 0.0.0.0\npermit ?=n 0.0.0.0 0.0.0.0\n").needs_ident)


class LineSyntaxTests(TestCase):
    def test_blank_and_comment_lines_are_ignored(self):
        policy = parse("\n   \n\t\n# comment\n  # indented comment\npermit 0.0.0.0 0.0.0.0\n")
        self.assertEqual([rule.lineno for rule in policy.rules], [6])

    def test_comment_ends_the_rule_anywhere(self):
        rule = parse("permit 10.0.0.0 255.0.0.0 # eq 23 : not a command\n").rules[0]
        self.assertIsNone(rule.port)
        self.assertIsNone(rule.command)

    def test_comment_without_a_blank_before_it(self):
        self.assertEqual(parse("permit 10.0.0.0 255.0.0.0#x\n").rules[0].src.mask, 0xFF000000)

    def test_hash_inside_a_command_belongs_to_the_command(self):
        rule = parse("permit 0.0.0.0 0.0.0.0 : logger 'ticket #12'\n").rules[0]
        self.assertEqual(rule.command, "logger 'ticket #12'")
        self.assertEqual(rule.argv, ("logger", "ticket #12"))

    def test_colon_without_blank_starts_the_command(self):
        rule = parse("permit 0.0.0.0 0.0.0.0:logger x\n").rules[0]
        self.assertEqual(rule.command, "logger x")

    def test_tabs_count_as_blanks(self):
        rule = parse("permit\t\t*=bob\t10.0.0.0\t255.0.0.0\teq\t80\n").rules[0]
        self.assertEqual(rule.port, PortMatch("eq", 80))

    def test_crlf_line_ends_are_accepted(self):
        policy = parse("permit 10.0.0.0 255.0.0.0\r\ndeny 0.0.0.0 0.0.0.0\r\n")
        self.assertEqual(policy.rules[0].text, "permit 10.0.0.0 255.0.0.0")
        self.assertEqual(len(policy.rules), 2)

    def test_empty_command_is_ignored_with_a_warning(self):
        policy = parse("permit 0.0.0.0 0.0.0.0 :   \n")
        self.assertIsNone(policy.rules[0].command)
        self.assertEqual([str(w) for w in policy.warnings], ["sockd.conf:1:28: empty shell command after ':' is ignored"])

    def test_command_with_bad_quoting_is_an_error_at_its_column(self):
        self.assertEqual(
            errors("deny 0.0.0.0 0.0.0.0 : mail -s 'oops\n"),
            ["sockd.conf:1:24: cannot split the shell command into words: No closing quotation (check its quotes)"],
        )

    def test_substitution_in_the_program_name_is_an_error(self):
        self.assertEqual(
            errors("deny 0.0.0.0 0.0.0.0 : %u now\n"),
            ["sockd.conf:1:24: the program (first word) of a shell command must not contain %-substitutions"],
        )

    def test_command_without_a_rule_is_an_error(self):
        [problem] = errors("  : /bin/true\n")
        self.assertTrue(problem.startswith("sockd.conf:1:3: a shell command needs a rule before ':'"))


class SpecialLineTests(TestCase):
    def test_special_lines_may_be_indented(self):
        policy = parse("  \t#NO_IDENTD: logger no identd on %A\n")
        self.assertEqual(policy.no_identd.argv, ("logger", "no", "identd", "on", "%A"))
        self.assertEqual(policy.no_identd.text, "  \t#NO_IDENTD: logger no identd on %A")

    def test_first_special_line_of_each_kind_is_used(self):
        policy = parse("#BAD_ID: first\n#BAD_ID: second\npermit 0.0.0.0 0.0.0.0\n")
        self.assertEqual(policy.bad_id.command, "first")
        self.assertIsNone(policy.no_identd)
        self.assertEqual(
            [str(w) for w in policy.warnings],
            ["sockd.conf:2:1: only the first #BAD_ID: line (line 1) is used; this one is ignored"],
        )

    def test_empty_special_line_is_ignored_with_a_warning(self):
        policy = parse("#NO_IDENTD:\n#NO_IDENTD: real\npermit 0.0.0.0 0.0.0.0\n")
        self.assertEqual(policy.no_identd.lineno, 2)
        self.assertEqual(len(policy.warnings), 1)

    def test_special_marker_is_case_sensitive(self):
        self.assertIsNone(parse("#no_identd: x\npermit 0.0.0.0 0.0.0.0\n").no_identd)

    def test_special_line_with_bad_quoting_is_an_error(self):
        self.assertEqual(
            errors('#BAD_ID: mail "x\n'),
            ['sockd.conf:1:10: cannot split the shell command into words: No closing quotation (check its quotes)'],
        )

    def test_special_line_after_a_rule_is_a_comment(self):
        policy = parse("permit 0.0.0.0 0.0.0.0 #NO_IDENTD: x\n")
        self.assertIsNone(policy.no_identd)


class ErrorReportTests(TestCase):
    def test_missing_source_mask_names_line_and_column(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0\n\npermit 10.0.0.0\n"),
            ["sockd.conf:3:8: expected a mask (dotted quad) after source address '10.0.0.0'"],
        )

    def test_unknown_action(self):
        self.assertEqual(
            errors("allow 0.0.0.0 0.0.0.0\n"), ["sockd.conf:1:1: unknown action 'allow' (expected permit or deny)"]
        )

    def test_socks_conf_action_gets_a_hint(self):
        [problem] = errors("direct 0.0.0.0 0.0.0.0\n")
        self.assertIn("'direct' belongs in socks.conf", problem)

    def test_actions_are_lower_case(self):
        self.assertEqual(len(errors("PERMIT 0.0.0.0 0.0.0.0\n")), 1)

    def test_empty_rule_after_action(self):
        [problem] = errors("  deny\n")
        self.assertTrue(problem.startswith("sockd.conf:1:3: expected a source address and mask after 'deny'"))

    def test_empty_rule_after_fields(self):
        [problem] = errors("permit ?=i *=bob\n")
        self.assertTrue(problem.startswith("sockd.conf:1:12: expected a source address and mask after '*=bob'"))

    def test_missing_destination_mask(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 10.0.0.0\n"),
            ["sockd.conf:1:24: expected a mask (dotted quad) after destination address '10.0.0.0'"],
        )

    def test_lone_word_after_source(self):
        self.assertEqual(
            errors("permit 0.0.0.0 0.0.0.0 gateway\n"),
            [
                "sockd.conf:1:24: unexpected 'gateway': expected a destination address and mask, "
                "or a port operator (eq, neq, lt, gt, le, ge) and a port"
            ],
        )

    def test_too_many_fields(self):
        [problem] = errors("permit 0.0.0.0 0.0.0.0 0.0.0.0 0.0.0.0 eq 80 extra\n")
        self.assertTrue(problem.startswith("sockd.conf:1:46: too many fields: unexpected 'extra'"))

    def test_every_error_is_collected_in_order(self):
        text = (
            "permit 10.0.0.0\n"  # 1
            "permit 0.0.0.0 0.0.0.0\n"  # 2: fine
            "allow 1.2.3.4 255.255.255.255\n"  # 3
            "permit 127.1 255.0.0.0 eqq 23\n"  # 4: two errors
        )
        self.assertEqual(
            errors(text),
            [
                "sockd.conf:1:8: expected a mask (dotted quad) after source address '10.0.0.0'",
                "sockd.conf:3:1: unknown action 'allow' (expected permit or deny)",
                "sockd.conf:4:8: invalid source address '127.1': write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)",
                "sockd.conf:4:24: unknown port operator 'eqq' (expected eq, neq, lt, gt, le, ge)",
            ],
        )

    def test_config_error_string_is_the_problems_by_line(self):
        try:
            parse("permit\ndeny\n")
        except ConfigError as exc:
            self.assertEqual(str(exc).splitlines(), [str(p) for p in exc.problems])
            self.assertEqual(len(exc.problems), 2)
        else:
            self.fail("no ConfigError")

    def test_config_error_keeps_warnings(self):
        try:
            parse("permit *=/missing 0.0.0.0 0.0.0.0\npermit\n")
        except ConfigError as exc:
            self.assertEqual(len(exc.warnings), 1)
        else:
            self.fail("no ConfigError")

    def test_problem_format(self):
        self.assertEqual(str(Problem("f.conf", 3, 8, "msg")), "f.conf:3:8: msg")

    def test_long_tokens_are_shortened_in_messages(self):
        [problem] = errors("allow" + "x" * 10000 + " 0.0.0.0 0.0.0.0\n")
        self.assertLess(len(problem), 200)


class LoadAccessTests(TestCase):
    def test_load_reads_the_file(self):
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("permit 10.0.0.0 255.0.0.0\n")
        policy = load_access(path)
        self.assertEqual(policy.filename, path)
        self.assertEqual(policy.rules[0].lineno, 1)

    def test_load_error_names_the_file(self):
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"permit \xff.0.0.0 0.0.0.0\n")
        exc = self.assertRaises(ConfigError, load_access, path)
        self.assertTrue(str(exc).startswith(f"{path}:1:8: invalid source address '\\udcff.0.0.0'"))

    def test_unreadable_file_is_a_config_error_at_line_0(self):
        exc = self.assertRaises(ConfigError, load_access, "/nonexistent/sockd.conf")
        self.assertEqual(
            [str(p) for p in exc.problems],
            ["/nonexistent/sockd.conf:0:0: cannot read access file: No such file or directory"],
        )


class DefaultPolicyTests(TestCase):
    def test_loopback_clients_may_go_anywhere(self):
        decision = decide(DEFAULT_POLICY, request(src="127.0.0.1", dst="203.0.113.1", port=443))
        self.assertTrue(decision.permitted)
        self.assertEqual(decision.rule.text, "permit 127.0.0.0 255.0.0.0")

    def test_whole_loopback_network_is_permitted(self):
        self.assertTrue(decide(DEFAULT_POLICY, request(src="127.255.255.254")).permitted)

    def test_other_clients_are_denied(self):
        for src in ("10.0.0.1", "128.0.0.1", "0.0.0.0", "192.168.1.1"):
            self.assertFalse(decide(DEFAULT_POLICY, request(src=src)).permitted, src)

    def test_default_policy_shape(self):
        self.assertEqual(DEFAULT_POLICY.filename, "<built-in>")
        self.assertEqual([rule.text for rule in DEFAULT_POLICY.rules], [
            "permit 127.0.0.0 255.0.0.0", "permit 127.0.0.0/8 ::/0", "permit ::1", "permit ::1 ::/0"])
        self.assertFalse(DEFAULT_POLICY.needs_ident)
        self.assertIsNone(DEFAULT_POLICY.no_identd)


class RecordTests(TestCase):
    def test_policy_pickles(self):
        policy = parse(PACKAGE_EXAMPLE + "permit ?=i *=x .example.org 0.0.0.0 host.example 0.0.0.0 ge 1024\n")
        self.assertEqual(pickle.loads(pickle.dumps(policy)), policy)

    def test_config_error_pickles(self):
        exc = self.assertRaises(ConfigError, parse, "permit\n")
        copy = pickle.loads(pickle.dumps(exc))
        self.assertEqual(copy.problems, exc.problems)

    def test_records_are_frozen(self):
        rule = DEFAULT_POLICY.rules[0]
        self.assertRaises(AttributeError, setattr, rule, "action", "deny")
        self.assertIsInstance(rule, AccessRule)
        self.assertIsInstance(DEFAULT_POLICY, AccessPolicy)


# ---- robustness: any text gives a policy or a ConfigError, nothing else

_TOKENS = [
    "permit", "deny", "allow", "?=I", "?=i", "?=n", "?=", "?=x", "*=", "*=bob", "*=a,b", "*=/u", "*=/missing",
    "*=,", "10.0.0.0", "255.0.0.0", "0.0.0.0", "255.255.255.255", "127.1", "0177.0.0.1", "0x7f.0.0.1",
    "256.1.1.1", "ALL", "all", ".xyz.com", ".", "host.example", "bad!", "eq", "neq", "lt", "gt", "le", "ge",
    "eqq", "23", "65536", "telnet", "nosuch", ":", "#", "#NO_IDENTD:", "#BAD_ID:", "'", '"', "%u", "\\", "\t",
    "\r", "\x00", "\udcff", "\u0661", "",
]


def _join_line(parts):
    return " ".join(parts)


_GRAMMAR_LINES = st.lists(st.lists(st.sampled_from(_TOKENS), max_size=10).map(_join_line), max_size=8).map("\n".join)


class RobustnessTests(TestCase):
    def assertParsesOrConfigError(self, text):
        try:
            policy = parse(text, {"/u": "alice bob\n"})
        except ConfigError as exc:
            self.assertTrue(exc.problems)
            for problem in exc.problems:
                self.assertGreaterEqual(problem.line, 1)
                self.assertGreaterEqual(problem.column, 1)
        else:
            self.assertIsInstance(policy, AccessPolicy)
            self.assertIsInstance(decide(policy, request()), Decision)
            for rule in policy.rules:
                self.assertIn(rule.action, ("permit", "deny"))

    @given(st.text())
    def test_any_text_parses_or_raises_config_error(self, text):
        self.assertParsesOrConfigError(text)

    @given(_GRAMMAR_LINES)
    def test_lines_of_grammar_tokens_parse_or_raise_config_error(self, text):
        self.assertParsesOrConfigError(text)

    @given(st.lists(st.sampled_from(_TOKENS), max_size=10))
    def test_default_readers_never_raise_other_errors(self, parts):
        # The real getservbyname and file reader, fed hostile names ("/missing" only).
        try:
            parse_access(_join_line(parts))
        except ConfigError:
            pass


# ---- our extensions: addr/prefix, IPv6 patterns, cmd=

class PrefixAndIPv6Tests(TestCase):
    def test_prefix_is_the_same_as_addr_and_mask(self):
        a = parse("permit 10.0.0.0/8 192.168.0.0/16 eq 80\n").rules[0]
        b = parse("permit 10.0.0.0 255.0.0.0 192.168.0.0 255.255.0.0 eq 80\n").rules[0]
        self.assertEqual((a.src, a.dst, a.port), (b.src, b.dst, b.port))

    def test_each_pattern_matches_only_its_own_family(self):
        policy = parse("deny ::/0 2001:db8::/32\n"
                       "permit ::1 ::/0 gt 1023\n"
                       "permit 127.0.0.0/8\n"
                       "permit 127.0.0.0/8 ::/0 eq 80\n"
                       "deny 0.0.0.0 0.0.0.0\n"
                       "permit ALL 0.0.0.0\n")
        self.assertEqual(deciding_line(policy, src="::1", dst="2001:db8::5"), 1)
        self.assertEqual(deciding_line(policy, src="::1", dst="2001:db9::5", port=8080), 2)
        self.assertIsNone(deciding_line(policy, src="::1", dst="127.0.0.1", port=8080))  # ::/0 is IPv6 only
        self.assertIsNone(deciding_line(policy, src="::2", dst="2001:db9::5", port=8080))
        # An IPv4 line, even one for every address (0.0.0.0 0.0.0.0, ALL, an
        # omitted destination), never matches an IPv6 address: old files
        # stay closed to IPv6.
        self.assertEqual(deciding_line(policy, src="127.0.0.1", dst="2001:db9::5", port=80), 4)
        self.assertIsNone(deciding_line(policy, src="127.0.0.1", dst="::1", port=22))
        self.assertEqual(deciding_line(policy, src="10.0.0.1", dst="10.0.0.2"), 5)
        self.assertEqual(deciding_line(policy, src="::ffff:127.0.0.1", dst="10.0.0.1"), 3)  # mapped is IPv4

    def test_colons_of_an_ipv6_field_do_not_start_the_command(self):
        rule = parse("permit ::1/128 2001:db8::/32 eq 22 : echo %A\n").rules[0]
        self.assertEqual((str(rule.src), str(rule.dst), rule.port.port, rule.argv),
                         ("::1/128", "2001:db8::/32", 22, ("echo", "%A")))
        self.assertEqual(parse("permit 10.0.0.0/8 eq 23:echo hi\n").rules[0].argv, ("echo", "hi"))

    def test_prefix_errors_name_line_and_column(self):
        self.assertEqual(errors("permit 10.0.0.1/8\n"), [
            "sockd.conf:1:8: invalid source address '10.0.0.1/8': bits are set after the first 8; "
            "write 10.0.0.0/8 for the network, or the address with /32 for one host"])
        self.assertEqual(errors("permit ::1/129\n"), [
            "sockd.conf:1:8: invalid source address '::1/129': the prefix length after '/' must be 0..128"])
        [problem] = errors("permit 127.0.0.0/8 2001:db8:::1/64\n")
        self.assertTrue(problem.startswith("sockd.conf:1:20: invalid destination address '2001:db8:::1/64': "
                                           "not an IPv6 address"), problem)
        for mapped in ("::ffff:10.0.0.1", "::ffff:0:0/96", "::ffff:a00:0/104"):
            [problem] = errors(f"permit {mapped}\n")
            self.assertIn("an IPv4-mapped address; write the IPv4 address", problem)
        # A command right after ':' may contain colons.
        self.assertEqual(parse("permit 0.0.0.0/0 :mail:root\n").rules[0].argv, ("mail:root",))

    def test_cmd_field(self):
        policy = parse("permit cmd=bind,udp *=alice 127.0.0.0/8\npermit ?=n cmd=connect 10.0.0.0/8\n")
        self.assertEqual(policy.rules[0].commands, frozenset({"bind", "udp"}))
        self.assertIsNone(parse("permit 10.0.0.0/8\n").rules[0].commands)

        def line(command, src="127.0.0.1", user="alice"):
            rule = decide(policy, AccessRequest(user, src, "192.0.2.1", 80, command=command)).rule
            return rule and rule.lineno
        self.assertEqual([line("connect"), line("bind"), line("udp")], [None, 1, 1])
        self.assertEqual([line("connect", "10.1.1.1"), line("bind", "10.1.1.1")], [2, None])
        self.assertEqual(errors("permit cmd=connect,fly 10.0.0.0/8\n"), [
            "sockd.conf:1:20: unknown command 'fly' (cmd= takes connect, bind and udp, comma-separated)"])
        self.assertEqual(errors("permit cmd=bind cmd=udp 10.0.0.0/8\n"), [
            "sockd.conf:1:17: duplicate cmd= field (the first is at column 8)"])
        self.assertEqual(errors("permit 10.0.0.0/8 cmd=bind\n"), [
            "sockd.conf:1:19: 'cmd=bind' must come right after the action, before the source address"])


_V6 = st.integers(min_value=0, max_value=(1 << 128) - 1)


class IPv6PropertyTests(TestCase):
    @given(network=_V6, prefix=st.integers(0, 128), address=_V6)
    def test_ipv6_prefix_matches_as_ipaddress_says(self, network, prefix, address):
        check_ipv6_prefix(network, prefix, address)


def check_ipv6_prefix(network, prefix, address):
    import ipaddress
    net = ipaddress.IPv6Network((network, prefix), strict=False)
    addr = ipaddress.IPv6Address(address)
    if addr.ipv4_mapped is not None:
        return  # mapped addresses count as IPv4: covered above
    policy = parse(f"permit 127.0.0.1/32 {net.compressed}\n")
    permitted = decide(policy, request(src="127.0.0.1", dst=addr.compressed)).permitted
    assert permitted == (addr in net)
