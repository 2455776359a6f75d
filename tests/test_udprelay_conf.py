"""Tests for sockssuite.udprelay_conf: the udprelay.conf parser and sender matching."""

import os
import pickle
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.access import ConfigError as AccessConfigError
from sockssuite.udprelay_conf import (
    ConfigError,
    EncapsulateRule,
    Problem,
    RelayRule,
    SenderPattern,
    UDPRelayConfig,
    load_udprelay,
    parse_udprelay,
)

SERVICES = {"domain": 53, "ntp": 123, "syslog": 514, "archie": 1525, "zero": 0, "huge": 70000}


class FakeServices:
    """A getservbyname that serves a dict and records what was asked."""

    def __init__(self):
        self.asked = []

    def __call__(self, name):
        self.asked.append(name)
        try:
            return SERVICES[name]
        except KeyError:
            raise OSError("service/proto not found") from None


def parse(text, services=None):
    return parse_udprelay(text, "udprelay.conf", getservbyname=services or FakeServices())


def errors(text):
    """The problems of a file that must not parse, as strings."""
    try:
        parse(text)
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    raise AssertionError(f"no ConfigError for {text!r}")


def relay(line):
    """The one relay rule of a one-line file."""
    [rule] = parse(line + "\n").relays
    return rule


def sender(pattern):
    """The sender pattern of `relay PATTERN * 5000 192.0.2.1 53 any`."""
    return relay(f"relay {pattern} * 5000 192.0.2.1 53 any").source


ARCHIE_EXAMPLE = """\
#     from-host     from-port  localport  to-host              to-port  localport
relay *.your.domain *          1525       archie.rutgers.edu   1525     any
"""

DNS_EXAMPLE = """\
# Inside hosts ask the bastion's port 53; it asks the outside resolver.
relay 10.0.0.0/8 * 53 192.0.2.53 53 any
"""

FULL_EXAMPLE = """\
# udprelay.conf for the bastion host
relay   *.your.domain   *       1525  archie.rutgers.edu  1525  any
relay   10.0.0.0/8      *       53    192.0.2.53          53    any
relay   10.1.2.3        syslog  514   198.51.100.7        514   5514  oneway
encapsulate 10.0.0.0/8  1081
encapsulate *.lab.your.domain 1082   # sockified lab programs
"""


class DocumentedExampleTests(SynchronousTestCase):
    """The examples of docs/udprelay-conf.rst and what they mean."""

    def test_archie_example_is_one_relay_line(self):
        config = parse(ARCHIE_EXAMPLE)
        self.assertEqual(
            config.relays,
            (
                RelayRule(
                    lineno=2,
                    text="relay *.your.domain *          1525       archie.rutgers.edu   1525     any",
                    source=SenderPattern("domain", name="your.domain"),
                    source_port=None,
                    local_port=1525,
                    peer_host="archie.rutgers.edu",
                    peer_port=1525,
                    peer_local_port=None,
                    oneway=False,
                ),
            ),
        )
        self.assertEqual(config.encapsulates, ())
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.filename, "udprelay.conf")

    def test_archie_example_accepts_confirmed_names_under_the_domain(self):
        rule = parse(ARCHIE_EXAMPLE).relays[0]
        self.assertTrue(rule.matches_sender("10.9.9.9", 40000, "ws1.your.domain"))
        self.assertTrue(rule.matches_sender("10.9.9.9", 1, "a.b.YOUR.Domain."))
        self.assertFalse(rule.matches_sender("10.9.9.9", 40000, None))
        self.assertFalse(rule.matches_sender("10.9.9.9", 40000, "ws1.other.domain"))

    def test_dns_example_relays_the_10_network_to_one_resolver(self):
        rule = parse(DNS_EXAMPLE).relays[0]
        self.assertEqual(
            (str(rule.source), rule.source_port, rule.local_port, rule.peer_host, rule.peer_port, rule.peer_local_port),
            ("10.0.0.0/8", None, 53, "192.0.2.53", 53, None),
        )
        self.assertTrue(rule.matches_sender("10.200.0.1", 33333))
        self.assertFalse(rule.matches_sender("11.0.0.1", 33333))

    def test_full_example(self):
        config = parse(FULL_EXAMPLE)
        self.assertEqual([rule.lineno for rule in config.relays], [2, 3, 4])
        self.assertEqual([rule.lineno for rule in config.encapsulates], [5, 6])
        syslog = config.relays[2]
        self.assertEqual((syslog.source_port, syslog.peer_local_port, syslog.oneway), (514, 5514, True))
        self.assertEqual(config.encapsulates[1].source, SenderPattern("domain", name="lab.your.domain"))
        self.assertTrue(config.uses_names)
        self.assertIs(config.rule_for_port(1082), config.encapsulates[1])
        self.assertIs(config.rule_for_port(53), config.relays[1])

    def test_port_numbers_can_be_looked_up_by_line(self):
        config = parse(FULL_EXAMPLE)
        self.assertIsNone(config.rule_for_port(5514))  # a localport2 receives no senders
        self.assertIsNone(config.rule_for_port(9))


ERRORS_EXAMPLE = """\
relay *.your.domain * 1525 archie.rutgers.edu 1525 any
relay 10.0.0.0 255.0.0.0 53 192.0.2.53 53 any
relay 10.1.2.3/8 * 5353 192.0.2.53 53 any
relay 127.1 * 5354 192.0.2.53 gopherz any
encapsulate 10.0.0.0/8 1525
relay * * 5000 192.0.2.1 514 any Oneway
encapsulate * 1081 oneway
relay * * 6000 192.0.2.1
relay 10.0.0.0/255.0.0.0 * 6001 192.0.2.53 53 0
"""


