"""sockd.route: parsing, errors with line and column, first-match lookup."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite.access import ConfigError
from sockssuite.sockdroute import parse_routes


class RouteTests(SynchronousTestCase):
    def test_first_matching_line_picks_the_interface(self):
        table = parse_routes("# multi-homed firewall\n"
                             "10.0.0.1\t10.0.0.0 255.0.0.0   # inside\n"
                             "10.0.0.1 10.0.0.0 255.255.0.0\n"
                             "192.0.2.1 0.0.0.0 0.0.0.0\n", "sockd.route")
        self.assertEqual(table.route_for("10.1.2.3").lineno, 2)
        self.assertEqual(table.route_for("10.1.2.3").interface, "10.0.0.1")
        self.assertEqual(table.route_for("8.8.4.4").interface, "192.0.2.1")

    def test_no_match_gives_none(self):
        self.assertIsNone(parse_routes("10.0.0.1 10.0.0.0 255.0.0.0\n").route_for("11.0.0.1"))

    def test_every_bad_line_is_reported_with_line_and_column(self):
        with self.assertRaises(ConfigError) as caught:
            parse_routes("10.0.0.1 10.0.0.0\n"
                         "10.0.0.1 10.0.0.0 255.0.0.0 extra\n"
                         "10.0.0.1 10.0.0 255.0.0.0\n"
                         "ok.example 10.0.0.0 255.0.0.0\n", "r")
        self.assertEqual([str(p) for p in caught.exception.problems], [
            "r:1:18: expected 'interface_addr dst_addr dst_mask', got 2 field(s)",
            "r:2:29: expected 'interface_addr dst_addr dst_mask', got 4 field(s)",
            "r:3:10: expected the destination address as 4 decimal octets, got '10.0.0'",
            "r:4:1: expected the interface address as 4 decimal octets, got 'ok.example'",
        ])

    @given(st.text(max_size=200))
    def test_any_text_parses_or_raises_config_error(self, text):
        try:
            parse_routes(text)
        except ConfigError:
            pass
