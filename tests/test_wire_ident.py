"""The RFC 1413 codec: queries, every answer form, every bound; and the ident
decision table of the access policy (mode x outcome -> permit, 92 or 93)."""

import itertools

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockssuite import access
from sockssuite.wire import ident
from sockssuite.wire.ident import (MAX_LINE, MAX_USERID, AnswerReader, Error, IdentProtocolError,
                                   UserID, encode_query, parse_answer)


def read_in_pieces(data, cuts):
    """Feed ``data`` to a fresh AnswerReader cut at ``cuts``; the first answer
    (or None if the line never ended)."""
    reader = AnswerReader()
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        result = reader.feed(data[start:cut])
        start = cut
        if result is not None:
            return result
    return None


class EncodeQueryTests(SynchronousTestCase):
    def test_query_is_client_port_comma_server_port_crlf(self):
        self.assertEqual(encode_query(40000, 1080), b"40000 , 1080\r\n")
        self.assertEqual(encode_query(1, 65535), b"1 , 65535\r\n")

    def test_ports_out_of_range_are_refused(self):
        for client_port, server_port in [(0, 1080), (40000, 0), (65536, 1080), (40000, 65536),
                                         (-1, 1080), (40000, -80)]:
            with self.assertRaises(ValueError, msg=(client_port, server_port)):
                encode_query(client_port, server_port)

    def test_a_query_parses_back_as_the_ports_of_an_answer(self):
        query = encode_query(6191, 23)
        self.assertTrue(query.endswith(b"\r\n"))
        answer = parse_answer(query[:-2] + b" : USERID : UNIX : stjohns")
        self.assertEqual((answer.client_port, answer.server_port), (6191, 23))


class ParseUserIDTests(SynchronousTestCase):
    def test_rfc_example_with_blanks_around_fields(self):
        self.assertEqual(parse_answer(b"6193, 23 : USERID : UNIX : stjohns"),
                         UserID(6193, 23, "UNIX", None, "stjohns"))

    def test_fields_without_any_whitespace(self):
        # oidentd's form
        self.assertEqual(parse_answer(b"40000,1080:USERID:UNIX:nobody"),
                         UserID(40000, 1080, "UNIX", None, "nobody"))

    def test_tabs_and_extra_blanks_around_fields_are_ignored(self):
        self.assertEqual(parse_answer(b" \t40000 \t,\t 1080 \t:\t USERID \t: \tUNIX\t :  \tnobody \t"),
                         UserID(40000, 1080, "UNIX", None, "nobody"))

    def test_charset_suffix_on_opsys(self):
        self.assertEqual(parse_answer(b"6195, 23 : USERID : UNIX , US-ASCII : joe"),
                         UserID(6195, 23, "UNIX", "US-ASCII", "joe"))
        self.assertEqual(parse_answer(b"6195,23:USERID:OTHER,UTF-8:joe"),
                         UserID(6195, 23, "OTHER", "UTF-8", "joe"))

    def test_empty_charset_after_the_comma_counts_as_none(self):
        self.assertEqual(parse_answer(b"1,2:USERID:UNIX,:joe").charset, None)

    def test_answer_type_is_case_insensitive(self):
        self.assertEqual(parse_answer(b"1,2:userid:UNIX:joe"), UserID(1, 2, "UNIX", None, "joe"))

    def test_user_id_may_contain_spaces_and_colons(self):
        self.assertEqual(parse_answer(b"1,2:USERID:OTHER:John Q. Public").user, "John Q. Public")
        self.assertEqual(parse_answer(b"1, 2 : USERID : OTHER : a:b : c").user, "a:b : c")
        self.assertEqual(parse_answer(b"1,2:USERID:OTHER::leading-colon").user, ":leading-colon")

    def test_user_id_octets_survive_exactly(self):
        raw = bytes(range(0x80, 0x100)) + b"\xff\xfe"
        user = parse_answer(b"1,2:USERID:OTHER:" + raw).user
        self.assertEqual(user.encode("utf-8", "surrogateescape"), raw)
        self.assertEqual(parse_answer("1,2:USERID:UNIX,UTF-8:jörg".encode()).user, "jörg")

    def test_ports_with_leading_zeros(self):
        answer = parse_answer(b"00080,01080:USERID:UNIX:joe")
        self.assertEqual((answer.client_port, answer.server_port), (80, 1080))

    def test_user_id_of_exactly_512_octets_is_accepted(self):
        user = b"u" * MAX_USERID
        self.assertEqual(MAX_USERID, 512)
        self.assertEqual(parse_answer(b"1,2:USERID:UNIX:" + user).user, user.decode())

    def test_user_id_of_513_octets_is_refused(self):
        with self.assertRaises(IdentProtocolError):
            parse_answer(b"1,2:USERID:UNIX:" + b"u" * (MAX_USERID + 1))

    def test_blanks_around_the_user_id_do_not_count_towards_the_bound(self):
        line = b"1,2:USERID:UNIX:   " + b"u" * MAX_USERID + b"   "
        self.assertEqual(len(parse_answer(line).user), MAX_USERID)

    def test_nul_or_cr_inside_the_user_id_is_refused(self):
        for line in [b"1,2:USERID:UNIX:a\0b", b"1,2:USERID:UNIX:ab\r", b"1,2:USERID:UNIX:a\rb"]:
            with self.assertRaises(IdentProtocolError, msg=line):
                parse_answer(line)