class DocumentedErrorsTests(SynchronousTestCase):
    """The ERRORS AND WARNINGS example of docs/udprelay-conf.rst, word for word."""

    def test_every_error_of_the_example_file(self):
        self.assertEqual(
            errors(ERRORS_EXAMPLE),
            [
                "udprelay.conf:2:16: a mask cannot follow the address as a separate field: write the network "
                "as one field, like 10.0.0.0/8 (expected remoteport1, * or a port here)",
                "udprelay.conf:3:7: invalid host1 '10.1.2.3/8': the address has bits set after the first 8; "
                "write 10.0.0.0/8 for the network, or 10.1.2.3 for the one host",
                "udprelay.conf:4:7: invalid host1 '127.1': write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)",
                "udprelay.conf:4:31: unknown service name 'gopherz' for remoteport2 "
                "(not a udp service in the services database)",
                "udprelay.conf:5:24: local port 1525 is already used by line 1 (its localport1); "
                "each local port belongs to one line",
                "udprelay.conf:6:34: keywords are lower case: write 'oneway', not 'Oneway'",
                "udprelay.conf:7:20: oneway applies only to relay lines "
                "(an encapsulate port always carries answers back)",
                "udprelay.conf:8:16: expected remoteport2 (the port to send to) after '192.0.2.1' "
                "(relay host1 remoteport1 localport1 host2 remoteport2 localport2 [oneway])",
                "udprelay.conf:9:7: invalid host1 '10.0.0.0/255.0.0.0': write the mask as a prefix length: "
                "10.0.0.0/8",
                "udprelay.conf:9:47: localport2 '0' out of range (1..65535); write any for an ephemeral port",
            ],
        )


class SenderPatternTests(SynchronousTestCase):
    """host1 and from-hosts: *, *.domain, a host name, an address, ADDR/PREFIX."""

    def test_star_matches_any_sender_without_a_name(self):
        pattern = sender("*")
        self.assertEqual(pattern, SenderPattern("any"))
        for address in ("0.0.0.0", "10.0.0.1", "255.255.255.255", "2001:db8::1"):
            self.assertTrue(pattern.matches(address, None))
        self.assertFalse(pattern.is_name)

    def test_domain_matches_names_under_it_case_insensitively(self):
        pattern = sender("*.Your.Domain")
        self.assertEqual(pattern, SenderPattern("domain", name="your.domain"))
        self.assertTrue(pattern.matches("10.0.0.1", "host.your.domain"))
        self.assertTrue(pattern.matches("10.0.0.1", "HOST.Your.DOMAIN"))
        self.assertTrue(pattern.matches("10.0.0.1", "a.b.c.your.domain."))
        self.assertTrue(pattern.is_name)

    def test_domain_does_not_match_the_domain_itself(self):
        self.assertFalse(sender("*.your.domain").matches("10.0.0.1", "your.domain"))

    def test_domain_does_not_match_a_longer_label(self):
        pattern = sender("*.your.domain")
        self.assertFalse(pattern.matches("10.0.0.1", "evilyour.domain"))
        self.assertFalse(pattern.matches("10.0.0.1", "host.your.domain.evil.example"))

    def test_trailing_dot_of_the_domain_is_ignored(self):
        self.assertEqual(sender("*.your.domain."), SenderPattern("domain", name="your.domain"))

    def test_name_pattern_never_matches_without_a_confirmed_name(self):
        for pattern in ("*.your.domain", "ws1.your.domain"):
            self.assertFalse(sender(pattern).matches("10.0.0.1", None))

    def test_name_pattern_ignores_the_address(self):
        self.assertTrue(sender("*.your.domain").matches("2001:db8::1", "h.your.domain"))

    def test_host_name_matches_only_that_confirmed_name(self):
        pattern = sender("WS1.your.domain.")
        self.assertEqual(pattern, SenderPattern("host", name="ws1.your.domain"))
        self.assertTrue(pattern.matches("10.0.0.1", "ws1.Your.Domain"))
        self.assertFalse(pattern.matches("10.0.0.1", "ws2.your.domain"))
        self.assertFalse(pattern.matches("10.0.0.1", "x.ws1.your.domain"))

    def test_address_matches_exactly_that_host(self):
        pattern = sender("10.1.2.3")
        self.assertEqual(pattern, SenderPattern("network", addr=0x0A010203, prefix=32))
        self.assertTrue(pattern.matches("10.1.2.3", None))
        self.assertFalse(pattern.matches("10.1.2.4", None))

    def test_address_pattern_ignores_the_name(self):
        self.assertFalse(sender("10.1.2.3").matches("10.1.2.4", "10.1.2.3"))

    def test_prefix_matches_the_network_and_nothing_beside_it(self):
        pattern = sender("192.168.4.0/22")
        self.assertEqual((pattern.addr, pattern.prefix, pattern.mask), (0xC0A80400, 22, 0xFFFFFC00))
        for address in ("192.168.4.0", "192.168.5.17", "192.168.7.255"):
            self.assertTrue(pattern.matches(address), address)
        for address in ("192.168.3.255", "192.168.8.0", "10.0.0.1"):
            self.assertFalse(pattern.matches(address), address)

    def test_prefix_0_matches_every_ipv4_sender(self):
        pattern = sender("0.0.0.0/0")
        self.assertTrue(pattern.matches("0.0.0.0"))
        self.assertTrue(pattern.matches("255.255.255.255"))

    def test_prefix_32_is_the_one_host(self):
        self.assertEqual(sender("10.1.2.3/32"), sender("10.1.2.3"))

    def test_ipv4_mapped_sender_matches_as_its_ipv4_address(self):
        pattern = sender("10.0.0.0/8")
        self.assertTrue(pattern.matches("::ffff:10.1.1.1"))
        self.assertFalse(pattern.matches("::ffff:11.1.1.1"))

    def test_other_ipv6_senders_never_match_an_address_pattern(self):
        self.assertFalse(sender("0.0.0.0/0").matches("2001:db8::1"))
        self.assertFalse(sender("0.0.0.0/0").matches("::10.0.0.1"))

    def test_sender_that_is_not_an_address_is_a_value_error(self):
        for address in ("", "10.1", "host.example", "010.0.0.1", "10.0.0.1 "):
            self.assertRaises(ValueError, sender("10.0.0.0/8").matches, address)

    def test_patterns_print_as_written(self):
        for text in ("*", "*.your.domain", "ws1.your.domain", "10.1.2.3", "10.0.0.0/8", "0.0.0.0/0"):
            self.assertEqual(str(sender(text)), text)

    @given(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    def test_prefix_match_is_the_mask_formula(self, prefix, network, address):
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        network &= mask
        text = lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))  # noqa: E731
        pattern = sender(f"{text(network)}/{prefix}")
        self.assertEqual(pattern.matches(text(address)), (address & mask) == network)


