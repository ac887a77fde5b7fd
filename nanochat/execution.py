"""
Run untrusted Python (the model's tool calls, HumanEval completions) in an OS sandbox.

    result = execute_code("print(6 * 7)")   # ExecutionResult(success=True, stdout="42\\n", ...)
    print(describe_sandbox())               # which isolation is active, one line

Isolation is the kernel's job (bubblewrap, Debian package `bubblewrap`). Each call starts
`bwrap` with new mount, PID, network, IPC, UTS (and cgroup) namespaces, plus a user namespace
when we are not root; inside it a fresh `python -I -S` that:
- sees a read-only /usr and the interpreter's own prefix, a private /proc (its own PID
  namespace: no parent, no host processes), a minimal /dev, and one writable size-capped tmpfs
  (/tmp, also its working directory, and /dev/shm); nothing else of the host's files exists;
- has only a loopback interface (its own network namespace);
- runs unprivileged, with no capabilities and no_new_privs: as root we start bwrap without a
  user namespace (one would map the sandbox onto host root) and the runner drops to real
  unprivileged uids of the call's own slot before reading the code; otherwise bwrap maps uid
  65534 (nobody) onto ours;
- has CPU-time, address-space, file-size, open-file and process-count limits (rlimits), and,
  where the machine allows, a cgroup of its own that bounds the memory and process count of all
  of the call's processes together (nanochat/call_limits.py: a slot per concurrent call);
- keeps today's Python-level guards as a second layer (os.system, os.remove, shutil.rmtree,
  subprocess, socket ... rebound to raise PermissionError).
The parent holds the wall-clock limit and kills bwrap's process group at the end of every call;
bwrap's init is pid 1 of the sandbox, so its death takes every process inside with it (a
setsid daemon cannot outlive the call).

Verdicts the code cannot forge. Inside the sandbox a supervisor forks the program off as its
child before it reads anything, runs it under the program's own uid (as root, the slot's two
uids differ; in a user namespace, where both are 65534, the supervisor makes itself
non-dumpable, which closes its /proc files), and alone holds the pipe of the report the
parent reads. stdout, stderr and the report are read by the parent, each with a byte cap (the
rest is drained and dropped, so a flood never grows the parent); past FLOOD_BYTES of output the
program is stopped, so a flood also ends in well under its time limit.
- A plain call (a tool call) succeeds when the program ran to its end: the child says so on its
  own pipe and exits 0. This is the program's own account: code that means to can claim it (as
  it can always catch its own exceptions); an early os._exit(0) or sys.exit() is not success.
- A graded call (HumanEval) succeeds only when the tests pass, and the tests run in the
  supervisor, which never shares an interpreter with the program: each `candidate(...)` sends
  its arguments to the child and takes back what the function returned or raised, as plain data
  (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, by exact
  type). Patching builtins, a tracer, a thread or the runner's frames all act on the child
  only, and the child never holds the tests (the supervisor reads them after the fork). An
  answer object whose __eq__ always returns True, the one hole OpenAI's harness leaves open
  (there test and answer share a process), cannot cross the pipe: only plain data does.

Without working namespaces (macOS, locked-down containers) tool calls are refused with one line
saying why, unless NANOCHAT_UNSAFE_SANDBOX=1 opts into the same runner without bwrap, guarded
only in-process (warned once, loudly).
"""

import fcntl
import functools
import os
import platform
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from nanochat import call_limits
from nanochat.call_limits import CallSlot

TRUNCATED = "\n[output truncated]"
PIPE_BYTES = 1 << 20  # each output pipe's size: a flooding program costs the parent 16x fewer reads than at 64 KiB
FLOOD_BYTES = 8 << 20  # stdout + stderr past this stops the program: draining a 400 MB flood took > 1.5 s under load
UNSAFE_ENV = "NANOCHAT_UNSAFE_SANDBOX"
SANDBOX_UID = 65534                 # nobody: the uid bwrap maps ours onto in a user namespace
CALL_OVERHEAD_BYTES = 64 * 1024 ** 2  # a call's budget beyond the program's memory and tmpfs: supervisor, bwrap
REPORT_CAP = 4096                   # bytes of the supervisor's report read by the parent
REPLY_CAP = 1 << 20                 # bytes of one graded call's reply read by the supervisor

