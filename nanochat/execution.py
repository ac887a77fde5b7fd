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
- runs as uid/gid 65534 (nobody) with no capabilities and no_new_privs: as root we start bwrap
  without a user namespace and the runner drops to a real unprivileged uid before reading the
  code (a userns would map the sandbox onto host root); otherwise bwrap maps 65534 onto our uid;
- has CPU-time, address-space, file-size, open-file and process-count limits (rlimits);
- keeps today's Python-level guards as a second layer (os.system, os.remove, shutil.rmtree,
  subprocess, socket ... rebound to raise PermissionError).
The parent holds the wall-clock limit and kills bwrap's process group at the end of every call;
bwrap's init is pid 1 of the sandbox, so its death takes every process inside with it (a
setsid daemon cannot outlive the call).

Results the code cannot forge: stdout, stderr and a report pipe are read by the parent, each
with a byte cap (the rest is drained and dropped, so a flood never grows the parent). Success
needs exit status 0 *and* a report carrying a per-call nonce that the runner reads from its own
pipe only after the code returned; a program that exits early or writes a made-up report gets
an error. (Code that deliberately reads the runner's nonce pipe before finishing could still
claim success; it cannot touch anything outside the sandbox either way.)

Without working namespaces (macOS, locked-down containers) tool calls are refused with one line
saying why, unless NANOCHAT_UNSAFE_SANDBOX=1 opts into the same runner without bwrap, guarded
only in-process (warned once, loudly).
"""

import functools
import os
import platform
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TRUNCATED = "\n[output truncated]"
UNSAFE_ENV = "NANOCHAT_UNSAFE_SANDBOX"
SANDBOX_UID = 65534                 # nobody
REPORT_CAP = 4096                   # bytes of the runner's report read by the parent

# runs in the child: argv[1] holds the parameters (JSON), the code arrives on stdin
_RUNNER = r'''
import os, sys
cfg = __import__("json").loads(sys.argv[1])
if cfg["drop"]:                          # root without a user namespace: become nobody for real
    os.setgroups([])
    os.setresgid(cfg["drop"], cfg["drop"], cfg["drop"])
    os.setresuid(cfg["drop"], cfg["drop"], cfg["drop"])
import builtins, resource, signal
report_fd, nonce_fd = cfg["report_fd"], cfg["nonce_fd"]
chunks = []
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    chunks.append(chunk)
code = b"".join(chunks).decode("utf-8", errors="replace")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
mem = cfg["max_memory"]
for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, cfg["max_file"]), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, cfg["max_procs"])):
    resource.setrlimit(limit, (value, value))
resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1))
signal.alarm(cfg["cpu_seconds"] + 1)     # a backstop should the parent die

write, read, exit_now = os.write, os.read, os._exit   # the runner's own
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
import shutil, socket, subprocess
for name in ("rmtree", "move", "chown", "copytree", "copyfile", "copy", "copy2"):
    setattr(shutil, name, disabled("shutil." + name))
for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, name, disabled("subprocess." + name))
class NoSocket(socket.socket):           # a class, so that modules subclassing socket still import
    def __init__(self, *args, **kwargs):
        raise PermissionError("socket.socket is disabled in the sandbox")
socket.socket = NoSocket
for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, name, disabled("socket." + name))

def finish(report, status):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    write(report_fd, report[:2000].encode("utf-8", errors="replace"))
    exit_now(status)

try:
    exec(compile(code, "<code>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except MemoryError:
    finish("memory", 1)
except SystemExit as e:                  # even sys.exit(0): the code did not run to its end (HumanEval's tests)
    finish(f"error SystemExit: {e.code} (the program exited before its end)", 1)
except BaseException as e:
    try:
        import traceback
        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))  # minus our frame
        finish(f"error {type(e).__name__}: {e}".splitlines()[0] if str(e) else f"error {type(e).__name__}", 1)
    except MemoryError:
        finish("memory", 1)
finish("ok " + read(nonce_fd, 64).decode(), 0)   # the nonce is read only now that the code has returned
'''


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
    """The bwrap argv prefix and the uid the runner must drop to (None when bwrap maps it)."""
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
    return cmd, (SANDBOX_UID if root else None)


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
        return "sandbox: bubblewrap (own mount/pid/net/ipc/uts namespaces, uid 65534, read-only host, rlimits)"
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
                 max_file_bytes=1024 ** 2, max_tmp_bytes=16 * 1024 ** 2, max_procs=32):
    """Run `code` in the sandbox; see the module docstring. Never raises for anything the code
    does; returns an ExecutionResult (an error result when no sandbox is available)."""
    if not isinstance(code, str):
        raise ValueError(f"execute_code: code must be a str, got {type(code).__name__}")
    mode, _ = sandbox_mode()
    if mode == "unavailable":
        return ExecutionResult(False, error=refusal_line())
    if mode == "unsafe":
        _warn_unsafe_once()
    return _execute(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs)


def _execute(code, mode, timeout, max_memory_bytes, max_output_bytes, max_file_bytes, max_tmp_bytes, max_procs):
    binary, _ = _interpreter()
    report_r, report_w = os.pipe()
    nonce_r, nonce_w = os.pipe()
    nonce = secrets.token_hex(16)
    os.write(nonce_w, nonce.encode())
    os.close(nonce_w)
    workdir, child_fds = None, [report_w, nonce_r]
    if mode == "bwrap":
        prefix, drop = _bwrap_command(max_tmp_bytes)
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
    cfg = dict(max_memory=max_memory_bytes, max_file=max_file_bytes, max_procs=max_procs, drop=drop,
               cpu_seconds=max(1, int(timeout) + 1), report_fd=report_w, nonce_fd=nonce_r)
    import json
    argv = prefix + [binary, "-I", "-S", "-c", _RUNNER, json.dumps(cfg)]
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
    try:
        outputs, timed_out = _communicate(proc, code.encode("utf-8", errors="replace"), report_r, timeout,
                                          {"stdout": max_output_bytes, "stderr": max_output_bytes, "report": REPORT_CAP})
    finally:
        _kill_group(proc)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    stdout, stderr = (_text(*outputs[name]) for name in ("stdout", "stderr"))
    report = outputs["report"][0].decode("utf-8", errors="replace")
    if timed_out:
        return ExecutionResult(False, stdout, stderr, error=f"timed out after {timeout:g} s", timeout=True)
    status = proc.returncode
    if status == 0 and report == "ok " + nonce:
        return ExecutionResult(True, stdout, stderr)
    if report == "memory":
        return ExecutionResult(False, stdout, stderr, error="MemoryError: the code exceeded the memory limit",
                               memory_exceeded=True)
    if status == 1 and report.startswith("error "):
        return ExecutionResult(False, stdout, stderr, error=report[len("error "):])
    if status in (-signal.SIGXCPU, -signal.SIGALRM, -signal.SIGKILL):
        return ExecutionResult(False, stdout, stderr, error=f"killed by signal {-status} (time limit)", timeout=True)
    return ExecutionResult(False, stdout, stderr, error=f"the program ended early (exit code {status}) without "
                                                        f"finishing its code")


def _text(data, total):
    text = data.decode("utf-8", errors="replace")
    return text + TRUNCATED if total > len(data) else text


def _communicate(proc, data, report_fd, timeout, caps):
    """Feed stdin, read stdout/stderr/report until they close or the deadline passes, keeping at
    most caps[name] bytes of each (the rest is read and dropped). Returns ({name: (bytes, total)}, timed_out)."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    fds = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", report_fd: "report"}
    kept = {name: bytearray() for name in fds.values()}
    totals = dict.fromkeys(fds.values(), 0)
    for fd in fds:
        os.set_blocking(fd, False)
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
                    chunk = os.read(fd, 1 << 16)
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
        if not timed_out:
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
    return {name: (bytes(kept[name]), totals[name]) for name in kept}, timed_out


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
