"""Tests for sockssuite.routing: the socks.conf parser, route decisions, the
order servers are tried in, and the recently-failed memory (with a Clock)."""

import os
import pickle
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sockssuite.routing import (
    ALWAYS_DIRECT,
    BUILTIN_SERVER,
    DEFAULT_PORT,
    ConfigError,
    Problem,
    RecentFailures,
    RouteDecision,
    RouteRule,
    ServerEntry,
    SocksConf,
    command_values,
    decide_route,
    default_port,
    load_socks_conf,
    parse_server_list,
    parse_socks_conf,
)

SERVICES = {"socks": 1080, "http": 80, "telnet": 23, "ssh": 22, "smtp": 25, "altsocks": 1081}


def fake_getservbyname(name):
    try:
        return SERVICES[name]
    except KeyError:
        raise OSError("service/proto not found") from None


def no_services(name):
    raise OSError("service/proto not found")


def parse(text, **kwargs):
    kwargs.setdefault("getservbyname", fake_getservbyname)
    kwargs.setdefault("read_file", lambda path: (_ for _ in ()).throw(OSError(2, "No such file or directory")))
    return parse_socks_conf(text, "socks.conf", **kwargs)


def problems(text, **kwargs):
    try:
        parse(text, **kwargs)
    except ConfigError as e:
        return [(p.line, p.column, p.message) for p in e.problems]
    raise AssertionError(f"no error for {text!r}")


def route(text, host, port=80, user="alice", **kwargs):
    return decide_route(parse(text), host, port, user=user, **kwargs)


#: The shape of the socks4 package's own socks.conf example, with our servers.
EXAMPLE = """\
# local networks need no proxy
direct  10.0.0.0 255.0.0.0
deny    *=guest 0.0.0.0 0.0.0.0
sockd   @=proxy1,proxy2:1081 0.0.0.0 0.0.0.0 eq telnet
sockd   0.0.0.0 0.0.0.0
"""