# runs inside the sandbox: argv holds the parameters (key=value); stdin the program, then (when it is graded)
# the tests. This process, the supervisor, forks the program off as a child before it reads either, so the
# child never holds the tests, and only the supervisor holds the report fd. The child runs the program and
# tells the supervisor how it ended on its own pipe; graded, it then serves calls of the graded function.
# The supervisor runs the tests itself, calling the child through a pipe with plain data only, and writes
# the verdict. In the child, the guards of the second layer are applied before the program runs.
_RUNNER = r"""
import os, sys
cfg = {k: int(v) if v.isdigit() else v for k, v in (a.split("=", 1) for a in sys.argv[1:])}  # no json: 6 ms of imports
report_fd, entry = cfg["report_fd"], cfg["entry"] or None
write, exit_now = os.write, os._exit

def encode(x):  # plain data only, by exact type: a subclass (say, one whose __eq__ is always True) is refused
    t = type(x)
    if x is None or t in (bool, int, str):
        return x
    if t is float:
        return {"n": repr(x)} if x != x or x in (float("inf"), float("-inf")) else x
    if t in (list, tuple, set, frozenset):
        return {{list: "l", tuple: "t", set: "s", frozenset: "f"}[t]: [encode(v) for v in x]}
    if t is dict:
        return {"d": [[encode(k), encode(v)] for k, v in x.items()]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    raise TypeError(f"a {t.__name__} cannot leave the sandbox (plain data only)")

def decode(x):
    if type(x) is not dict:
        return x
    (tag, v), = x.items()
    if tag == "n":
        return float(v)
    if tag == "d":
        return {decode(k): decode(w) for k, w in v}
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "c":
        return complex(*v)
    return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](decode(w) for w in v)

def error_line(e):
    return f"error {type(e).__name__}: {e}".splitlines()[0] if str(e) else f"error {type(e).__name__}"

code_r, code_w = os.pipe()      # supervisor -> child: the program
status_r, status_w = os.pipe()  # child -> supervisor: "ready", "ok", "memory" or "error <line>"
call_r, call_w = os.pipe()      # supervisor -> child: calls of the graded function
reply_r, reply_w = os.pipe()    # child -> supervisor: what they returned or raised
child = os.fork()
if child == 0:
    keep = {1, 2, code_r, status_w} | ({call_r, reply_w} if entry else set())
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    if cfg["program_uid"]:               # root without a user namespace: become the call's program uid for real
        os.setgroups([])
        os.setresgid(cfg["program_uid"], cfg["program_uid"], cfg["program_uid"])
        os.setresuid(cfg["program_uid"], cfg["program_uid"], cfg["program_uid"])
    chunks = []
    while True:
        chunk = os.read(code_r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(code_r)
    code = b"".join(chunks).decode("utf-8", errors="replace")
    import builtins, resource, _signal   # _signal: signal's enums would cost 3 ms of imports
    mem = cfg["max_memory"]
    for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, cfg["max_file"]),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, cfg["max_procs"])):
        resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1))
    _signal.alarm(cfg["cpu_seconds"] + 1)    # a backstop should the parent die

    def disabled(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return refuse
    for name in ("system", "popen", "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
                 "truncate", "ftruncate", "kill", "killpg", "fork", "forkpty", "chmod", "fchmod", "chown", "fchown",
                 "lchown", "chroot", "setuid", "seteuid", "setgid", "link", "symlink",
                 "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                 "startfile", "plock", "abort"):
        if hasattr(os, name):
            setattr(os, name, disabled("os." + name))

    def guard_shutil(shutil):
        for name in ("rmtree", "move", "chown", "copytree", "copyfile", "copy", "copy2"):
            setattr(shutil, name, disabled("shutil." + name))

    def guard_subprocess(subprocess):
        for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
            setattr(subprocess, name, disabled("subprocess." + name))

    def guard_socket(socket):
        class NoSocket(socket.socket):       # a class, so that modules subclassing socket still import
            def __init__(self, *args, **kwargs):
                raise PermissionError("socket.socket is disabled in the sandbox")
        socket.socket = NoSocket
        for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
            setattr(socket, name, disabled("socket." + name))

    # these three are guarded when first imported (by the program or by the standard library), not
    # imported up front: that would cost every call 8 ms
    guards = {"shutil": guard_shutil, "subprocess": guard_subprocess, "socket": guard_socket}

    class Guarded:
        def __init__(self, loader, guard):
            self.loader, self.guard = loader, guard

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            self.loader.exec_module(module)
            self.guard(module)

    class GuardFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name not in guards:
                return None
            for finder in sys.meta_path:
                if finder is not GuardFinder and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        spec.loader = Guarded(spec.loader, guards[name])
                        return spec
            return None
    sys.meta_path.insert(0, GuardFinder)
    for name, guard in guards.items():       # already imported (none is, today): guard now
        if name in sys.modules:
            guard(sys.modules[name])

    def finish(status, code):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            write(status_w, status[:2000].encode("utf-8", errors="replace") + b"\n")
        except OSError:                  # the supervisor has its verdict and is gone
            pass
        exit_now(code)

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(code, "<code>", "exec"), namespace)
    except MemoryError:
        finish("memory", 1)
    except SystemExit as e:              # even sys.exit(0): the code did not run to its end
        finish(f"error SystemExit: {e.code} (the program exited before its end)", 1)
    except BaseException as e:
        try:
            import traceback
            sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))
            finish(error_line(e), 1)
        except MemoryError:
            finish("memory", 1)
    if entry is None:
        finish("ok", 0)
    if not callable(namespace.get(entry)):
        finish(f"error NameError: the program defines no function {entry}", 1)
    write(status_w, b"ready\n")
    import json
    calls = os.fdopen(call_r, "rb")
    for line in calls:
        try:
            args, kwargs = decode(json.loads(line))
            reply = {"v": encode(namespace[entry](*args, **kwargs))}
        except MemoryError:
            finish("memory", 1)
        except BaseException as e:
            reply = {"x": [type(e).__name__, str(e)[:500]]}
        try:
            write(reply_w, json.dumps(reply).encode() + b"\n")
        except OSError:                  # the supervisor has its verdict and is gone
            exit_now(0)
    finish("ok", 0)

for fd in (code_r, status_w, call_r, reply_w):
    os.close(fd)
if cfg["supervisor_uid"]:            # a uid of its own: the program cannot signal, trace or read it
    os.setgroups([])
    os.setresgid(cfg["supervisor_uid"], cfg["supervisor_uid"], cfg["supervisor_uid"])
    os.setresuid(cfg["supervisor_uid"], cfg["supervisor_uid"], cfg["supervisor_uid"])
else:                                # the program's uid (a user namespace): not dumpable, so its /proc
    try:                             # files (fds, memory) are closed to the program
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE 0
    except Exception:
        pass
import resource, _signal
resource.setrlimit(resource.RLIMIT_AS, (cfg["max_memory"], cfg["max_memory"]))
resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1))
_signal.alarm(cfg["cpu_seconds"] + 1)

def verdict(report):
    write(report_fd, report[:2000].encode("utf-8", errors="replace"))
    exit_now(0)

def read_exactly(n):
    data = bytearray()
    while len(data) < n:
        chunk = os.read(0, min(1 << 16, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)

program = read_exactly(cfg["code_bytes"])
try:
    view = memoryview(program)
    while view:
        view = view[os.write(code_w, view[:1 << 16]):]
except OSError:                      # the child is gone: its status says why
    pass
os.close(code_w)
del program, view

def read_line(fd, cap=4096):
    # one status line (without its newline), b"" at the end of the pipe; bytes past cap are dropped
    line = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return bytes(line[:cap])
        line += byte

def ended(seen=b""):
    # how the child ended: its last status line (the pipe drained to its end, so a flood cannot
    # block it) and its exit status
    tail = seen
    while True:
        chunk = os.read(status_r, 1 << 16)
        if not chunk:
            break
        tail = (tail + chunk)[-(1 << 14):]
    _, wstatus = os.waitpid(child, 0)
    if os.WIFSIGNALED(wstatus):
        return f"signal {os.WTERMSIG(wstatus)}"
    lines = tail.decode("utf-8", errors="replace").splitlines()
    last = lines[-1] if lines else ""
    if last == "ok" and os.WEXITSTATUS(wstatus) == 0:
        return "ok"
    if last == "memory" or last.startswith("error "):
        return last
    return f"exit {os.WEXITSTATUS(wstatus)}"

if entry is None:
    verdict(ended())
tests = read_exactly(1 << 24).decode("utf-8")
first = read_line(status_r)
if first != b"ready":                # the program ended before the tests could start: never a pass
    how = ended(first + b"\n")
    verdict("exit 0" if how == "ok" else how)
replies = os.fdopen(reply_r, "rb")
import builtins, json

def candidate(*args, **kwargs):
    write(call_w, json.dumps(encode([list(args), kwargs])).encode() + b"\n")
    line = replies.readline(cfg["reply_cap"])
    if not line.endswith(b"\n"):
        raise RuntimeError("the program ended or replied too much during the tests")
    reply = json.loads(line)
    if "x" in reply:
        name, message = reply["x"]
        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(message)
        raise RuntimeError(f"{name}: {message}")
    return decode(reply["v"])

try:
    exec(compile(tests, "<tests>", "exec"), {"__name__": "__tests__", "candidate": candidate})
except BaseException as e:
    verdict(error_line(e))
verdict("ok")
"""