class ParseErrorTests(SynchronousTestCase):
    def test_every_standard_error_token(self):
        self.assertEqual(ident.ERRORS, ("INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR"))
        for token in ident.ERRORS:
            for line in [b"6195, 23 : ERROR : " + token.encode(),
                         b"6195,23:ERROR:" + token.encode(),
                         b"6195,23:ERROR:" + token.lower().encode() + b" \t"]:
                self.assertEqual(parse_answer(line), Error(6195, 23, token), line)

    def test_non_standard_x_error_tokens_are_kept(self):
        self.assertEqual(parse_answer(b"1, 2 : ERROR : X-SERVICE-BUSY"), Error(1, 2, "X-SERVICE-BUSY"))
        self.assertEqual(parse_answer(b"1,2:ERROR:X-Rate-Limited").error.upper(), "X-RATE-LIMITED")

    def test_error_token_with_blanks_or_control_characters_is_refused(self):
        for line in [b"1,2:ERROR:", b"1,2:ERROR:   ", b"1,2:ERROR:NO USER", b"1,2:ERROR:NO-USER\x01",
                     b"1,2:ERROR:\xffNO-USER"]:
            with self.assertRaises(IdentProtocolError, msg=line):
                parse_answer(line)


class ParseGarbageTests(SynchronousTestCase):
    GARBAGE = [
        b"",
        b"hello",
        b"\r",
        b"1,2",
        b"1,2:USERID",
        b"1,2:USERID:UNIX",            # no user-id field
        b"1,2:USERID:UNIX:",           # empty user-id
        b"1,2:USERID:UNIX:   \t ",     # blank user-id
        b"1,2:USERID::joe",            # empty opsys
        b"1,2:USERID: ,UTF-8:joe",     # empty opsys before a charset
        b"1,2:NOTICE:UNIX:joe",        # unknown answer type
        b"1,2::UNIX:joe",              # empty answer type
        b"1,2:USER ID:UNIX:joe",
        b":USERID:UNIX:joe",           # no ports
        b"1:USERID:UNIX:joe",          # one port
        b"1,2,3:USERID:UNIX:joe",      # three ports
        b",2:USERID:UNIX:joe",
        b"1,:USERID:UNIX:joe",
        b"0,1080:USERID:UNIX:joe",     # port 0
        b"40000,0:USERID:UNIX:joe",
        b"70000,1080:USERID:UNIX:joe",  # port out of range
        b"40000,65536:USERID:UNIX:joe",
        b"123456,1080:USERID:UNIX:joe",  # too many digits
        b"000001080,1:USERID:UNIX:joe",
        b"-1,1080:USERID:UNIX:joe",
        b"+80,1080:USERID:UNIX:joe",
        b"4 0,1080:USERID:UNIX:joe",
        b"0x50,1080:USERID:UNIX:joe",
        b"\xd9\xa3,1080:USERID:UNIX:joe",  # a non-ASCII digit
        b"1,2:ERROR",                   # error without a token
    ]

    def test_garbage_forms_raise_ident_protocol_error(self):
        for line in self.GARBAGE:
            with self.assertRaises(IdentProtocolError, msg=line):
                parse_answer(line)

    def test_garbage_through_the_reader_too(self):
        for line in self.GARBAGE:
            if b"\r" in line:
                continue
            with self.assertRaises(IdentProtocolError, msg=line):
                AnswerReader().feed(line + b"\r\n")


