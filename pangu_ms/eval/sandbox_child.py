"""The code that runs inside a sandbox: the bootstrap (namespace set-up) and the worker.

Standard library only, and never imported by the package: `pangu_ms.eval.sandbox` reads this
file and runs it with `python -I -S -c <this source> ROLE ARGS`, because inside the sandbox's
own root the package is not there.

- `boot` runs as root of fresh mount, PID and network namespaces (and a user namespace for a
  caller who is not root): it builds a minimal root on a tmpfs (the interpreter's prefix and
  `/usr` bind-mounted read-only, installed packages hidden, `/dev/null|zero|random|urandom`, a new
  `/proc`, a size-limited writable tmpfs at `/tmp`), makes that root read-only, `chroot`s
  into it, gives up root (a fresh unprivileged uid; for a caller without root, a nested user
  namespace mapping it to uid 1000 with no capabilities), sets no-new-privileges and execs the
  worker.
- `work` sets the resource limits, reads the program from the call pipe, executes it,
  answers `("ready", None)` and then serves calls: each request is `repr()` of an argument
  tuple, read back with `ast.literal_eval`; each answer is `repr()` of `("ok", value)` or
  `("raise", "Type: message")`. Only exact built-in literal types are sent as values. A
  hostile program can rewrite all of this, but whatever it writes is read by the checker
  with `ast.literal_eval`: it can only answer with values, never with a verdict.
"""
import ast
import ctypes
import json
import os
import resource
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
ST_FLAGS = {1024: 1024, 2048: 2048, 4096: 1 << 21}  # statvfs noatime/nodiratime/relatime -> MS_*
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
LITERALS = (int, float, complex, str, bytes, bool, type(None))
MAX_DEPTH = 64


# ------------------------------------------------------------------------------------ boot
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {dst} ({fstype}): {os.strerror(err)}")


def _locked_flags(path):
    """Mount flags of `path` that a remount inside a user namespace must keep."""
    f = os.statvfs(path).f_flag
    out = MS_NOSUID | MS_NODEV
    if f & MS_NOEXEC:
        out |= MS_NOEXEC
    for st, ms in ST_FLAGS.items():
        if f & st:
            out |= ms
    return out


def _bind(libc, src, root, *, readonly=True, device=False):
    dst = root + src
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(libc, src, dst, None, MS_BIND | MS_REC)
    if readonly:
        flags = _locked_flags(src) & ~(MS_NODEV if device else 0)
        _mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _enter_nested_userns(libc, uid):
    """As root of a user namespace: enter a nested one that maps `uid` to us (before chroot:
    the kernel refuses a new user namespace to a chrooted process)."""
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"), ("gid_map", f"{uid} {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def boot(args):
    """Set up the sandbox's root and identity, then exec the worker (see the module docstring)."""
    cfg = json.loads(args[0])
    libc = _libc()
    root = cfg["root"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in cfg["binds"]:
        _bind(libc, path, root)
    for path in cfg["hide"]:  # an empty read-only tmpfs over installed packages
        _mount(libc, "tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
    for name, target in cfg["links"].items():
        os.symlink(target, root + name)
    for dev in ("null", "zero", "random", "urandom"):
        _bind(libc, f"/dev/{dev}", root, readonly=False, device=True)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    _mount(libc, "tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['tmp_mb']}m,nr_inodes=4096,mode=1777")
    _mount(libc, None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    uid = cfg["uid"]
    if cfg["drop"] == "userns":
        uid = 1000
        _enter_nested_userns(libc, uid)
    os.chroot(root)
    os.chdir("/tmp")
    if cfg["drop"] == "setuid":
        os.setgroups([])
    # a non-zero uid loses every capability: no mount, chroot, ptrace or signal outside its uid
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-c", cfg["source"], "work", args[1]],
              {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"})


# ------------------------------------------------------------------------------------ work
def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(fd):
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    return _read_exact(fd, n).decode("utf-8")


def _send(fd, text):
    data = text.encode("utf-8", "backslashreplace")
    os.write(fd, struct.pack(">I", len(data)) + data)


def literal_repr(value, depth=0):
    """repr() of `value` if it is built only of exact literal types (subclasses refused)."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    t = type(value)
    if t in LITERALS:
        return repr(value)
    if t in (list, tuple, set, frozenset):
        items = [literal_repr(v, depth + 1) for v in value]
        if t is list:
            return "[" + ", ".join(items) + "]"
        if t is tuple:
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if not items:
            return "set()" if t is set else "frozenset()"
        return ("{" if t is set else "frozenset({") + ", ".join(items) + ("}" if t is set else "})")
    if t is dict:
        return "{" + ", ".join(f"{literal_repr(k, depth + 1)}: {literal_repr(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"returns a {t.__name__} object, not a literal value")


def _limits(cfg):
    for res, value in ((resource.RLIMIT_AS, cfg["memory_mb"] << 20), (resource.RLIMIT_CPU, cfg["cpu_seconds"]),
                       (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20), (resource.RLIMIT_NPROC, cfg["nproc"]),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))


def work(args):
    """Serve the calls of one program (see the module docstring)."""
    cfg = json.loads(args[0])
    call_fd, reply_fd = cfg["call_fd"], cfg["reply_fd"]
    _ctypes_pdeathsig()
    _limits(cfg)
    if hasattr(sys, "set_int_max_str_digits"):  # big ints must cross the pipe as the test computed them
        sys.set_int_max_str_digits(0)
    job = json.loads(_recv(call_fd))
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "<candidate>", "exec"), ns)
        fn = ns[job["entry_point"]]
        if not callable(fn):
            raise TypeError(f"{job['entry_point']} is not a function")
    except BaseException as exc:  # the program itself failed: SyntaxError, a missing name, SystemExit ...
        _send(reply_fd, repr(("load_error", f"{type(exc).__name__}: {str(exc)[:300]}")))
        return
    _send(reply_fd, repr(("ready", None)))
    while True:
        try:
            request = _recv(call_fd)
        except EOFError:
            return
        try:
            answer = ("ok", literal_repr(fn(*ast.literal_eval(request))))
        except BaseException as exc:
            answer = ("raise", f"{type(exc).__name__}: {str(exc)[:300]}")
        _send(reply_fd, f"({answer[0]!r}, {answer[1] if answer[0] == 'ok' else repr(answer[1])})")


def _ctypes_pdeathsig():
    """Die with the checker (SIGKILL when the parent goes away)."""
    try:
        _libc().prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    {"boot": boot, "work": work}[sys.argv[1]](sys.argv[2:])