class ParserTests(TestCase):
    def test_the_three_actions_become_frozen_records_with_line_and_text(self):
        conf = parse(EXAMPLE)
        self.assertIsInstance(conf, SocksConf)
        self.assertEqual([r.action for r in conf.rules], ["direct", "deny", "sockd", "sockd"])
        self.assertEqual([r.lineno for r in conf.rules], [2, 3, 4, 5])
        self.assertEqual(conf.rules[2].text, "sockd   @=proxy1,proxy2:1081 0.0.0.0 0.0.0.0 eq telnet")
        self.assertEqual(conf.rules[2].servers, (ServerEntry("proxy1", 1080), ServerEntry("proxy2", 1081)))
        self.assertEqual(str(conf.rules[2].port), "eq 23")
        self.assertEqual(conf.rules[1].users, frozenset({"guest"}))
        self.assertIsNone(conf.rules[3].servers)
        self.assertRaises(AttributeError, setattr, conf.rules[0], "action", "deny")
        self.assertIsInstance(conf.rules[0], RouteRule)

    def test_tabs_blanks_comments_and_crlf(self):
        conf = parse("\t# comment\n\n  direct\t10.0.0.0\t255.0.0.0   # trailing\r\n   \n")
        [rule] = conf.rules
        self.assertEqual((rule.lineno, rule.action, str(rule.dst)), (3, "direct", "10.0.0.0 255.0.0.0"))

    def test_the_three_spellings_of_a_server_list_are_the_same(self):
        expected = (ServerEntry("a", 1080), ServerEntry("b", 1081))
        for line in ("sockd @=a,b:1081 0.0.0.0 0.0.0.0", "sockd@a,b:1081 0.0.0.0 0.0.0.0",
                     "sockd@=a,b:1081 0.0.0.0 0.0.0.0", "sockd *=x @=a,b:1081 0.0.0.0 0.0.0.0"):
            self.assertEqual(parse(line).rules[0].servers, expected, line)

    def test_server_entries_names_addresses_ports_and_services(self):
        [rule] = parse("sockd @=Proxy.Example.,127.0.0.9,127.0.0.9:1081,h:altsocks,[::1],[::1]:2000 ALL 0.0.0.0").rules
        self.assertEqual(rule.servers, (
            ServerEntry("proxy.example", 1080), ServerEntry("127.0.0.9", 1080), ServerEntry("127.0.0.9", 1081),
            ServerEntry("h", 1081), ServerEntry("::1", 1080), ServerEntry("::1", 2000)))
        self.assertEqual([str(s) for s in rule.servers],
                         ["proxy.example:1080", "127.0.0.9:1080", "127.0.0.9:1081", "h:1081", "[::1]:1080",
                          "[::1]:2000"])
        self.assertEqual([s.is_address for s in rule.servers], [False, True, True, False, True, True])

    def test_the_default_port_is_the_socks_service_else_1080(self):
        self.assertEqual(parse("sockd @=a 0.0.0.0 0.0.0.0",
                               getservbyname=lambda n: {"socks": 1999}[n]).rules[0].servers,
                         (ServerEntry("a", 1999),))
        conf = parse("sockd @=a 0.0.0.0 0.0.0.0", getservbyname=no_services)
        self.assertEqual(conf.rules[0].servers, (ServerEntry("a", 1080),))
        self.assertEqual(conf.default_port, DEFAULT_PORT)
        self.assertEqual(default_port(no_services), 1080)
        self.assertEqual(default_port(lambda n: 0), 1080)

    def test_an_empty_server_list_means_the_default_server(self):
        for line in ("sockd @= 0.0.0.0 0.0.0.0", "sockd@ 0.0.0.0 0.0.0.0", "sockd 0.0.0.0 0.0.0.0"):
            self.assertIsNone(parse(line).rules[0].servers, line)

    def test_a_colon_in_the_server_list_is_a_port_and_after_it_starts_the_command(self):
        [rule] = parse("sockd @=a:1081 0.0.0.0 0.0.0.0 : /usr/bin/logger -t socks 'via %u'").rules
        self.assertEqual(rule.servers, (ServerEntry("a", 1081),))
        self.assertEqual(rule.command, "/usr/bin/logger -t socks 'via %u'")
        self.assertEqual(rule.argv, ("/usr/bin/logger", "-t", "socks", "via %u"))
        [rule] = parse("deny 0.0.0.0 0.0.0.0: /bin/echo no").rules
        self.assertEqual(rule.argv, ("/bin/echo", "no"))
        [rule] = parse("sockd *=bob @=a:1081 0.0.0.0 0.0.0.0").rules
        self.assertEqual((rule.servers, rule.users, rule.command), ((ServerEntry("a", 1081),), {"bob"}, None))
        # Outside a server list a ':' always starts the command, as in the original.
        self.assertEqual(problems("sockd *=bob:1081 0.0.0.0 0.0.0.0")[0][:2], (1, 7))
        self.assertEqual(parse("sockd@a:1081 0.0.0.0 0.0.0.0 # comment : not a command").rules[0].command, None)

    def test_a_socks5_prefix_marks_a_server_as_socks5(self):
        [rule] = parse("sockd @=socks5://proxy,socks5://10.1.1.2:1081,socks5://[::1]:altsocks,SOCKS5://Up.Per "
                       "0.0.0.0 0.0.0.0").rules
        self.assertEqual(rule.servers, (ServerEntry("proxy", 1080, 5), ServerEntry("10.1.1.2", 1081, 5),
                                        ServerEntry("::1", 1081, 5), ServerEntry("up.per", 1080, 5)))
        self.assertEqual([str(s) for s in rule.servers], ["socks5://proxy:1080", "socks5://10.1.1.2:1081",
                                                          "socks5://[::1]:1081", "socks5://up.per:1080"])
        self.assertEqual([s.is_address for s in rule.servers], [False, True, True, False])
        for line in ("sockd@socks5://a:1081 0.0.0.0 0.0.0.0", "sockd@=socks5://a:1081 0.0.0.0 0.0.0.0",
                     "sockd *=x @=socks5://a:1081 0.0.0.0 0.0.0.0"):
            self.assertEqual(parse(line).rules[0].servers, (ServerEntry("a", 1081, 5),), line)

    def test_servers_without_a_prefix_stay_socks4_and_versions_mix_in_one_list(self):
        [rule] = parse("sockd @=a,socks4://b:1081,socks5://c,[::1] 0.0.0.0 0.0.0.0 : /bin/echo %u").rules
        self.assertEqual([(s.host, s.version) for s in rule.servers], [("a", 4), ("b", 4), ("c", 5), ("::1", 4)])
        self.assertEqual(ServerEntry("b", 1081, 4), ServerEntry("b", 1081))
        self.assertEqual(str(rule.servers[1]), "b:1081")
        self.assertEqual(rule.argv, ("/bin/echo", "%u"))
        # Every line of an old file parses to what it did before.
        self.assertTrue(all(s.version == 4 for r in parse(EXAMPLE).rules for s in r.servers or ()))

    def test_errors_in_the_prefix_name_the_entry(self):
        self.assertEqual(problems("sockd @=a,socks5h://b 0.0.0.0 0.0.0.0\n"
                                  "sockd @=http://c 0.0.0.0 0.0.0.0\n"
                                  "sockd @=socks5:// 0.0.0.0 0.0.0.0\n"
                                  "sockd@socks5://d:0 0.0.0.0 0.0.0.0\n"), [
            (1, 11, "invalid server 'socks5h://b': unknown scheme 'socks5h://' (expected socks4:// or "
                    "socks5://); socks5:// servers are sent host names as names already (like curl's socks5h://)"),
            (2, 9, "invalid server 'http://c': unknown scheme 'http://' (expected socks4:// or socks5://)"),
            (3, 9, "invalid server 'socks5://': no host name or address after 'socks5://'"),
            (4, 7, "invalid server 'socks5://d:0': port '0' out of range (1..65535)")])

    def test_credentials_are_refused_without_being_echoed(self):
        for line in ("sockd @=socks5://alice:s3cret@proxy 0.0.0.0 0.0.0.0",
                     "sockd @=socks5://alice:s3,cret@proxy 0.0.0.0 0.0.0.0",
                     "sockd@alice:s3cret@proxy 0.0.0.0 0.0.0.0"):
            [(_, _, message)] = problems(line)
            self.assertIn("user names and passwords do not belong in socks.conf", message)
            self.assertIn("SOCKS_PASSWORD", message)
            self.assertNotIn("s3", message)
        e = self.assertRaises(ValueError, parse_server_list, "socks5://alice:s3cret@proxy")
        self.assertNotIn("s3cret", str(e))

    def test_a_server_list_ends_at_a_comment(self):
        self.assertEqual(problems("sockd@a:1081#0.0.0.0 0.0.0.0"),
                         [(1, 1, "expected a destination address and mask after 'sockd@a:1081' "
                                 "(deny|direct|sockd [@=serverlist] [*=userlist] dst_addr dst_mask "
                                 "[op dst_port] [: shell_cmd])")])

    def test_port_operators_and_service_names(self):
        conf = parse("deny 0.0.0.0 0.0.0.0 lt 1024\ndirect ALL 0.0.0.0 eq http\nsockd 0.0.0.0 0.0.0.0 neq 7")
        self.assertEqual([str(r.port) for r in conf.rules], ["lt 1024", "eq 80", "neq 7"])

    def test_destination_names_and_domains(self):
        conf = parse("direct .example.org 0.0.0.0\nsockd intranet 255.255.255.255\ndeny ALL 0.0.0.0")
        self.assertEqual([r.dst.kind for r in conf.rules], ["domain", "host", "all"])

    def test_user_lists_and_user_files(self):
        files = {"/etc/socks.users": "carol, dave\n# comment\neve"}
        conf = parse("sockd *=alice,/etc/socks.users 0.0.0.0 0.0.0.0", read_file=files.__getitem__)
        self.assertEqual(conf.rules[0].users, frozenset({"alice", "carol", "dave", "eve"}))
        self.assertIsNone(parse("sockd *= 0.0.0.0 0.0.0.0").rules[0].users)

    def test_an_unreadable_user_file_is_a_warning_and_matches_nobody(self):
        conf = parse("deny *=/nonexistent 0.0.0.0 0.0.0.0\ndirect 0.0.0.0 0.0.0.0")
        self.assertEqual(conf.rules[0].users, frozenset())
        [warning] = conf.warnings
        self.assertEqual((warning.line, warning.column), (1, 8))
        self.assertIn("cannot read user list file '/nonexistent'", warning.message)

    def test_other_vendors_keywords_are_skipped_with_a_note(self):
        conf = parse("domain example.org\nnameserver 127.0.0.53\n  bind 1.2.3.4\nfindserver x y z\n"
                     "direct 0.0.0.0 0.0.0.0")
        self.assertEqual(len(conf.rules), 1)
        self.assertEqual([(w.line, w.column) for w in conf.warnings], [(1, 1), (2, 1), (3, 3), (4, 1)])
        self.assertIn("'domain' lines belong to another vendor's socks.conf format; line skipped",
                      str(conf.warnings[0]))

    def test_a_file_without_rules_warns_that_everything_is_denied(self):
        conf = parse("# nothing\n")
        [warning] = conf.warnings
        self.assertEqual((warning.line, warning.column), (0, 0))
        self.assertIn("every destination is denied", warning.message)

    def test_every_error_is_reported_with_file_line_and_column(self):
        text = ("permit 0.0.0.0 0.0.0.0\n"                     # 1
                "sockd @=a,,b 0.0.0.0 0.0.0.0\n"               # 2
                "deny @=x 127.0.0.1 255.255.255.255\n"         # 3
                "direct *=a *=b 0.0.0.0 0.0.0.0\n"             # 4
                "sockd ?=I 0.0.0.0 0.0.0.0\n"                  # 5
                "direct 10.0.0.0\n"                            # 6
                "direct 0.0.0.0 0.0.0.0 eq 80 extra\n"         # 7
                "sockd @=a:0 0.0.0.0 0.0.0.0\n"                # 8
                "sockd @=a::80 0.0.0.0 0.0.0.0\n"              # 9
                "direct 127.1 255.0.0.0\n"                     # 10
                "direct 0.0.0.0 0.0.0.0 eq nosuch\n"           # 11
                "deny 0.0.0.0 0.0.0.0 : 'unbalanced\n"         # 12
                "sockd 0.0.0.0 0.0.0.0 @=late\n"               # 13
                ": orphan command\n"                           # 14
                "sockd @=[::1 0.0.0.0 0.0.0.0\n"               # 15
                "sockd @=a:nosuchservice 0.0.0.0 0.0.0.0\n"    # 16
                "direct 0.0.0.0 256.0.0.0\n")                  # 17
        found = problems(text)
        self.assertEqual([(line, col) for line, col, _ in found], [
            (1, 1), (2, 11), (3, 6), (4, 12), (5, 7), (6, 8), (7, 30), (8, 9), (9, 9), (10, 8), (11, 27),
            (12, 24), (13, 23), (14, 1), (15, 9), (16, 9), (17, 16)])
        messages = [m for _, _, m in found]
        self.assertIn("'permit' belongs in sockd.conf", messages[0])
        self.assertIn("empty entry in server list", messages[1])
        self.assertIn("only for sockd lines, not deny", messages[2])
        self.assertIn("duplicate *= field (the first is at column 8)", messages[3])
        self.assertIn("ident checks (?=) belong in sockd.conf", messages[4])
        self.assertIn("expected a mask", messages[5])
        self.assertIn("too many fields", messages[6])
        self.assertIn("out of range", messages[7])
        self.assertIn("IPv6 address in brackets", messages[8])
        self.assertIn("4 decimal octets", messages[9])
        self.assertIn("unknown service name 'nosuch'", messages[10])
        self.assertIn("cannot split the shell command", messages[11])
        self.assertIn("must come right after the action", messages[12])
        self.assertIn("a shell command needs a rule", messages[13])
        self.assertIn("missing ']'", messages[14])
        self.assertIn("unknown service name 'nosuchservice'", messages[15])
        self.assertIn("out of range 0..255", messages[16])

    def test_problems_print_as_file_line_column(self):
        e = self.assertRaises(ConfigError, parse, "direct\nbogus 1 2\n")
        self.assertEqual(str(e).splitlines()[1],
                         "socks.conf:2:1: unknown action 'bogus' (expected deny, direct or sockd)")
        self.assertIsInstance(e.problems[0], Problem)

    def test_load_reads_the_file_and_reports_a_missing_one_at_line_0(self):
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: (os.path.exists(path) and os.unlink(path), os.rmdir(d)))
        path = os.path.join(d, "socks.conf")
        with open(path, "w") as f:
            f.write("direct 0.0.0.0 0.0.0.0\n")
        conf = load_socks_conf(path)
        self.assertEqual((conf.filename, len(conf.rules)), (path, 1))
        e = self.assertRaises(ConfigError, load_socks_conf, path + ".missing")
        self.assertEqual(str(e), f"{path}.missing:0:0: cannot read socks.conf: No such file or directory")

    def test_parsed_files_and_errors_pickle(self):
        conf = parse(EXAMPLE + "sockd @=[::1]:1 .example.org 0.0.0.0 : /bin/true %u\n")
        self.assertEqual(pickle.loads(pickle.dumps(conf)), conf)
        e = self.assertRaises(ConfigError, parse, "direct\n")
        self.assertEqual(pickle.loads(pickle.dumps(e)).problems, e.problems)


