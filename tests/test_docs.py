"""The reference pages keep up with the code: every option is documented."""

import os

from twisted.trial.unittest import SynchronousTestCase

from sockssuite import tap

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


class OptionReferenceTests(SynchronousTestCase):
    def test_every_twistd_sockssuite_option_is_in_the_option_reference(self):
        with open(os.path.join(DOCS, "options.rst"), encoding="utf-8") as f:
            text = f.read()
        options = tap.Options()
        names = [p[0] for p in options.optParameters] + [f[0] for f in options.optFlags]
        names += [name[4:].replace("_", "-") for name in dir(options) if name.startswith("opt_")
                  and name not in ("opt_help", "opt_version")]
        missing = sorted({n for n in names if f"--{n}" not in text})
        self.assertEqual(missing, [], "options missing from docs/options.rst")