class SenderErrorTests(SynchronousTestCase):
    def assertSenderError(self, pattern, message, column=7):
        self.assertEqual(
            errors(f"relay {pattern} * 5000 192.0.2.1 53 any\n"), [f"udprelay.conf:1:{column}: {message}"]
        )

    def test_shortened_octal_and_hex_addresses_are_refused(self):
        for address in ("127.1", "0x7f.0.0.1", "2130706433", "1.2.3.4.5"):
            self.assertSenderError(
                address,
                f"invalid host1 {address!r}: write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)",
            )
        self.assertSenderError(
            "0177.0.0.1",
            "invalid host1 '0177.0.0.1': octet '0177' has a leading zero, which some parsers read as octal; "
            "write 4 decimal octets without leading zeros",
        )

    def test_leading_zero_octet_is_refused(self):
        self.assertSenderError(
            "10.01.0.0",
            "invalid host1 '10.01.0.0': octet '01' has a leading zero, which some parsers read as octal; "
            "write 4 decimal octets without leading zeros",
        )

    def test_octet_over_255_is_refused(self):
        self.assertSenderError("10.256.0.0", "invalid host1 '10.256.0.0': octet '256' is out of range 0..255")

    def test_prefix_over_32_is_refused(self):
        self.assertSenderError(
            "10.0.0.0/33", "invalid host1 '10.0.0.0/33': expected a prefix length 0..32 after '/' (like 10.0.0.0/8)"
        )

    def test_missing_or_odd_prefix_is_refused(self):
        for pattern in ("10.0.0.0/", "10.0.0.0/08", "10.0.0.0/x", "10.0.0.0/-8", "10.0.0.0/8/8"):
            self.assertSenderError(
                pattern, f"invalid host1 {pattern!r}: expected a prefix length 0..32 after '/' (like 10.0.0.0/8)"
            )

    def test_bad_address_before_a_prefix_is_refused(self):
        self.assertSenderError(
            "10.0.0/8",
            "invalid host1 '10.0.0': write 4 decimal octets like 10.0.0.0 "
            "(shortened, octal and hex forms are ambiguous and not accepted)",
        )

    def test_host_bits_after_the_prefix_are_refused(self):
        self.assertSenderError(
            "10.1.2.3/8",
            "invalid host1 '10.1.2.3/8': the address has bits set after the first 8; "
            "write 10.0.0.0/8 for the network, or 10.1.2.3 for the one host",
        )

    def test_mask_after_a_slash_gets_the_prefix_to_write(self):
        self.assertSenderError(
            "10.0.0.0/255.0.0.0", "invalid host1 '10.0.0.0/255.0.0.0': write the mask as a prefix length: 10.0.0.0/8"
        )

    def test_mask_suggestion_drops_host_bits(self):
        self.assertSenderError(
            "10.1.2.3/255.255.0.0",
            "invalid host1 '10.1.2.3/255.255.0.0': write the mask as a prefix length: 10.1.0.0/16",
        )
        [problem] = errors("encapsulate 10.1.2.3 255.255.0.0 1081\n")
        self.assertIn("like 10.1.0.0/16 (expected localport", problem)

    def test_non_contiguous_mask_is_refused(self):
        self.assertSenderError(
            "10.0.0.0/255.0.255.0",
            "invalid host1 '10.0.0.0/255.0.255.0': the mask 255.0.255.0 is not contiguous; "
            "write ADDRESS/PREFIX with a prefix length 0..32",
        )

    def test_mask_as_a_separate_field_is_refused_with_the_prefix_form(self):
        # The one error only: the fields after the mask are shifted, and reading
        # them as the next fields would only add noise.
        self.assertEqual(
            errors("relay 10.0.0.0 255.0.0.0 5000 192.0.2.1 53 any\n"),
            [
                "udprelay.conf:1:16: a mask cannot follow the address as a separate field: write the network "
                "as one field, like 10.0.0.0/8 (expected remoteport1, * or a port here)"
            ],
        )

    def test_mask_as_a_separate_field_on_an_encapsulate_line(self):
        self.assertEqual(
            errors("encapsulate 192.168.1.0 255.255.255.0 1081\n"),
            [
                "udprelay.conf:1:25: a mask cannot follow the address as a separate field: write the network "
                "as one field, like 192.168.1.0/24 (expected localport, a port number here)"
            ],
        )

    def test_separate_non_contiguous_mask_gets_a_generic_example(self):
        [problem] = errors("encapsulate 192.168.1.0 255.0.255.0 1081\n")
        self.assertIn("like 10.0.0.0/8", problem)

    def test_star_inside_a_word_is_refused(self):
        for pattern in ("**", "*foo", "ws*.your.domain", "*.*.domain", "10.*"):
            self.assertSenderError(
                pattern,
                f"invalid host1 {pattern!r}: '*' stands alone (any host) or starts '*.domain' (names under a domain)",
            )

    def test_domain_needs_a_name(self):
        for pattern in ("*.", "*.."):
            self.assertSenderError(pattern, f"invalid host1 {pattern!r}: a domain needs a name after '*.'")

    def test_domain_ending_in_a_number_is_refused(self):
        self.assertSenderError("*.10.0", "invalid host1 '*.10.0': a domain name cannot end in a number")

    def test_invalid_host_name_is_refused(self):
        for pattern in ("ws1..your.domain", "-ws1.your.domain", "ws!.your.domain", "a" * 64 + ".example"):
            [problem] = errors(f"relay {pattern} * 5000 192.0.2.1 53 any\n")
            self.assertTrue(problem.startswith(f"udprelay.conf:1:7: invalid host1 "), problem)
            self.assertIn("a host name is letters, digits, '-' and '_' in dot-separated labels", problem)

    def test_host_name_over_253_characters_is_refused(self):
        name = ".".join(["a" * 60] * 5)  # 304 characters
        [problem] = errors(f"encapsulate {name} 1081\n")
        self.assertTrue(problem.endswith("a host name is at most 253 characters"), problem)

    def test_from_hosts_errors_name_the_field(self):
        self.assertEqual(
            errors("encapsulate 127.1 1081\n"),
            [
                "udprelay.conf:1:13: invalid from-hosts '127.1': write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)"
            ],
        )