class ServerListTests(TestCase):
    def test_socks_server_values(self):
        self.assertEqual(parse_server_list("proxy"), (ServerEntry("proxy", 1080),))
        self.assertEqual(parse_server_list("127.0.0.1:1081,b", default_port=9),
                         (ServerEntry("127.0.0.1", 1081), ServerEntry("b", 9)))
        self.assertEqual(parse_server_list(" [::1]:3 "), (ServerEntry("::1", 3),))
        self.assertEqual(parse_server_list("socks5://gw:1081,gw2"),
                         (ServerEntry("gw", 1081, 5), ServerEntry("gw2", 1080, 4)))

    def test_bad_values_are_value_errors(self):
        for bad in ("", "a,", "a:", "a:65536", ":80", "[::1]x", "127.1", "a b", "[10.0.0.1]", "a:b:c",
                    "socks5://", "socks6://a", "u@a", "socks5://u:p@a", "socks5://socks5://a"):
            self.assertRaises(ValueError, parse_server_list, bad, getservbyname=no_services)


class DecisionTests(TestCase):
    def test_no_file_means_direct(self):
        decision = decide_route(None, "127.0.0.9", 80, user="alice")
        self.assertEqual((decision.action, decision.rule, decision.servers), ("direct", None, ()))
        self.assertIsInstance(decision, RouteDecision)

    def test_127_0_0_1_and_0_0_0_0_always_go_direct(self):
        for host in ALWAYS_DIRECT:
            decision = route("deny 0.0.0.0 0.0.0.0", host)
            self.assertEqual((decision.action, decision.rule), ("direct", None))
            self.assertIn("always goes direct", decision.reason)
        self.assertEqual(route("deny 0.0.0.0 0.0.0.0", "localhost", address="127.0.0.1").action, "direct")
        self.assertEqual(route("deny 0.0.0.0 0.0.0.0", "127.0.0.2").action, "deny")

    def test_the_first_matching_line_decides(self):
        self.assertEqual(route(EXAMPLE, "10.1.2.3").lineno, 2)
        self.assertEqual(route(EXAMPLE, "10.1.2.3", user="guest").lineno, 2)
        self.assertEqual(route(EXAMPLE, "127.0.0.9", user="guest").lineno, 3)
        decision = route(EXAMPLE, "127.0.0.9", 23)
        self.assertEqual((decision.lineno, decision.action), (4, "sockd"))
        self.assertEqual(decision.servers, (ServerEntry("proxy1", 1080), ServerEntry("proxy2", 1081)))
        self.assertEqual(route(EXAMPLE, "127.0.0.9", 80).lineno, 5)

    def test_no_matching_line_means_deny(self):
        decision = route("direct 10.0.0.0 255.0.0.0", "127.0.0.9")
        self.assertEqual((decision.action, decision.rule, decision.lineno), ("deny", None, None))
        self.assertEqual(decision.reason, "no line of socks.conf matches")

    def test_the_user_list_is_matched_against_the_local_user(self):
        text = "deny *=mallory,eve 0.0.0.0 0.0.0.0\ndirect 0.0.0.0 0.0.0.0"
        self.assertEqual(route(text, "127.0.0.9", user="eve").action, "deny")
        self.assertEqual(route(text, "127.0.0.9", user="Eve").action, "direct")

    def test_port_operators(self):
        text = "direct 0.0.0.0 0.0.0.0 lt 1024\ndeny 0.0.0.0 0.0.0.0 ge 6000\nsockd 0.0.0.0 0.0.0.0"
        self.assertEqual([route(text, "127.0.0.9", p).action for p in (22, 1024, 5999, 6000)],
                         ["direct", "sockd", "sockd", "deny"])

    def test_a_name_matches_name_lines_and_any_address_lines(self):
        text = ("direct .corp.example 0.0.0.0\n"
                "sockd @=p1 127.0.0.0 255.0.0.0\n"
                "sockd @=p2 0.0.0.0 0.0.0.0\n")
        self.assertEqual(route(text, "WWW.Corp.Example.", 80).lineno, 1)
        self.assertEqual(route(text, "corp.example", 80).lineno, 1)
        self.assertEqual(route(text, "notcorp.example", 80).lineno, 3)     # unresolved: only mask 0 matches
        self.assertEqual(route(text, "notcorp.example", 80, address="127.0.0.9").lineno, 2)
        self.assertEqual(route(text, "127.0.0.9", 80).lineno, 2)            # addresses never match names

    def test_ipv6_destinations_match_only_lines_for_any_address(self):
        text = "deny 127.0.0.0 255.0.0.0\ndirect 0.0.0.0 0.0.0.0"
        self.assertEqual(route(text, "::1").lineno, 2)

    def test_the_default_server_serves_lines_without_servers(self):
        text = "sockd 0.0.0.0 0.0.0.0"
        self.assertEqual(route(text, "127.0.0.9").servers, (ServerEntry(BUILTIN_SERVER, 1080),))
        self.assertEqual(route(text, "127.0.0.9", default_server="").servers, (ServerEntry(BUILTIN_SERVER, 1080),))
        self.assertEqual(route(text, "127.0.0.9", default_server="gw:1081,gw2").servers,
                         (ServerEntry("gw", 1081), ServerEntry("gw2", 1080)))
        self.assertEqual(route("sockd @=own 0.0.0.0 0.0.0.0", "127.0.0.9", default_server="gw").servers,
                         (ServerEntry("own", 1080),))
        self.assertEqual(route(text, "127.0.0.9", default_server="socks5://gw").servers, (ServerEntry("gw", 1080, 5),))

    def test_ipv6_prefix_lines_pick_socks5_servers_for_ipv6_destinations(self):
        text = "sockd @=socks5://gw6 2001:db8::/32\nsockd @=gw4 0.0.0.0 0.0.0.0\n"
        self.assertEqual(route(text, "2001:db8::7").servers, (ServerEntry("gw6", 1080, 5),))
        self.assertEqual(route(text, "192.0.2.1").servers, (ServerEntry("gw4", 1080, 4),))

    def test_a_bad_default_server_is_a_value_error_when_needed(self):
        self.assertRaises(ValueError, route, "sockd 0.0.0.0 0.0.0.0", "127.0.0.9", default_server="a:0")
        self.assertEqual(route("direct 0.0.0.0 0.0.0.0", "127.0.0.9", default_server="a:0").action, "direct")

    def test_ambiguous_addresses_are_refused(self):
        for host in ("127.1", "0177.0.0.1", "0x7f.0.0.1", "2130706433"):
            self.assertRaises(ValueError, route, "direct 0.0.0.0 0.0.0.0", host)

    def test_command_values_for_a_line_command(self):
        values = command_values("www.example", 80, user="alice", address=None, local_host="here", service="http")
        self.assertEqual(values, {"A": "here", "a": "here", "c": "connect", "S": "http", "s": "80",
                                  "U": "alice", "u": "alice", "Z": "www.example", "z": "www.example"})