class AnswerReaderTests(SynchronousTestCase):
    def test_crlf_ended_answer(self):
        self.assertEqual(AnswerReader().feed(b"40000 , 1080 : USERID : UNIX : nobody\r\n"),
                         UserID(40000, 1080, "UNIX", None, "nobody"))

    def test_bare_lf_ended_answer(self):
        self.assertEqual(AnswerReader().feed(b"40000,1080:USERID:UNIX:nobody\n"),
                         UserID(40000, 1080, "UNIX", None, "nobody"))

    def test_error_answer(self):
        self.assertEqual(AnswerReader().feed(b"40000 , 1080 : ERROR : NO-USER\r\n"),
                         Error(40000, 1080, "NO-USER"))

    def test_nothing_until_the_line_ends(self):
        reader = AnswerReader()
        self.assertIsNone(reader.feed(b""))
        self.assertIsNone(reader.feed(b"40000,1080:USERID:UNIX:nob"))
        self.assertIsNone(reader.feed(b"ody\r"))
        self.assertEqual(reader.feed(b"\n").user, "nobody")

    def test_cr_split_from_its_lf(self):
        reader = AnswerReader()
        self.assertIsNone(reader.feed(b"1,2:ERROR:HIDDEN-USER\r"))
        self.assertEqual(reader.feed(b"\n"), Error(1, 2, "HIDDEN-USER"))

    def test_only_the_first_line_counts(self):
        self.assertEqual(AnswerReader().feed(b"1,2:USERID:UNIX:first\r\n3,4:USERID:UNIX:second\r\n"),
                         UserID(1, 2, "UNIX", None, "first"))

    def test_line_of_max_line_octets_is_read(self):
        prefix = b"1,2:USERID:UNIX:"
        line = prefix + b" " * (MAX_LINE - len(prefix) - 4) + b"joe\r"
        self.assertEqual(len(line), MAX_LINE)
        self.assertEqual(AnswerReader().feed(line + b"\n").user, "joe")

    def test_line_over_max_line_octets_is_refused_even_with_its_lf(self):
        prefix = b"1,2:USERID:UNIX:"
        line = prefix + b" " * (MAX_LINE - len(prefix) - 3) + b"joe\r"
        self.assertEqual(len(line), MAX_LINE + 1)
        with self.assertRaises(IdentProtocolError):
            AnswerReader().feed(line + b"\n")

    def test_unterminated_line_is_refused_once_past_max_line(self):
        reader = AnswerReader()
        self.assertIsNone(reader.feed(b"x" * MAX_LINE))
        with self.assertRaises(IdentProtocolError):
            reader.feed(b"x")

    def test_one_mebibyte_without_lf_stops_after_max_line_bytes(self):
        # Fed the way a transport delivers it: the reader must give up as soon
        # as the line is over the bound, holding at most MAX_LINE + one chunk.
        for chunk_size in (1, 7, 1000, 4096, 65536):
            reader = AnswerReader()
            fed = 0
            with self.assertRaises(IdentProtocolError):
                while fed < 1 << 20:
                    reader.feed(b"A" * chunk_size)
                    fed += chunk_size
            fed += chunk_size  # the chunk that raised
            self.assertLessEqual(fed, MAX_LINE + chunk_size, chunk_size)
            self.assertGreater(fed, MAX_LINE, chunk_size)
            self.assertLessEqual(len(reader._buf), MAX_LINE + chunk_size)

    def test_one_mebibyte_in_one_piece_is_refused(self):
        with self.assertRaises(IdentProtocolError):
            AnswerReader().feed(b"A" * (1 << 20))
        with self.assertRaises(IdentProtocolError):
            AnswerReader().feed(b"1,2:USERID:UNIX:" + b"A" * (1 << 20) + b"\r\n")