class PortFieldTests(SynchronousTestCase):
    def test_remoteport1_star_means_any_sender_port(self):
        rule = relay("relay 10.0.0.1 * 5000 192.0.2.1 53 any")
        self.assertIsNone(rule.source_port)
        self.assertTrue(rule.matches_sender("10.0.0.1", 1))
        self.assertTrue(rule.matches_sender("10.0.0.1", 65535))

    def test_remoteport1_number_restricts_the_sender_port(self):
        rule = relay("relay 10.0.0.1 5353 5000 192.0.2.1 53 any")
        self.assertEqual(rule.source_port, 5353)
        self.assertTrue(rule.matches_sender("10.0.0.1", 5353))
        self.assertFalse(rule.matches_sender("10.0.0.1", 5354))
        self.assertFalse(rule.matches_sender("10.0.0.2", 5353))

    def test_service_names_are_udp_services(self):
        rule = relay("relay 10.0.0.1 syslog 5000 192.0.2.1 domain any")
        self.assertEqual((rule.source_port, rule.peer_port), (514, 53))

    def test_each_service_name_is_looked_up_once(self):
        services = FakeServices()
        parse("relay * domain 5000 192.0.2.1 domain any\nrelay * domain 5001 192.0.2.2 ntp any\n", services)
        self.assertEqual(sorted(services.asked), ["domain", "ntp"])

    def test_default_service_lookup_uses_the_udp_database(self):
        config = parse_udprelay("relay * * 5000 192.0.2.1 domain any\n")
        self.assertEqual(config.relays[0].peer_port, 53)
        self.assertEqual(config.filename, "<string>")

    def test_unknown_service_name_is_an_error(self):
        self.assertEqual(
            errors("relay * nosuch 5000 192.0.2.1 53 any\n"),
            [
                "udprelay.conf:1:9: unknown service name 'nosuch' for remoteport1 "
                "(not a udp service in the services database)"
            ],
        )

    def test_service_resolving_out_of_range_is_unknown(self):
        for name in ("zero", "huge"):
            [problem] = errors(f"relay * * 5000 192.0.2.1 {name} any\n")
            self.assertIn(f"unknown service name {name!r} for remoteport2", problem)

    def test_garbage_is_not_asked_of_the_services_database(self):
        services = FakeServices()
        for token in ("0x35", "-1", "5\x00", "a\x01b", "é", "+x", "x" * 40):
            try:
                parse(f"relay * * 5000 192.0.2.1 {token} any\n", services)
            except ConfigError:
                pass
        self.assertEqual(services.asked, [])

    def test_port_bounds_are_accepted(self):
        rule = relay("relay * 1 65535 192.0.2.1 1 65534")
        self.assertEqual(
            (rule.source_port, rule.local_port, rule.peer_port, rule.peer_local_port), (1, 65535, 1, 65534)
        )

    def test_leading_zeros_are_decimal(self):
        self.assertEqual(relay("relay * 053 5000 192.0.2.1 53 any").source_port, 53)

    def test_port_out_of_range_is_an_error_in_every_port_field(self):
        self.assertEqual(
            errors("relay * 0 65536 192.0.2.1 999999 100000\n"),
            [
                "udprelay.conf:1:9: remoteport1 '0' out of range (1..65535)",
                "udprelay.conf:1:11: localport1 '65536' out of range (1..65535)",
                "udprelay.conf:1:27: remoteport2 '999999' out of range (1..65535)",
                "udprelay.conf:1:34: localport2 '100000' out of range (1..65535)",
            ],
        )

    def test_localport2_zero_suggests_any(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 0\n"),
            ["udprelay.conf:1:29: localport2 '0' out of range (1..65535); write any for an ephemeral port"],
        )

    def test_a_port_of_thousands_of_digits_is_an_error_not_a_crash(self):
        # Python's int() refuses strings of more than 4300 digits.
        for digits in ("1" * 5000, "0" * 5000):
            [problem] = errors(f"relay * * 5000 192.0.2.1 53 {digits}\n")
            self.assertTrue(problem.startswith("udprelay.conf:1:29: localport2 '"), problem)
            self.assertIn("out of range (1..65535)", problem)

    def test_localport2_any_means_an_ephemeral_port(self):
        self.assertIsNone(relay("relay * * 5000 192.0.2.1 53 any").peer_local_port)

    def test_localport2_number_is_kept(self):
        self.assertEqual(relay("relay * * 5000 192.0.2.1 53 5001").peer_local_port, 5001)

    def test_any_is_lower_case(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 ANY\n"),
            ["udprelay.conf:1:29: invalid localport2 'ANY': expected a port number 1..65535 or any"],
        )

    def test_local_ports_are_numbers_not_service_names(self):
        self.assertEqual(
            errors("relay * * domain 192.0.2.1 53 ntp\nencapsulate * syslog\n"),
            [
                "udprelay.conf:1:11: invalid localport1 'domain': expected a port number 1..65535",
                "udprelay.conf:1:31: invalid localport2 'ntp': expected a port number 1..65535 or any",
                "udprelay.conf:2:15: invalid localport 'syslog': expected a port number 1..65535",
            ],
        )

    def test_star_is_not_a_local_port(self):
        self.assertEqual(
            errors("relay * * * 192.0.2.1 53 *\n"),
            [
                "udprelay.conf:1:11: invalid localport1 '*': expected a port number 1..65535",
                "udprelay.conf:1:26: invalid localport2 '*': expected a port number 1..65535 or any",
            ],
        )

    def test_remoteport2_is_one_port(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 * any\n"),
            [
                "udprelay.conf:1:26: invalid remoteport2 '*': host2 is sent to on one port "
                "(a number or a udp service name)"
            ],
        )

    def test_port_that_is_neither_number_nor_name(self):
        self.assertEqual(
            errors("relay * 0x35 5000 192.0.2.1 53 any\n"),
            ["udprelay.conf:1:9: invalid remoteport1 '0x35': expected a port number 1..65535, a udp service name or *"],
        )


