"""pytest-twisted suite: run with ``python -m pytest ptests`` (pytest-twisted's
plugin active), separately from the trial-style ``tests`` (pytest-dev/pytest-twisted#147).

This folder is deliberately not a package (no ``__init__.py``): its modules are
imported by their base names and must not collide with ``tests/``.  It reuses
the fixtures of ``tests/support.py``; those expect a trial-like object with
``addCleanup``, which the ``cleanups`` fixture provides.
"""

import inspect
import os
import sys

import pytest_twisted
from twisted.internet import defer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # for ``tests.support`` when run as ``pytest ptests`` from elsewhere


class Cleanups:
    """``addCleanup`` like trial's: run last-in first-out, Deferreds and
    coroutines awaited, every cleanup run even if one fails."""

    def __init__(self):
        self._calls = []

    def addCleanup(self, function, *args, **kwargs):
        self._calls.append((function, args, kwargs))

    async def run(self):
        errors = []
        while self._calls:
            function, args, kwargs = self._calls.pop()
            try:
                result = function(*args, **kwargs)
                if isinstance(result, defer.Deferred) or inspect.isawaitable(result):
                    await result
            except Exception as e:  # keep cleaning up; report the first problem
                errors.append(e)
        if errors:
            raise errors[0]


@pytest_twisted.async_yield_fixture
async def cleanups():
    c = Cleanups()
    yield c
    await c.run()
