"""Running untrusted programs (HumanEval completions) so that they cannot forge a verdict or
reach anything outside their own throwaway directory.

Three processes per program, and the verdict never leaves trusted code:

1. the evaluator (the `eval` command) starts one trusted **checker** per problem
   (`python -I` on this file, `--checker`), with the problem and its completions on stdin,
   and reads one JSON verdict per completion from the checker's stdout;
2. the checker runs the problem's prompt and test program (the dataset's `check(candidate)`)
   in its own interpreter, where `candidate` is a proxy: each call sends `repr()` of its
   arguments to the sandbox and reads back the answer with `ast.literal_eval`, so the test's
   assertions compare plain values computed by the candidate, in the checker;
3. the **sandbox**: a fresh `python -I -S` in its own session, with resource limits (address
   space, CPU seconds, processes, file size, no core files), that executes prompt + completion
   and serves the calls (`sandbox_child.py`).

Isolation (`isolation()`, detected at run time by running a probe program):
- `namespaces` (the caller is root): `unshare --net --pid --mount --fork`; the program runs
  chrooted in a minimal read-only root with a size-limited tmpfs at `/tmp` (its only writable
  place, gone with it), a new PID namespace (it sees only its own processes) and an empty
  network namespace (loopback down: no connection anywhere), as a fresh unprivileged uid with
  no-new-privileges;
- `userns` (not root, unprivileged user namespaces allowed): the same inside
  `unshare --user --map-root-user`, dropping to uid 1000 of a nested user namespace;
- `none`: a plain subprocess with the resource limits in a temporary directory: it can read
  and write what the user can and reach the network. Results then say `isolation: none`.

The whole process group (and in the namespace modes the whole PID namespace) is killed with
SIGKILL at the deadline; signal handlers the program installs do not matter.

Standard library only: the checker runs this file as a script.
"""
from __future__ import annotations

import ast
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

CHILD_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
MODES = ("namespaces", "userns", "none")
PROBE = '''import os, socket
def probe(outside):
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1).close()
        net = "connected"
    except OSError as exc:
        net = type(exc).__name__
    try:
        open(os.path.join(outside, "written"), "w").close()
        writable = True
    except OSError:
        writable = False
    return (os.getuid(), net, writable, sorted(os.listdir("/")))
'''


@dataclass(frozen=True)
class Limits:
    """What one program may use."""

    timeout: float = 5.0
    """wall seconds for all calls of one program, after it has loaded."""
    load_timeout: float = 10.0
    """wall seconds to start the sandbox and run the program's module code."""
    memory_mb: int = 1024
    """address space (RLIMIT_AS)."""
    cpu_seconds: int = 20
    """CPU time (RLIMIT_CPU)."""
    processes: int = 16
    """processes and threads of the sandbox's user (RLIMIT_NPROC)."""
    file_mb: int = 16
    """largest file it may write (RLIMIT_FSIZE)."""
    tmp_mb: int = 32
    """size of its writable /tmp (namespace modes)."""
    output_kb: int = 64
    """stdout/stderr kept for the report."""
    message_mb: int = 16
    """largest answer accepted from it."""


@dataclass(frozen=True)
class Isolation:
    """How programs are isolated here: `mode` (one of MODES) and why."""

    mode: str
    detail: str

    @property
    def isolated(self) -> bool:
        return self.mode != "none"


class SandboxFailure(Exception):
    """The sandboxed program died, timed out or sent something that is not an answer."""

    ended = ""
    """how the sandbox ended, when it was closed on the way ('exit N' / 'signal N')."""


class CandidateRaised(Exception):
    """The candidate function raised; the message is its exception's type and text."""