class PeerHostTests(SynchronousTestCase):
    def test_address_is_kept_as_text(self):
        self.assertEqual(relay("relay * * 5000 192.0.2.1 53 any").peer_host, "192.0.2.1")

    def test_host_name_is_kept_as_written(self):
        self.assertEqual(relay("relay * * 5000 Archie.Rutgers.EDU. 1525 any").peer_host, "Archie.Rutgers.EDU.")

    def test_patterns_are_not_a_peer(self):
        for token in ("*", "*.your.domain", "10.0.0.0/8"):
            self.assertEqual(
                errors(f"relay * * 5000 {token} 53 any\n"),
                [
                    f"udprelay.conf:1:16: invalid host2 {token!r}: "
                    "host2 is one host (an address or a host name), not a pattern"
                ],
            )

    def test_unspecified_and_broadcast_addresses_are_not_a_peer(self):
        for token in ("0.0.0.0", "255.255.255.255"):
            self.assertEqual(
                errors(f"relay * * 5000 {token} 53 any\n"),
                [f"udprelay.conf:1:16: invalid host2 {token!r}: {token} is not a host to send to"],
            )

    def test_ambiguous_address_spellings_are_refused(self):
        [problem] = errors("relay * * 5000 0x7f.1 53 any\n")
        self.assertTrue(problem.startswith("udprelay.conf:1:16: invalid host2 '0x7f.1': write 4 decimal octets"))

    def test_invalid_host_name_is_refused(self):
        [problem] = errors("relay * * 5000 archie_rutgers..edu 53 any\n")
        self.assertTrue(problem.startswith("udprelay.conf:1:16: invalid host2 'archie_rutgers..edu': a host name is"))