class FailureMemoryTests(TestCase):
    def test_recently_failed_servers_come_last_until_the_hold_expires(self):
        clock = Clock()
        memory = RecentFailures(clock, hold=60)
        servers = parse_server_list("a,b,c")
        key = str
        self.assertEqual(memory.order(servers, key), list(servers))
        memory.failed("a:1080")
        clock.advance(10)
        memory.failed("b:1080")
        self.assertEqual([str(s) for s in memory.order(servers, key)], ["c:1080", "a:1080", "b:1080"])
        clock.advance(50)
        self.assertEqual([str(s) for s in memory.order(servers, key)], ["a:1080", "c:1080", "b:1080"])
        clock.advance(10)
        self.assertEqual(memory.order(servers, key), list(servers))
        self.assertEqual(len(memory), 0)

    def test_a_success_forgets_the_failure(self):
        clock = Clock()
        memory = RecentFailures(clock)
        memory.failed("a")
        self.assertTrue(memory.recently_failed("a"))
        memory.succeeded("a")
        self.assertFalse(memory.recently_failed("a"))
        memory.succeeded("never-failed")

    def test_a_new_failure_restarts_the_hold(self):
        clock = Clock()
        memory = RecentFailures(clock, hold=60)
        memory.failed("a")
        clock.advance(50)
        memory.failed("a")
        clock.advance(50)
        self.assertTrue(memory.recently_failed("a"))

    def test_the_memory_is_bounded(self):
        memory = RecentFailures(Clock(), limit=3)
        for key in "abcde":
            memory.failed(key)
        self.assertEqual(len(memory), 3)
        self.assertEqual([k for k in "abcde" if memory.recently_failed(k)], ["c", "d", "e"])

    def test_when_every_server_failed_the_listed_order_stays(self):
        memory = RecentFailures(Clock())
        for key in "cba":
            memory.failed(key)
        self.assertEqual(memory.order("abc"), ["a", "b", "c"])