# ---------------------------------------------------------------------------------- frames
def _send(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv(fd: int, deadline: float, limit: int) -> str:
    def read(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SandboxFailure("timed out")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise SandboxFailure("exited")
            buf += chunk
        return buf

    (n,) = struct.unpack(">I", read(4))
    if n > limit:
        raise SandboxFailure(f"answer of {n} bytes exceeds the {limit}-byte limit")
    return read(n).decode("utf-8", "replace")


def _parse_answer(text: str) -> tuple[str, object]:
    """`(tag, value)` from an answer frame; anything else is a SandboxFailure."""
    try:
        answer = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise SandboxFailure(f"answer is not a literal ({type(exc).__name__})") from None
    if not (isinstance(answer, tuple) and len(answer) == 2 and answer[0] in ("ok", "raise", "ready", "load_error")):
        raise SandboxFailure("answer is not a (tag, value) pair")
    return answer


# ---------------------------------------------------------------------------------- the sandbox
def _tasks_of(uid: int) -> int:
    """Processes and threads of `uid` now (RLIMIT_NPROC counts them all)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return n


def _live_pids(uid: int) -> list[int]:
    """Processes of `uid` that have not exited (zombies excluded: they hold nothing)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(pid))
        except (OSError, IndexError):
            continue
    return out


def _root_layout() -> tuple[list[str], list[str], dict[str, str]]:
    """(directories to bind read-only, installed-package directories to hide, top-level links)."""
    prefix = os.path.realpath(sys.base_prefix)
    binds, links = [prefix], {}
    for top in ("/usr", "/lib", "/lib64", "/bin", "/lib32", "/libx32"):
        if os.path.islink(top):
            links[top] = os.readlink(top)
        elif os.path.isdir(top) and not prefix.startswith(top + "/"):
            binds.append(top)
    base = {"base": prefix, "platbase": prefix, "installed_base": prefix, "installed_platbase": prefix}
    hide = {os.path.realpath(sysconfig.get_paths(vars=base)[k]) for k in ("purelib", "platlib")}
    for b in binds:
        for sub in ("lib/python3/dist-packages", f"local/lib/python{sys.version_info[0]}.{sys.version_info[1]}"):
            hide.add(os.path.join(b, sub))
    hide = sorted(h for h in hide if os.path.isdir(h) and any(h.startswith(b + "/") for b in binds))
    return sorted(binds), hide, links


class Sandbox:
    """One sandboxed interpreter serving calls of one program's function.

    `Sandbox(program, entry_point, limits, mode)` starts it and waits for the program to load;
    `call(*args)` returns the function's result (a plain value) or raises CandidateRaised /
    SandboxFailure; `close()` kills its whole process group (and PID namespace).
    """

    def __init__(self, program: str, entry_point: str, limits: Limits, mode: str):
        self.limits, self.mode = limits, mode
        self.output = bytearray()
        self.tmp = tempfile.mkdtemp(prefix="pangu_sandbox_")
        call_r, self.call_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        uid = 100_000 + int.from_bytes(os.urandom(4), "big") % 800_000  # a uid no one else uses
        real_uid = os.getuid()
        self.uid = uid if mode == "namespaces" else real_uid
        work_cfg = {"call_fd": call_r, "reply_fd": reply_w, "memory_mb": limits.memory_mb,
                    "cpu_seconds": limits.cpu_seconds, "file_mb": limits.file_mb,
                    "nproc": limits.processes + (0 if mode == "namespaces" else _tasks_of(real_uid))}
        with open(CHILD_SOURCE, encoding="utf-8") as f:
            source = f.read()
        python = os.path.realpath(sys.executable)
        if mode == "none":
            argv = [python, "-I", "-S", "-c", source, "work", json.dumps(work_cfg)]
        else:
            binds, hide, links = _root_layout()
            boot_cfg = {"root": os.path.join(self.tmp, "root"), "binds": binds, "hide": hide, "links": links,
                        "tmp_mb": limits.tmp_mb, "python": python, "source": source, "uid": uid,
                        "drop": "setuid" if mode == "namespaces" else "userns"}
            os.makedirs(boot_cfg["root"])
            user = [] if mode == "namespaces" else ["--user", "--map-root-user"]
            argv = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", *user, "--net", "--pid", "--mount", "--fork",
                    "--kill-child=SIGKILL", "--", python, "-I", "-S", "-c", source, "boot", json.dumps(boot_cfg),
                    json.dumps(work_cfg)]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, pass_fds=(call_r, reply_w), cwd=self.tmp,
                                         start_new_session=True, env=_clean_env())
        finally:
            os.close(call_r)
            os.close(reply_w)
        self._drain = threading.Thread(target=self._collect, daemon=True)
        self._drain.start()
        self.deadline = time.monotonic() + limits.load_timeout
        try:
            _send(self.call_w, json.dumps({"program": program, "entry_point": entry_point}))
            tag, value = self._answer()
            if tag == "load_error":
                raise SandboxFailure(f"the program failed to load: {value}")
            if tag != "ready":
                raise SandboxFailure(f"unexpected {tag!r} before the program loaded")
        except (SandboxFailure, OSError) as exc:
            failure = SandboxFailure(f"{exc}" if not isinstance(exc, OSError) else "exited")
            failure.ended = self.close()
            raise failure from None
        self.deadline = time.monotonic() + limits.timeout

    def _collect(self) -> None:
        cap = self.limits.output_kb << 10
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            if len(self.output) < cap:
                self.output += chunk[: cap - len(self.output)]

    def _answer(self) -> tuple[str, object]:
        return _parse_answer(_recv(self.reply_r, self.deadline, self.limits.message_mb << 20))

    def call(self, *args):
        """Call the function with `args` (literals only) in the sandbox."""
        try:
            request = repr(args)
            if ast.literal_eval(request) != args:
                raise ValueError
        except (ValueError, SyntaxError):
            raise SandboxFailure(f"the test passes an argument that is not a literal: {repr(args)[:80]}") from None
        try:
            _send(self.call_w, request)
        except (BrokenPipeError, OSError):
            raise SandboxFailure("exited") from None
        tag, value = self._answer()
        if tag == "raise":
            raise CandidateRaised(str(value))
        if tag != "ok":
            raise SandboxFailure(f"unexpected {tag!r} answer to a call")
        return value

    def close(self) -> str:
        """Kill everything the program started; returns how it ended ('exit N' / 'signal N')."""
        for fd in (self.call_w, self.reply_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = self.proc.wait()
        if self.mode == "namespaces":  # the PID namespace dies with its init; wait until it is gone
            deadline = time.monotonic() + 5.0
            while (left := _live_pids(self.uid)) and time.monotonic() < deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)
        self._drain.join(timeout=5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return f"signal {-rc}" if rc < 0 else f"exit {rc}"


def _clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


# ---------------------------------------------------------------------------------- isolation
_DETECTED: dict[str, Isolation] = {}


def isolation(requested: str = "auto") -> Isolation:
    """The isolation this machine gives (`auto`: the strongest that works), found by running a
    probe program and checking what it saw. Cached per process."""
    if requested not in ("auto",) + MODES:
        raise ValueError(f"isolation {requested!r}: use auto or one of {', '.join(MODES)}")
    if requested in _DETECTED:
        return _DETECTED[requested]
    if requested == "none":
        found = Isolation("none", "requested")
    elif requested != "auto":
        found = _probe(requested)
        if found.mode != requested:
            raise RuntimeError(f"isolation {requested!r} does not work here: {found.detail}")
    else:
        found = Isolation("none", "unshare/setpriv missing or not Linux")
        if sys.platform.startswith("linux") and shutil.which("unshare") and shutil.which("setpriv"):
            found = _probe("namespaces" if os.geteuid() == 0 else "userns")
    _DETECTED[requested] = found
    return found


def _probe(mode: str) -> Isolation:
    """Run PROBE in a `mode` sandbox: it must not reach the network nor write a directory of ours."""
    outside = tempfile.mkdtemp(prefix="pangu_probe_")
    try:
        try:
            box = Sandbox(PROBE, "probe", Limits(timeout=10.0, load_timeout=20.0), mode)
        except (SandboxFailure, OSError) as exc:
            return Isolation("none", f"{mode} sandbox did not start: {exc}")
        try:
            uid, net, writable, top = box.call(outside)
        except (SandboxFailure, CandidateRaised) as exc:
            return Isolation("none", f"{mode} probe failed: {exc}")
        finally:
            box.close()
        wrote = writable or os.path.exists(os.path.join(outside, "written"))
        if net == "connected" or wrote or uid == 0:
            return Isolation("none", f"{mode} probe was not contained (uid {uid}, network {net}, wrote outside "
                                     f"{wrote}, sees {top})")
        return Isolation(mode, f"probe: uid {uid}, no network ({net}), nothing outside writable, root holds only "
                               f"{', '.join(top)}")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# ---------------------------------------------------------------------------------- the checker
def check_completion(prompt: str, test: str, entry_point: str, completion: str, limits: Limits,
                     mode: str) -> dict:
    """Verdict of one completion: {'passed', 'result', 'seconds'} (trusted: runs in the checker)."""
    t0 = time.monotonic()
    box, ended = None, ""
    try:
        box = Sandbox(prompt + completion, entry_point, limits, mode)
        checker_ns: dict = {"__name__": "__checker__"}
        # the prompt's helpers (some tests call them) and the test's check(), in trusted code
        exec(compile(prompt + "\n\n" + test, "<test>", "exec"), checker_ns)
        checker_ns[entry_point] = box.call  # a test may call the function by its name (HumanEval/33)
        checker_ns["check"](box.call)
        verdict = (True, "passed")
    except SandboxFailure as exc:
        verdict = (False, f"failed: sandbox {exc}")
        ended = exc.ended
    except CandidateRaised as exc:
        verdict = (False, f"failed: raised {exc}")
    except AssertionError as exc:
        verdict = (False, f"failed: assertion{': ' + str(exc)[:120] if str(exc) else ''}")
    except Exception as exc:  # the test raised on a wrong value (e.g. a None where it expected a float)
        verdict = (False, f"failed: test raised {type(exc).__name__}: {str(exc)[:120]}")
    ended = box.close() if box is not None else ended
    return {"passed": verdict[0], "result": verdict[1], "ended": ended,
            "seconds": round(time.monotonic() - t0, 3)}


def _checker_main() -> int:
    """`python -I sandbox.py --checker`: one problem's job on stdin, verdicts (JSON) on stdout."""
    job = json.loads(sys.stdin.read())
    if hasattr(sys, "set_int_max_str_digits"):  # big ints cross the pipe both ways
        sys.set_int_max_str_digits(0)
    limits = Limits(**job["limits"])
    out = [check_completion(job["prompt"], job["test"], job["entry_point"], c, limits, job["mode"])
           for c in job["completions"]]
    sys.stdout.write(json.dumps(out))
    return 0


def check_problem(prompt: str, test: str, entry_point: str, completions: list[str], limits: Limits,
                  mode: str) -> list[dict]:
    """Verdicts of several completions of one problem, from a fresh checker process."""
    job = {"prompt": prompt, "test": test, "entry_point": entry_point, "completions": completions,
           "limits": asdict(limits), "mode": mode}
    wall = len(completions) * (limits.timeout + limits.load_timeout + 5.0) + 10.0
    argv = [sys.executable, "-I", os.path.abspath(__file__), "--checker"]
    if shutil.which("setpriv"):
        argv = ["setpriv", "--pdeathsig", "KILL", "--"] + argv
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=_clean_env())
    try:
        out, err = proc.communicate(json.dumps(job).encode("utf-8"), timeout=wall)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return [{"passed": False, "result": "failed: checker timed out", "ended": "killed", "seconds": wall}
                for _ in completions]
    try:
        verdicts = json.loads(out)
        if len(verdicts) == len(completions):
            return verdicts
    except json.JSONDecodeError:
        pass
    reason = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return [{"passed": False, "result": f"error: checker failed ({reason[0][:200]})", "ended": "checker",
             "seconds": 0.0} for _ in completions]


if __name__ == "__main__":
    if sys.argv[1:] == ["--checker"]:
        sys.exit(_checker_main())
    sys.exit("usage: python -I sandbox.py --checker  (a problem's job as JSON on stdin)")
