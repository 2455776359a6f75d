"""Tests for sockssuite.shellcmd: the %-substitutions of sockd.conf shell commands."""

import os
import string

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sockssuite.shellcmd import SUBSTITUTIONS, expand, sanitize, split_template

ALLOWED = frozenset(string.ascii_letters + string.digits + "!@%-_=+:,./")

VALUES = {
    "A": "client.example.com",
    "a": "192.0.2.7",
    "c": "connect",
    "p": "4242",
    "S": "telnet",
    "s": "23",
    "U": "bob",
    "u": "robert",
    "Z": "dest.example.net",
    "z": "198.51.100.9",
}


def expand_one(word, values=VALUES, environ=None):
    [result] = expand([word], values, environ=environ or {})
    return result


class SubstitutionTests(TestCase):
    def test_every_letter_is_substituted(self):
        for letter, expected in VALUES.items():
            self.assertEqual(expand_one(f"<%{letter}>"), f"<{expected}>", letter)

    def test_substitution_letters_are_the_documented_set(self):
        self.assertEqual(set(SUBSTITUTIONS), set(VALUES))

    def test_percent_percent_is_a_percent_sign(self):
        self.assertEqual(expand_one("100%% by %u"), "100% by robert")

    def test_unknown_letter_is_dropped_with_its_percent(self):
        self.assertEqual(expand_one("a%xb%Qc%1d"), "abcd")

    def test_lone_trailing_percent_is_dropped(self):
        self.assertEqual(expand_one("50%"), "50")

    def test_several_substitutions_in_one_word(self):
        self.assertEqual(expand_one("%u@%a:%s"), "robert@192.0.2.7:23")

    def test_each_word_is_expanded_separately(self):
        self.assertEqual(
            expand(["/usr/bin/logger", "-t", "sockd", "%U is %u"], VALUES, environ={}),
            ["/usr/bin/logger", "-t", "sockd", "bob is robert"],
        )

    def test_client_name_falls_back_to_address(self):
        self.assertEqual(expand_one("%A", {"a": "192.0.2.7"}), "192.0.2.7")
        self.assertEqual(expand_one("%A", {"A": "", "a": "192.0.2.7"}), "192.0.2.7")

    def test_destination_name_falls_back_to_address(self):
        self.assertEqual(expand_one("%Z", {"z": "198.51.100.9"}), "198.51.100.9")

    def test_ident_user_is_unknown_when_none(self):
        self.assertEqual(expand_one("%U", {}), "unknown")
        self.assertEqual(expand_one("%U", {"U": ""}), "unknown")

    def test_pid_defaults_to_this_process(self):
        self.assertEqual(expand_one("%p", {}), str(os.getpid()))

    def test_missing_value_is_empty(self):
        self.assertEqual(expand_one("[%u][%S]", {}), "[][]")


class SanitizeTests(TestCase):
    def test_safe_characters_are_kept(self):
        self.assertEqual(sanitize("Az09!@%-_=+:,./"), "Az09!@%-_=+:,./")

    def test_quotes_are_replaced(self):
        self.assertEqual(sanitize("a'b\"c"), "a_b_c")

    def test_semicolon_and_pipe_are_replaced(self):
        self.assertEqual(sanitize("x;rm -rf /|y&z"), "x_rm_-rf_/_y_z")

    def test_command_substitution_is_replaced(self):
        self.assertEqual(sanitize("$(id)`id`"), "__id__id_")

    def test_newline_and_spaces_are_replaced(self):
        self.assertEqual(sanitize("a b\tc\nd\re"), "a_b_c_d_e")

    def test_backslash_is_replaced(self):
        # The original allowed it; it can escape a quote in a script.
        self.assertEqual(sanitize("a\\'"), "a__")

    def test_leading_dash_cannot_become_an_option(self):
        self.assertEqual(sanitize("-rf"), "_rf")
        self.assertEqual(sanitize("--help"), "_-help")

    def test_non_ascii_letters_are_replaced(self):
        self.assertEqual(sanitize("jörg\udcff"), "j_rg_")

    def test_empty_stays_empty(self):
        self.assertEqual(sanitize(""), "")

    def test_hostile_user_id_is_sanitized_in_expansion(self):
        hostile = dict(VALUES, u="-x'; $(reboot) `id`\n")
        self.assertEqual(expand_one("%u", hostile), "_x_____reboot___id__")

    @given(st.text())
    def test_sanitized_text_uses_only_allowed_characters(self, value):
        result = sanitize(value)
        self.assertLessEqual(set(result), ALLOWED)
        self.assertEqual(len(result), len(value))
        self.assertFalse(result.startswith("-"))