# ---- properties

_WORDS = ["deny", "direct", "sockd", "sockd@", "sockd@=", "@=", "*=", "?=I", "permit", "domain", "bind",
          "0.0.0.0", "255.255.255.255", "127.0.0.1", "10.0.0.0", "255.0.0.0", "ALL", ".example.org", "host",
          "eq", "neq", "lt", "ge", "80", "http", "65536", "a:1081", "[::1]", "[::1]:2", "b,c", ":", "#", "\t",
          "socks5://a", "@=socks5://[::1]:2,b", "sockd@socks5://c:1081", "socks4://d", "socks5h://e", "u@v",
          "@=socks5://", "::1/128", "10.0.0.0/8",
          "'", '"', "%u", "/etc/x", "127.1", "-", ",", "", "\r"]

lines = st.lists(st.sampled_from(_WORDS), max_size=9).map(" ".join)
files = st.lists(lines, max_size=8).map("\n".join)


def _dotted(value):
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


addresses = st.integers(0, 2 ** 32 - 1).map(_dotted)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)
entries = st.builds(ServerEntry, st.one_of(hosts, addresses, st.just("::1")), ports, st.sampled_from([4, 5]))


@st.composite
def rule_lines(draw):
    action = draw(st.sampled_from(["deny", "direct", "sockd"]))
    parts = [action]
    if action == "sockd" and draw(st.booleans()):
        parts.append("@=" + ",".join(str(e) for e in draw(st.lists(entries, min_size=1, max_size=3))))
    if draw(st.booleans()):
        parts.append("*=" + ",".join(draw(st.lists(st.sampled_from(["alice", "bob", "carol"]), min_size=1))))
    parts += [draw(st.one_of(addresses, st.just("ALL"), st.just(".example.org"))), draw(addresses)]
    if draw(st.booleans()):
        parts += [draw(st.sampled_from(["eq", "neq", "lt", "gt", "le", "ge"])), str(draw(st.integers(0, 65535)))]
    return " ".join(parts)


class PropertyTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(files, st.text(max_size=200)))
    def test_any_text_gives_a_conf_or_a_config_error(self, text):
        try:
            conf = parse(text)
        except ConfigError as e:
            self.assertTrue(e.problems)
            for p in e.problems:
                self.assertGreaterEqual(p.line, 1)
                self.assertGreaterEqual(p.column, 1)
        else:
            self.assertIsInstance(conf, SocksConf)
            for rule in conf.rules:
                self.assertIn(rule.action, ("deny", "direct", "sockd"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(rule_lines(), min_size=1, max_size=6), addresses, st.integers(0, 65535),
           st.sampled_from(["alice", "bob", "dave"]))
    def test_the_decision_is_the_first_line_that_matches(self, text_lines, host, port, user):
        conf = parse("\n".join(text_lines))
        self.assertEqual(len(conf.rules), len(text_lines))
        decision = decide_route(conf, host, port, user=user)
        if host in ALWAYS_DIRECT:
            self.assertEqual(decision.action, "direct")
            return
        matching = [r for r in conf.rules
                    if (r.users is None or user in r.users) and r.dst.matches(int.from_bytes(
                        bytes(int(o) for o in host.split(".")), "big"))
                    and (r.port is None or r.port.matches(port))]
        if not matching:
            self.assertEqual((decision.action, decision.rule), ("deny", None))
        else:
            self.assertIs(decision.rule, matching[0])
            self.assertEqual(decision.action, matching[0].action)
            if decision.action == "sockd":
                self.assertTrue(decision.servers)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=40), addresses, hosts), st.integers(0, 65535),
           st.one_of(st.none(), st.text(max_size=30)))
    def test_any_destination_gives_a_decision_or_a_value_error(self, host, port, default_server):
        conf = parse(EXAMPLE)
        try:
            decision = decide_route(conf, host, port, user="alice", default_server=default_server)
        except ValueError:
            return
        self.assertIn(decision.action, ("deny", "direct", "sockd"))
        if decision.action == "sockd":
            self.assertTrue(all(isinstance(s, ServerEntry) for s in decision.servers))

    @given(st.lists(entries, min_size=1, max_size=5))
    def test_server_entries_print_and_parse_back(self, listed):
        text = ",".join(str(e) for e in listed)
        self.assertEqual(parse_server_list(text, getservbyname=no_services), tuple(listed))

    @given(st.lists(st.sampled_from("abcdef"), max_size=12), st.lists(st.sampled_from("abcdef"), max_size=6))
    def test_ordering_keeps_every_server_once_and_fresh_ones_first(self, items, failed):
        memory = RecentFailures(Clock())
        for key in failed:
            memory.failed(key)
        ordered = memory.order(items)
        self.assertEqual(sorted(ordered), sorted(items))
        flags = [memory.recently_failed(k) for k in ordered]
        self.assertEqual(flags, sorted(flags))
        self.assertEqual([k for k in ordered if k not in failed], [k for k in items if k not in failed])