class OnewayTests(SynchronousTestCase):
    def test_relay_lines_answer_by_default(self):
        self.assertFalse(relay("relay * * 5000 192.0.2.1 514 any").oneway)

    def test_oneway_flag_is_read(self):
        self.assertTrue(relay("relay * * 5000 192.0.2.1 514 any oneway").oneway)

    def test_oneway_is_lower_case(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 514 any Oneway\n"),
            ["udprelay.conf:1:34: keywords are lower case: write 'oneway', not 'Oneway'"],
        )

    def test_other_word_in_the_oneway_place_is_an_error(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 514 any one-way\n"),
            [
                "udprelay.conf:1:34: expected oneway or the end of the line, not 'one-way' "
                "(relay host1 remoteport1 localport1 host2 remoteport2 localport2 [oneway])"
            ],
        )

    def test_anything_after_oneway_is_too_many_fields(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 514 any oneway oneway\n"),
            [
                "udprelay.conf:1:41: too many fields: unexpected 'oneway' "
                "(relay host1 remoteport1 localport1 host2 remoteport2 localport2 [oneway])"
            ],
        )

    def test_oneway_is_only_for_relay_lines(self):
        self.assertEqual(
            errors("encapsulate * 1081 oneway\n"),
            [
                "udprelay.conf:1:20: oneway applies only to relay lines "
                "(an encapsulate port always carries answers back)"
            ],
        )


class LocalPortTests(SynchronousTestCase):
    def test_localport1_used_by_two_relay_lines_names_both(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 any\n# other\nrelay * * 5000 192.0.2.2 53 any\n"),
            [
                "udprelay.conf:3:11: local port 5000 is already used by line 1 (its localport1); "
                "each local port belongs to one line"
            ],
        )

    def test_localport2_of_one_line_is_not_a_localport1_of_another(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 6000\nrelay * * 6000 192.0.2.2 53 any\n"),
            [
                "udprelay.conf:2:11: local port 6000 is already used by line 1 (its localport2); "
                "each local port belongs to one line"
            ],
        )

    def test_two_lines_cannot_send_from_the_same_localport2(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 6000\nrelay * * 5001 192.0.2.2 53 6000\n"),
            [
                "udprelay.conf:2:29: local port 6000 is already used by line 1 (its localport2); "
                "each local port belongs to one line"
            ],
        )

    def test_encapsulate_port_conflicts_with_relay_ports(self):
        self.assertEqual(
            errors("encapsulate * 1081\nrelay * * 1081 192.0.2.1 53 any\nencapsulate 10.0.0.0/8 1081\n"),
            [
                "udprelay.conf:2:11: local port 1081 is already used by line 1 (its encapsulate port); "
                "each local port belongs to one line",
                "udprelay.conf:3:24: local port 1081 is already used by line 1 (its encapsulate port); "
                "each local port belongs to one line",
            ],
        )

    def test_localport1_and_localport2_of_one_line_must_differ(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 53 5000\n"),
            [
                "udprelay.conf:1:29: local port 5000 is also the localport1 of this line; a port that receives "
                "from host1 cannot also send to host2 (use another port, or any)"
            ],
        )

    def test_any_may_be_used_by_every_line(self):
        config = parse("relay * * 5000 192.0.2.1 53 any\nrelay * * 5001 192.0.2.1 53 any\n")
        self.assertEqual(len(config.relays), 2)

    def test_remote_ports_may_repeat(self):
        config = parse("relay * 53 5000 192.0.2.1 53 any\nrelay * 53 5001 192.0.2.1 53 any\n")
        self.assertEqual([rule.local_port for rule in config.relays], [5000, 5001])

    def test_a_line_with_errors_still_claims_its_port(self):
        self.assertEqual(
            errors("relay * * 5000 192.0.2.1 nosuch any\nencapsulate * 5000\n"),
            [
                "udprelay.conf:1:26: unknown service name 'nosuch' for remoteport2 "
                "(not a udp service in the services database)",
                "udprelay.conf:2:15: local port 5000 is already used by line 1 (its localport1); "
                "each local port belongs to one line",
            ],
        )


class EncapsulateLineTests(SynchronousTestCase):
    def test_encapsulate_line_record(self):
        config = parse("encapsulate 10.0.0.0/8 1081\n")
        self.assertEqual(
            config.encapsulates,
            (
                EncapsulateRule(
                    1, "encapsulate 10.0.0.0/8 1081", SenderPattern("network", addr=0x0A000000, prefix=8), 1081
                ),
            ),
        )
        self.assertEqual(config.relays, ())

    def test_encapsulate_accepts_any_sender_port(self):
        rule = parse("encapsulate 10.0.0.0/8 1081\n").encapsulates[0]
        self.assertTrue(rule.matches_sender("10.1.1.1", 1))
        self.assertTrue(rule.matches_sender("10.1.1.1", 65535))
        self.assertFalse(rule.matches_sender("192.168.1.1", 1))

    def test_encapsulate_by_domain_needs_a_confirmed_name(self):
        rule = parse("encapsulate *.lab.example 1081\n").encapsulates[0]
        self.assertTrue(rule.matches_sender("10.1.1.1", 4000, "pc7.lab.example"))
        self.assertFalse(rule.matches_sender("10.1.1.1", 4000, None))

    def test_missing_localport(self):
        self.assertEqual(
            errors("encapsulate *\n"),
            [
                "udprelay.conf:1:13: expected localport (the port number to receive on) after '*' "
                "(encapsulate from-hosts localport)"
            ],
        )

    def test_missing_from_hosts(self):
        self.assertEqual(
            errors("encapsulate\n"),
            [
                "udprelay.conf:1:1: expected from-hosts (the senders: *, *.domain, a host name, an address or "
                "address/prefix) after 'encapsulate' (encapsulate from-hosts localport)"
            ],
        )

    def test_too_many_fields(self):
        self.assertEqual(
            errors("encapsulate * 1081 192.0.2.1\n"),
            ["udprelay.conf:1:20: too many fields: unexpected '192.0.2.1' (encapsulate from-hosts localport)"],
        )


