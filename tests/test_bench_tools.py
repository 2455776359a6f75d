"""The benchmark's own tools (``bench/``): the CPU accounting of a target's
processes and the split of a py-spy profile.  The benchmark itself is not
run here: its figures are not pass/fail (see docs/performance.rst)."""

import importlib.util
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A process whose child burns about 0.4 s of CPU and ends, reaped, before
#: the parent says "done"; the parent then waits to be killed.
REAPING_PARENT = """
import os, sys, time
pid = os.fork()
if pid == 0:
    start = time.process_time()
    while time.process_time() - start < 0.4:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
time.sleep(60)
"""


class CPUAccountingTests(TestCase):
    def test_cpu_of_a_child_that_ended_between_two_readings_is_counted(self):
        bench = load("bench")
        target = bench.Target()
        target.proc = subprocess.Popen([sys.executable, "-c", REAPING_PARENT], stdout=subprocess.PIPE)
        self.addCleanup(target.proc.wait)
        self.addCleanup(target.proc.kill)
        before = sum(target.cpu_split())  # the child may be running already: part of it counted here
        self.assertEqual(target.proc.stdout.readline(), b"done\n")
        after = target.cpu_split()
        # The child is gone from /proc; its 0.4 s are in the parent's cutime/cstime.
        self.assertEqual(len(target.pids()), 1)
        self.assertGreaterEqual(sum(after), 0.3)
        self.assertGreaterEqual(sum(after) - before, 0.0)


RAW_PROFILE = """\
<module> (twistd:8);run (/x/site-packages/twisted/internet/base.py:686);callWithLogger (/x/site-packages/twisted/python/log.py:98) 5
<module> (twistd:8);callWithLogger (/x/site-packages/twisted/python/log.py:98);_send (/work/main/sockssuite/relay.py:206) 7
<module> (twistd:8);_log_close (/work/main/sockssuite/server.py:1056);emit (/x/site-packages/twisted/logger/_logger.py:226) 3
<module> (twistd:8);_log_close (/work/main/sockssuite/server.py:1040) 1
<module> (twistd:8);close (/usr/lib/python3.11/socket.py:497) 4

"""


class ProfileSplitTests(TestCase):
    def test_samples_are_split_by_logging_dispatch_and_file(self):
        split = load("profile_split")
        categories, lines, total = split.split(split.parse(RAW_PROFILE.splitlines(True)))
        self.assertEqual(total, 20)
        self.assertEqual(dict(categories), {"reactor dispatch": 5, "sockssuite/relay.py": 7, "logging": 4,
                                            "socket.py": 4})
        self.assertEqual(lines["sockssuite/relay.py:206 _send"], 7)

    def test_command_line(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(RAW_PROFILE)
        path = f.name
        self.addCleanup(os.remove, path)
        out = subprocess.run([sys.executable, os.path.join(BENCH, "profile_split.py"), path, "--top", "2"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        self.assertIn("20 samples", out)
        self.assertIn(" 35.0%  sockssuite/relay.py", out)
        self.assertIn("innermost lines, top 2:", out)