# seccomp (second kernel layer): calls that would hand the code a new user namespace (where it
# could mount unbounded tmpfs), or reach parts of the kernel no tool call needs, fail with EPERM.
_SYSCALLS = {  # name: (x86_64, aarch64)
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "ptrace": (101, 117), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsmount": (432, 432),
    "kexec_load": (246, 104), "init_module": (175, 105), "finit_module": (313, 273),
}
_ARCHES = {"x86_64": (0, 0xC000003E, 56, 435), "aarch64": (1, 0xC00000B7, 220, 435)}  # column, AUDIT_ARCH, clone, clone3
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


@functools.lru_cache(maxsize=1)
def _seccomp_filter():
    """A classic-BPF seccomp program (bytes for `bwrap --seccomp FD`), or None on other machines."""
    if platform.machine() not in _ARCHES:
        return None
    column, audit_arch, clone, clone3 = _ARCHES[platform.machine()]
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if column == 0:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # the x32 ABI's numbers alias the blocked calls
    for numbers in _SYSCALLS.values():
        prog += [(jeq, 0, 1, numbers[column]), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys),  # its flags are in memory: glibc falls back to clone
             (jeq, 0, 3, clone), (ld, 0, 0, 16), (jset, 0, 1, _CLONE_NAMESPACES), (ret, 0, 0, eperm),
             (ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


@dataclass
class ExecutionResult:
    success: bool
    stdout: str = ""
    stderr: str = ""
    error: str = ""              # "" on success, else a one-line reason
    timeout: bool = False
    memory_exceeded: bool = False


def _interpreter():
    """(the real interpreter binary, its prefix): the sandbox runs the base interpreter with -S,
    so a virtualenv's site-packages are neither needed nor visible."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _bwrap_command(max_tmp_bytes):
    """The bwrap argv prefix, and whether we are root (then the runner drops to its uids itself;
    otherwise bwrap maps 65534 onto our uid)."""
    binary, prefix = _interpreter()
    root = os.geteuid() == 0
    cmd = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--clearenv"]
    if root:  # keep only what the runner needs to drop to nobody
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        parts = prefix.strip("/").split("/")
        for i in range(1, len(parts)):  # the mount point's parents, traversable by nobody
            cmd += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(max_tmp_bytes), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(max_tmp_bytes), "--tmpfs", "/dev/shm",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
            "--setenv", "TMPDIR", "/tmp", "--setenv", "OMP_NUM_THREADS", "1", "--chdir", "/tmp"]
    return cmd, root


@functools.lru_cache(maxsize=1)
def sandbox_mode():
    """("bwrap" | "unsafe" | "unavailable", reason). Probed once: bwrap must really start a sandbox."""
    if shutil.which("bwrap") is None:
        reason = "bubblewrap (bwrap) is not installed"
    else:
        result = _execute("print(1)", "bwrap", timeout=20.0, max_memory_bytes=256 * 1024 ** 2, max_output_bytes=4096,
                          max_file_bytes=1024 ** 2, max_tmp_bytes=1024 ** 2, max_procs=16)
        if result.success and result.stdout == "1\n":
            return "bwrap", "bubblewrap namespaces"
        reason = "bwrap cannot create namespaces here: " + (result.stderr.strip().splitlines() or [result.error])[-1]
    if os.environ.get(UNSAFE_ENV) == "1":
        return "unsafe", reason
    return "unavailable", reason


def describe_sandbox():
    """One line for the scripts to print at start."""
    mode, reason = sandbox_mode()
    if mode == "bwrap":
        return ("sandbox: bubblewrap (own mount/pid/net/ipc/uts namespaces, unprivileged uid, read-only host); "
                + call_limits.describe())
    if mode == "unsafe":
        return (f"sandbox: WARNING: {UNSAFE_ENV}=1, python tool code runs with in-process guards only, "
                f"which determined code can undo ({reason})")
    return refusal_line()


def refusal_line():
    return (f"sandbox: unavailable, python tool calls are refused ({sandbox_mode()[1]}); "
            f"install bubblewrap (apt-get install bubblewrap) where user namespaces are allowed, or set "
            f"{UNSAFE_ENV}=1 to accept weaker in-process guards")


@functools.lru_cache(maxsize=1)
def _warn_unsafe_once():
    print("=" * 80 + "\n" + describe_sandbox() + "\n" + "=" * 80, file=sys.stderr, flush=True)


def execute_code(code, timeout=5.0, max_memory_bytes=256 * 1024 ** 2, max_output_bytes=16 * 1024,
                 max_file_bytes=1024 ** 2, max_tmp_bytes=16 * 1024 ** 2, max_procs=32, tests=None, entry_point=None):
    """Run `code` in the sandbox; see the module docstring. Never raises for anything the code
    does; returns an ExecutionResult (an error result when no sandbox is available).
    Graded (tests and entry_point given): success means `tests`, Python that calls `candidate`,
    ran to its end in the supervisor, where candidate(...) calls entry_point in the program."""
    if not isinstance(code, str):
        raise ValueError(f"execute_code: code must be a str, got {type(code).__name__}")
    if (tests is None) != (entry_point is None):
        raise ValueError("execute_code: give tests and entry_point together (grading) or neither")
    mode, _ = sandbox_mode()
    if mode == "unavailable":
        return ExecutionResult(False, error=refusal_line())
    if mode == "unsafe":
        _warn_unsafe_once()
    return _execute(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs,
                    tests, entry_point)


def _execute(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs,
             tests=None, entry=None):
    if mode == "bwrap":
        # the call's own slot: its uids (as root) and, where the machine allows, a cgroup that bounds
        # the memory (tmpfs included) and process count of all its processes together
        budget = max_memory_bytes + 2 * max_tmp_bytes + CALL_OVERHEAD_BYTES
        with CallSlot(budget, max_procs + 4) as slot:  # + bwrap's two, its shell and the supervisor
            return _run(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes,
                        max_procs, tests, entry, slot)
    return _run(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs,
                tests, entry, None)


def _run(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs, tests,
         entry, slot):
    binary, _ = _interpreter()
    report_r, report_w = os.pipe()
    workdir, child_fds = None, [report_w]
    if mode == "bwrap":
        prefix, root = _bwrap_command(max_tmp_bytes)
        prefix = slot.launcher + prefix
        drop = list(slot.uids) if root else None
        cwd, env = "/", {}
        if _seccomp_filter() is not None:
            seccomp_r, seccomp_w = os.pipe()
            os.write(seccomp_w, _seccomp_filter())
            os.close(seccomp_w)
            child_fds.append(seccomp_r)
            prefix += ["--seccomp", str(seccomp_r)]
    else:  # in-process guards only: a scratch directory and a minimal environment
        prefix, drop = [], None
        workdir = cwd = tempfile.mkdtemp(prefix="nanochat_exec_")
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "HOME": workdir, "TMPDIR": workdir}
    program = code.encode("utf-8", errors="replace")
    cfg = dict(max_memory=max_memory_bytes, max_file=max_file_bytes, max_procs=max_procs,
               program_uid=drop[0] if drop else 0, supervisor_uid=drop[1] if drop else 0,
               cpu_seconds=max(1, int(timeout) + 1), report_fd=report_w, entry=entry or "", code_bytes=len(program),
               reply_cap=REPLY_CAP)
    argv = prefix + [binary, "-I", "-S", "-c", _RUNNER] + [f"{k}={v}" for k, v in cfg.items()]
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=child_fds,
                                start_new_session=True)  # its own process group: we can kill all of it
    except OSError as e:
        proc = None
        error = f"could not start the sandbox: {e}"
    finally:
        for fd in child_fds:
            os.close(fd)
    if proc is None:
        os.close(report_r)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        return ExecutionResult(False, error=error)
    data = program + (tests.encode("utf-8", errors="replace") if tests is not None else b"")
    try:
        outputs, timed_out, flooded = _communicate(proc, data, report_r, timeout, {
            "stdout": max_output_bytes, "stderr": max_output_bytes, "report": REPORT_CAP})
    finally:
        _kill_group(proc)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    stdout, stderr = (_text(*outputs[name]) for name in ("stdout", "stderr"))
    if flooded:
        return ExecutionResult(False, stdout, stderr, error=f"the program wrote more than {FLOOD_BYTES >> 20} MiB "
                                                            f"of output and was stopped")
    if timed_out:
        return ExecutionResult(False, stdout, stderr, error=f"timed out after {timeout:g} s", timeout=True)
    result = _verdict(outputs["report"][0].decode("utf-8", errors="replace"), proc.returncode, stdout, stderr)
    if not result.success and slot is not None and slot.out_of_memory():  # the kernel's account, not the program's
        return ExecutionResult(False, stdout, stderr, memory_exceeded=True,
                               error="MemoryError: the call's processes together exceeded its memory budget")
    return result


def _verdict(report, status, stdout, stderr):
    """The result the supervisor's report (see _RUNNER) and its exit status give."""
    if status == 0 and report == "ok":
        return ExecutionResult(True, stdout, stderr)
    if status == 0 and report == "memory":
        return ExecutionResult(False, stdout, stderr, error="MemoryError: the code exceeded the memory limit",
                               memory_exceeded=True)
    if status == 0 and report.startswith("error "):
        return ExecutionResult(False, stdout, stderr, error=report[len("error "):])
    if status == 0 and report.startswith("signal "):
        number = int(report.split()[1])
        if number in (signal.SIGXCPU, signal.SIGALRM):
            return ExecutionResult(False, stdout, stderr, error=f"killed by signal {number} (time limit)", timeout=True)
        return ExecutionResult(False, stdout, stderr, error=f"the program was killed by signal {number}")
    if status == 0 and report.startswith("exit "):
        return ExecutionResult(False, stdout, stderr, error=f"the program ended early (exit code {report.split()[1]}) "
                                                            f"without finishing its code")
    if status in (-signal.SIGXCPU, -signal.SIGALRM, -signal.SIGKILL):
        return ExecutionResult(False, stdout, stderr, error=f"killed by signal {-status} (time limit)", timeout=True)
    return ExecutionResult(False, stdout, stderr, error=f"the sandbox ended without a verdict (exit code {status})")


def _text(data, total):
    text = data.decode("utf-8", errors="replace")
    return text + TRUNCATED if total > len(data) else text


def _communicate(proc, data, report_fd, timeout, caps):
    """Feed stdin, read stdout/stderr/report until they close or the deadline passes, keeping at
    most caps[name] bytes of each (the rest is read and dropped), and stop reading once stdout and stderr
    together pass FLOOD_BYTES. Returns ({name: (bytes, total)}, timed_out, flooded)."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    fds = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", report_fd: "report"}
    kept = {name: bytearray() for name in fds.values()}
    totals = dict.fromkeys(fds.values(), 0)
    for fd in fds:
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        sel.register(fd, selectors.EVENT_READ)
    stdin, view = proc.stdin.fileno(), memoryview(data)
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_WRITE)
    timed_out = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                fd = key.fd
                if fd == stdin:
                    try:
                        view = view[os.write(fd, view[:1 << 16]):]
                    except (BrokenPipeError, OSError):
                        view = view[:0]
                    if not len(view):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, PIPE_BYTES)
                except BlockingIOError:
                    continue
                name = fds[fd]
                if not chunk:
                    sel.unregister(fd)
                    continue
                room = caps[name] - len(kept[name])
                if room > 0:
                    kept[name] += chunk[:room]
                totals[name] += len(chunk)
            if totals["stdout"] + totals["stderr"] > FLOOD_BYTES:
                break
        flooded = totals["stdout"] + totals["stderr"] > FLOOD_BYTES
        if not timed_out and not flooded:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.001))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
        os.close(report_fd)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    return {name: (bytes(kept[name]), totals[name]) for name in kept}, timed_out, flooded


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