class SinglePassTests(TestCase):
    def test_substituted_percent_is_not_rescanned(self):
        self.assertEqual(expand_one("%u", dict(VALUES, u="%A%%")), "%A%%")

    def test_substituted_dollar_is_not_expanded(self):
        self.assertEqual(expand_one("%u", dict(VALUES, u="$HOME"), {"HOME": "/root"}), "_HOME")

    def test_environment_value_is_not_rescanned_for_dollars(self):
        self.assertEqual(expand_one("$A", environ={"A": "$B", "B": "no"}), "$B")


class EnvironmentTests(TestCase):
    def test_dollar_name_is_expanded(self):
        self.assertEqual(expand_one("to:$USER", environ={"USER": "root"}), "to:root")

    def test_braced_name_is_expanded(self):
        self.assertEqual(expand_one("${USER}x", environ={"USER": "root"}), "rootx")

    def test_unknown_name_is_empty(self):
        self.assertEqual(expand_one("[$NOPE][${NOPE}]"), "[][]")

    def test_environment_values_are_not_sanitized(self):
        # Operator-controlled, like the template itself.
        self.assertEqual(expand_one("$CMD", environ={"CMD": "a b;c"}), "a b;c")

    def test_dollar_without_a_name_is_literal(self):
        self.assertEqual(expand_one("$ $5 ${ ${x"), "$ $5 ${ ${x")

    def test_environment_is_expanded_before_percent(self):
        self.assertEqual(expand_one("$FMT", environ={"FMT": "user=%u"}), "user=robert")


class SplitTemplateTests(TestCase):
    def test_quotes_group_words(self):
        self.assertEqual(
            split_template("/usr/ucb/mail -s 'Rejected SOCKS access by %u' $USER"),
            ["/usr/ucb/mail", "-s", "Rejected SOCKS access by %u", "$USER"],
        )

    def test_double_quotes_and_backslashes(self):
        self.assertEqual(split_template(r'a "b c" d\ e'), ["a", "b c", "d e"])

    def test_hash_is_not_a_comment(self):
        self.assertEqual(split_template("logger #1"), ["logger", "#1"])

    def test_unbalanced_quote_is_an_error(self):
        self.assertRaises(ValueError, split_template, "mail -s 'oops")

    def test_trailing_backslash_is_an_error(self):
        self.assertRaises(ValueError, split_template, "mail \\")


_LETTERS = st.sampled_from(sorted(SUBSTITUTIONS))


class ExpansionPropertyTests(TestCase):
    @given(
        st.lists(st.text(), max_size=4),
        st.dictionaries(_LETTERS, st.text()),
        st.dictionaries(st.from_regex(r"[A-Z]{1,3}", fullmatch=True), st.text(max_size=5), max_size=3),
    )
    def test_expansion_adds_only_allowed_characters(self, template, values, environ):
        literal = set("".join(template)) | set("".join(environ.values()))
        for word in expand(template, values, environ=environ):
            self.assertLessEqual(set(word), ALLOWED | literal)

    @given(st.text(), st.dictionaries(_LETTERS, st.text()))
    def test_word_starting_with_a_substitution_never_starts_with_dash(self, value, values):
        values = dict(values, u=value)
        word = expand_one("%u", values)
        self.assertFalse(word.startswith("-"))