# -- properties ----------------------------------------------------------------

ports = st.integers(1, 65535)
blanks = st.text(alphabet=" \t", max_size=3).map(str.encode)
# opsys and charset tokens: printable ASCII without blanks, ':' or ','.
tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":,"),
                 min_size=1, max_size=12).map(str.encode)
# user-ids: any octets but NUL, CR, LF, not starting or ending with a blank.
_user_octets = st.sampled_from([b for b in range(256) if b not in (0, 10, 13)])
user_ids = st.lists(_user_octets, min_size=1, max_size=MAX_USERID).map(bytes).filter(
    lambda u: u[:1] not in (b" ", b"\t") and u[-1:] not in (b" ", b"\t"))
error_tokens = st.sampled_from(ident.ERRORS) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789", min_size=1, max_size=20).map(lambda t: "X-" + t)


@st.composite
def answers(draw):
    """A well-formed answer line (with CR LF or LF) and the record it must parse to."""
    b = lambda: draw(blanks)  # noqa: E731
    client_port, server_port = draw(ports), draw(ports)
    head = b"%s%d%s,%s%d%s:" % (b(), client_port, b(), b(), server_port, b())
    if draw(st.booleans()):
        opsys = draw(tokens)
        charset = draw(st.none() | tokens)
        user = draw(user_ids)
        field = b() + opsys + b() + ((b"," + b() + charset + b()) if charset else b"")
        line = head + b() + b"USERID" + b() + b":" + field + b":" + b() + user + b()
        expected = UserID(client_port, server_port, opsys.decode(),
                          charset.decode() if charset else None,
                          user.decode("utf-8", "surrogateescape"))
    else:
        token = draw(error_tokens)
        line = head + b() + b"ERROR" + b() + b":" + b() + token.encode() + b()
        expected = Error(client_port, server_port, token)
    return line + draw(st.sampled_from([b"\r\n", b"\n"])), expected


class PropertyTests(SynchronousTestCase):
    @given(answers())
    @settings(max_examples=300)
    def test_built_answers_parse_back_to_what_was_built(self, answer):
        line, expected = answer
        self.assertEqual(AnswerReader().feed(line), expected)
        self.assertEqual(parse_answer(line.rstrip(b"\n").removesuffix(b"\r")), expected)

    @given(answers(), st.data())
    @settings(max_examples=300)
    def test_any_split_gives_the_same_answer(self, answer, data):
        line, expected = answer
        cuts = data.draw(st.lists(st.integers(0, len(line)), max_size=8))
        self.assertEqual(read_in_pieces(line, cuts), expected)

    @given(answers())
    def test_byte_at_a_time_gives_the_same_answer(self, answer):
        line, expected = answer
        self.assertEqual(read_in_pieces(line, range(len(line))), expected)

    @given(st.binary(max_size=3000), st.data())
    @settings(max_examples=500)
    def test_random_bytes_give_only_none_an_answer_or_ident_protocol_error(self, data, draw):
        cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=10))
        try:
            result = read_in_pieces(data, cuts)
        except IdentProtocolError:
            return
        self.assertIsInstance(result, (type(None), UserID, Error))
        if result is None:
            self.assertNotIn(b"\n", data)
            self.assertLessEqual(len(data), MAX_LINE)

    @given(st.lists(st.sampled_from([b"1", b",", b":", b" ", b"\t", b"USERID", b"ERROR", b"UNIX",
                                     b"NO-USER", b"\r", b"\n", b"\0", b"65536", b"0", b"\xff"]),
                    max_size=20).map(b"".join), st.data())
    @settings(max_examples=500)
    def test_near_miss_lines_give_only_none_an_answer_or_ident_protocol_error(self, data, draw):
        # Random bytes rarely look like an answer; these are built from its pieces.
        cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=5))
        try:
            result = read_in_pieces(data, cuts)
        except IdentProtocolError:
            return
        if result is not None:
            self.assertTrue(1 <= result.client_port <= 65535 and 1 <= result.server_port <= 65535)
            if isinstance(result, UserID):
                self.assertTrue(result.user and result.opsys)
                self.assertLessEqual(len(result.user.encode("utf-8", "surrogateescape")), MAX_USERID)

    @given(ports, ports)
    def test_query_round_trips_through_the_answer_ports(self, client_port, server_port):
        query = encode_query(client_port, server_port)
        answer = parse_answer(query.removesuffix(b"\r\n") + b":ERROR:NO-USER")
        self.assertEqual((answer.client_port, answer.server_port), (client_port, server_port))