class FieldCountTests(SynchronousTestCase):
    """A relay line missing fields: the error is at the last field present and
    names the one expected next."""

    FIELDS = [
        "host1 (the senders: *, *.domain, a host name, an address or address/prefix)",
        "remoteport1 (the senders' port: * or a port)",
        "localport1 (the port number to receive on)",
        "host2 (the host to send to: an address or a host name)",
        "remoteport2 (the port to send to)",
        "localport2 (the port number to send from, or any)",
    ]
    SYNOPSIS = "(relay host1 remoteport1 localport1 host2 remoteport2 localport2 [oneway])"

    def test_each_missing_field_is_named(self):
        words = ["relay", "*", "*", "5000", "192.0.2.1", "53", "any"]
        for present in range(1, 7):
            line = " ".join(words[:present])
            column = len(line) - len(words[present - 1]) + 1
            self.assertEqual(
                errors(line + "\n"),
                [
                    f"udprelay.conf:1:{column}: expected {self.FIELDS[present - 1]} "
                    f"after {words[present - 1]!r} {self.SYNOPSIS}"
                ],
                line,
            )

    def test_fields_present_are_still_checked(self):
        self.assertEqual(
            errors("relay * * 70000 192.0.2.1\n"),
            [
                "udprelay.conf:1:11: localport1 '70000' out of range (1..65535)",
                f"udprelay.conf:1:17: expected {self.FIELDS[4]} after '192.0.2.1' {self.SYNOPSIS}",
            ],
        )


class LineSyntaxTests(SynchronousTestCase):
    def test_blank_and_comment_lines_are_ignored(self):
        config = parse("\n   \n# relay * * 1 2.2.2.2 1 any\n\t# indented comment\nrelay * * 5000 192.0.2.1 53 any\n")
        self.assertEqual([rule.lineno for rule in config.relays], [5])

    def test_comment_ends_a_line_anywhere(self):
        rule = relay("relay * * 5000 192.0.2.1 53 any # oneway")
        self.assertFalse(rule.oneway)
        self.assertEqual(rule.text, "relay * * 5000 192.0.2.1 53 any # oneway")

    def test_comment_without_a_blank_before_it(self):
        self.assertEqual(relay("relay * * 5000 192.0.2.1 53 any#x").peer_local_port, None)

    def test_tabs_and_runs_of_blanks_separate_fields(self):
        rule = relay("\trelay\t*  \t*\t5000\t\t192.0.2.1 53\tany\t")
        self.assertEqual((rule.local_port, rule.peer_host), (5000, "192.0.2.1"))

    def test_crlf_line_ends_are_accepted(self):
        config = parse("relay * * 5000 192.0.2.1 53 any\r\nencapsulate * 1081\r\n")
        self.assertEqual(config.relays[0].text, "relay * * 5000 192.0.2.1 53 any")
        self.assertEqual(config.encapsulates[0].lineno, 2)

    def test_keywords_are_lower_case(self):
        self.assertEqual(
            errors("RELAY * * 5000 192.0.2.1 53 any\nEncapsulate * 1081\n"),
            [
                "udprelay.conf:1:1: keywords are lower case: write 'relay', not 'RELAY'",
                "udprelay.conf:2:1: keywords are lower case: write 'encapsulate', not 'Encapsulate'",
            ],
        )

    def test_unknown_line_type(self):
        self.assertEqual(
            errors("  forward * * 5000 192.0.2.1 53 any\n"),
            ["udprelay.conf:1:3: unknown line type 'forward' (expected relay or encapsulate)"],
        )

    def test_empty_file_warns(self):
        config = parse("# nothing yet\n")
        self.assertEqual(config.relays + config.encapsulates, ())
        self.assertEqual(
            [str(w) for w in config.warnings],
            ["udprelay.conf:0:0: no relay or encapsulate lines: nothing is forwarded"],
        )


class ErrorReportTests(SynchronousTestCase):
    def test_every_error_is_collected_in_order(self):
        text = (
            "relay * * 5000 192.0.2.1 53 any\n"  # 1: fine
            "relay 127.1 * 5001 192.0.2.1 nosuch any\n"  # 2: two errors
            "encapsulate * 5000\n"  # 3: port taken
            "udp * 1\n"  # 4
        )
        self.assertEqual(
            errors(text),
            [
                "udprelay.conf:2:7: invalid host1 '127.1': write 4 decimal octets like 10.0.0.0 "
                "(shortened, octal and hex forms are ambiguous and not accepted)",
                "udprelay.conf:2:30: unknown service name 'nosuch' for remoteport2 "
                "(not a udp service in the services database)",
                "udprelay.conf:3:15: local port 5000 is already used by line 1 (its localport1); "
                "each local port belongs to one line",
                "udprelay.conf:4:1: unknown line type 'udp' (expected relay or encapsulate)",
            ],
        )

    def test_config_error_is_the_sockd_conf_one(self):
        self.assertIs(ConfigError, AccessConfigError)
        exc = self.assertRaises(ConfigError, parse, "relay\nencapsulate\n")
        self.assertEqual(str(exc).splitlines(), [str(p) for p in exc.problems])
        self.assertEqual([p.line for p in exc.problems], [1, 2])
        self.assertIsInstance(exc.problems[0], Problem)

    def test_long_tokens_are_shortened_in_messages(self):
        [problem] = errors("relay" + "x" * 10000 + " * * 5000 192.0.2.1 53 any\n")
        self.assertLess(len(problem), 200)

    def test_control_characters_are_quoted_in_messages(self):
        [problem] = errors("relay \x1b[2J * 5000 192.0.2.1 53 any\n")
        self.assertIn("'\\x1b[2J'", problem)