class ReferenceExampleTests(TestCase):
    """The example of docs/socks-conf.rst (EXAMPLES) decides as its table says."""

    def example(self):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "socks-conf.rst")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        section = text.split("\nEXAMPLES\n========\n", 1)[1]
        block = section.split(".. code-block:: none\n\n", 1)[1]
        lines = []
        for line in block.split("\n"):
            if line and not line.startswith("   "):
                break
            lines.append(line[3:])
        return parse("\n".join(lines).strip("\n") + "\n")

    def test_the_decisions_of_the_table(self):
        conf = self.example()
        self.assertEqual(route_in(conf, "10.2.0.9", 22, "alice"), ("direct", 2))
        self.assertEqual(route_in(conf, "10.2.0.9", 22, "guest"), ("direct", 2))
        self.assertEqual(route_in(conf, "203.0.113.5", 80, "guest"), ("deny", 5))
        self.assertEqual(route_in(conf, "203.0.113.5", 25, "alice"), ("sockd", 7))
        self.assertEqual(route_in(conf, "www.example.org", 443, "alice"), ("sockd", 9))
        self.assertEqual(route_in(conf, "www.example.org", 443, "alice", address="203.0.113.80"), ("sockd", 9))
        self.assertEqual(route_in(conf, "www.example.org", 443, "alice", address="10.0.0.80"), ("direct", 2))
        self.assertEqual(route_in(conf, "127.0.0.1", 8080, "alice"), ("direct", None))
        self.assertEqual([str(s) for s in decide_route(conf, "www.example.org", 443, user="alice").servers],
                         ["proxy1.example.org:1080", "proxy2.example.org:1081"])


def route_in(conf, host, port, user, **kwargs):
    decision = decide_route(conf, host, port, user=user, **kwargs)
    return decision.action, decision.lineno
