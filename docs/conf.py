# Sphinx configuration for the sockssuite documentation.
#
# Build (both must stay warning-free):
#   python -m sphinx -W -b html docs docs/_build/html
#   python -m sphinx -W -b man  docs docs/_build/man
#
# Everything here works offline: the theme ships with Sphinx, and the only
# extension is part of Sphinx itself.

import os
import sys

# The package is documented from this checkout, not from whatever copy is
# installed: the version and any autodoc'd docstrings come from the same tree.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from sockssuite import __version__  # noqa: E402

project = "sockssuite"
author = "the sockssuite developers"
copyright = "2026, the sockssuite developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

# Literal blocks are shell sessions, config files and log lines: no guessing
# a lexer (a wrong guess is a warning, and -W makes it an error).
highlight_language = "none"
pygments_style = "sphinx"

# -- HTML -------------------------------------------------------------------

html_theme = "alabaster"
html_theme_options = {
    "description": "SOCKS4/4a proxy suite on Twisted",
    "fixed_sidebar": False,
    "show_relbars": True,
}
html_static_path = []
html_title = f"sockssuite {release}"
html_show_sourcelink = False

# -- Manual pages -------------------------------------------------------------
# (source document, page name, description, authors, section)

man_pages = [
    ("sockd-conf", "sockd.conf",
     "access control rules for the sockssuite SOCKS server", [author], 5),
    ("cli", "sockssuite",
     "check and explain sockssuite configuration files", [author], 1),
    ("options", "twistd-sockssuite",
     "run the sockssuite SOCKS4/4a proxy server under twistd", [author], 8),
]
man_show_urls = False


def _tidy_manual_page(app, doctree, docname):
    """Two touch-ups for the man builder only.

    * The man writer makes the NAME section itself, from ``man_pages`` above.
      A page written in manual-page form has its own NAME for HTML readers,
      which would otherwise appear twice in the manual page.
    * Links between pages have no address in a manual page. With docutils
      0.22 the man writer prints them as ``title <>``; keep just the title.
    """
    if app.builder.name != "man":
        return
    from docutils import nodes

    for section in list(doctree.findall(nodes.section)):
        if section.children and section[0].astext().strip() == "NAME":
            section.parent.remove(section)
            break
    for reference in list(doctree.findall(nodes.reference)):
        if "refuri" not in reference:
            continue  # a link within the page: printed as plain text already
        if not reference["refuri"].startswith(("http:", "https:", "ftp:", "mailto:")):
            reference.replace_self(nodes.emphasis("", "", *reference.children))


def setup(app):
    app.connect("doctree-resolved", _tidy_manual_page)