# -- the decision table ----------------------------------------------------------

OUTCOMES = ("ok", "mismatch", "no-user", "unreachable")

#: The table as sockd.conf(5) and the spec state it, written out once more.
EXPECTED = {
    ("I", "ok"): None, ("I", "mismatch"): 93, ("I", "no-user"): 93, ("I", "unreachable"): 92,
    ("i", "ok"): None, ("i", "mismatch"): 93, ("i", "no-user"): 93, ("i", "unreachable"): None,
    ("n", "ok"): None, ("n", "mismatch"): None, ("n", "no-user"): None, ("n", "unreachable"): None,
}


class IdentDecisionTableTests(SynchronousTestCase):
    def test_table_covers_exactly_the_checking_modes_and_every_outcome(self):
        self.assertEqual(set(access.IDENT_TABLE), set(itertools.product(("I", "i"), OUTCOMES)))

    def test_every_mode_and_outcome_cell(self):
        for (mode, outcome), expected in EXPECTED.items():
            self.assertEqual(access.ident_verdict(mode, outcome), expected, (mode, outcome))
            if mode != "n":
                self.assertEqual(access.IDENT_TABLE[(mode, outcome)], expected, (mode, outcome))

    def test_ident_modes_are_the_ones_the_parser_knows(self):
        self.assertEqual({mode for mode, _ in EXPECTED}, set(access.IDENT_MODES))

    def test_unknown_outcome_is_an_error_for_checking_modes(self):
        for mode in ("I", "i"):
            with self.assertRaises(KeyError):
                access.ident_verdict(mode, "maybe")

    def test_outcome_ok_only_for_the_exact_userid(self):
        self.assertEqual(access.ident_outcome("ok", "alice", "alice"), "ok")
        self.assertEqual(access.ident_outcome("ok", "Alice", "alice"), "mismatch")
        self.assertEqual(access.ident_outcome("ok", "alice ", "alice"), "mismatch")
        self.assertEqual(access.ident_outcome("ok", "bob", "alice"), "mismatch")
        self.assertEqual(access.ident_outcome("ok", "alice", ""), "mismatch")
        raw = "\udcff\udcfe"  # undecodable octets, as both sides carry them
        self.assertEqual(access.ident_outcome("ok", raw, raw), "ok")

    def test_outcome_of_no_user_and_unreachable(self):
        self.assertEqual(access.ident_outcome("no-user", None, "alice"), "no-user")
        self.assertEqual(access.ident_outcome("unreachable", None, "alice"), "unreachable")

    def test_from_identd_answer_to_reply_code(self):
        # End to end through the table: what each identd behaviour costs a
        # request for USERID "alice" under ?=I and ?=i.
        cases = [
            ("ok", "alice", None, None),
            ("ok", "mallory", 93, 93),
            ("no-user", None, 93, 93),
            ("unreachable", None, 92, None),
        ]
        for status, user, under_I, under_i in cases:
            outcome = access.ident_outcome(status, user, "alice")
            self.assertEqual(access.ident_verdict("I", outcome), under_I, status)
            self.assertEqual(access.ident_verdict("i", outcome), under_i, status)
            self.assertIsNone(access.ident_verdict("n", outcome), status)