class RecordTests(SynchronousTestCase):
    def test_config_pickles_and_compares(self):
        config = parse(FULL_EXAMPLE)
        self.assertEqual(pickle.loads(pickle.dumps(config)), config)
        self.assertEqual(parse(FULL_EXAMPLE), config)

    def test_records_are_frozen(self):
        config = parse(FULL_EXAMPLE)
        self.assertRaises(AttributeError, setattr, config.relays[0], "oneway", True)
        self.assertRaises(AttributeError, setattr, config.relays[0].source, "kind", "any")
        self.assertRaises(AttributeError, setattr, config.encapsulates[0], "local_port", 1)
        self.assertRaises(AttributeError, setattr, config, "relays", ())

    def test_uses_names_only_for_name_patterns(self):
        self.assertFalse(parse(DNS_EXAMPLE + "encapsulate * 1081\n").uses_names)
        self.assertTrue(parse("encapsulate ws1.example 1081\n").uses_names)

    def test_config_record_shape(self):
        config = parse(DNS_EXAMPLE)
        self.assertIsInstance(config, UDPRelayConfig)
        self.assertIsInstance(config.relays, tuple)
        self.assertIsInstance(config.warnings, tuple)


class LoadUDPRelayTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        fd, path = tempfile.mkstemp(suffix=".conf")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def test_load_reads_the_file(self):
        path = self.write(DNS_EXAMPLE.encode())
        config = load_udprelay(path)
        self.assertEqual(config.filename, path)
        self.assertEqual(config.relays[0].lineno, 2)

    def test_load_passes_the_service_lookup_on(self):
        path = self.write(b"relay * * 5000 192.0.2.1 archie any\n")
        self.assertEqual(load_udprelay(path, getservbyname=FakeServices()).relays[0].peer_port, 1525)

    def test_load_error_names_the_file(self):
        path = self.write(b"relay \xff.0.0.0 * 5000 192.0.2.1 53 any\n")
        exc = self.assertRaises(ConfigError, load_udprelay, path)
        self.assertTrue(str(exc).startswith(f"{path}:1:7: invalid host1 '\\udcff.0.0.0'"), str(exc))

    def test_unreadable_file_is_a_config_error_at_line_0(self):
        exc = self.assertRaises(ConfigError, load_udprelay, "/nonexistent/udprelay.conf")
        self.assertEqual(
            [str(p) for p in exc.problems],
            ["/nonexistent/udprelay.conf:0:0: cannot read udprelay file: No such file or directory"],
        )


# ---- robustness: any text gives a config or a ConfigError, nothing else

_TOKENS = [
    "relay", "encapsulate", "RELAY", "oneway", "ONEWAY", "any", "ANY", "*", "**", "*.", "*.x.org", "*.10", "x.org",
    "10.0.0.0", "10.0.0.0/8", "10.1.0.0/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/255.0.0.0", "255.0.0.0",
    "255.0.255.0", "0.0.0.0", "255.255.255.255", "127.1", "0x7f.0.0.1", "/", "/8", "1", "53", "5000", "5000",
    "65535", "65536", "0", "domain", "nosuch", "zero", "huge", "#", "\t", "\r", "\x00", "\udcff", "\u0661", "é", "",
]

_GRAMMAR_LINES = st.lists(st.lists(st.sampled_from(_TOKENS), max_size=9).map(" ".join), max_size=8).map("\n".join)


class RobustnessTests(SynchronousTestCase):
    def assertParsesOrConfigError(self, text, services=None):
        try:
            config = parse(text, services)
        except ConfigError as exc:
            self.assertTrue(exc.problems)
            for problem in exc.problems:
                self.assertGreaterEqual(problem.line, 1)
                self.assertGreaterEqual(problem.column, 1)
        else:
            self.assertIsInstance(config, UDPRelayConfig)
            ports = []
            for rule in config.relays:
                self.assertIsInstance(rule.matches_sender("10.0.0.1", 1000, "a.x.org"), bool)
                ports += [rule.local_port] + ([rule.peer_local_port] if rule.peer_local_port else [])
            for rule in config.encapsulates:
                self.assertIsInstance(rule.matches_sender("10.0.0.1", 1000, None), bool)
                ports.append(rule.local_port)
            self.assertEqual(len(ports), len(set(ports)))
            self.assertTrue(all(1 <= port <= 65535 for port in ports))

    @given(st.text())
    def test_any_text_parses_or_raises_config_error(self, text):
        self.assertParsesOrConfigError(text)

    @settings(max_examples=300)
    @given(_GRAMMAR_LINES)
    def test_lines_of_grammar_tokens_parse_or_raise_config_error(self, text):
        self.assertParsesOrConfigError(text)

    @given(st.lists(st.sampled_from(_TOKENS), max_size=9))
    def test_default_service_lookup_never_raises_other_errors(self, parts):
        try:
            parse_udprelay("relay * " + " ".join(parts))
        except ConfigError:
            pass
