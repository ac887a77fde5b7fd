"""
Run untrusted Python (the model's tool calls, HumanEval completions) in a separate process.

    result = execute_code("print(6 * 7)")   # ExecutionResult(success=True, stdout="42\\n", ...)

The code runs in a fresh interpreter (`python -I`, its own session and empty temporary
working directory, a minimal environment, stdin empty) that, before running it:
- caps its address space (RLIMIT_AS: memory), CPU seconds, file size, and forbids new
  processes (RLIMIT_NPROC = 0, ignored for root, so fork & co. are also disabled below);
- replaces destructive or escaping functions with ones that raise PermissionError: os.system,
  os.remove/unlink/rmdir/rename/..., os.kill, os.fork, os.exec*/spawn*, shutil.rmtree/move,
  subprocess.*, and the socket module's constructors (no network);
- captures stdout/stderr in memory, each capped at max_output_bytes (the rest is dropped and
  marked), and reports back over its own stdout as JSON.
The parent kills the whole process group at the wall-clock timeout. So bad code gets an
error result, never a hung or damaged host.

This is a guard against accidents, not a security boundary (the same holds for nanochat's
and OpenAI's HumanEval sandboxes): determined code can undo the patches through ctypes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

TRUNCATED = "\n[output truncated]"

# runs in the child; the parameters arrive as argv[1] (JSON), the code on stdin
_RUNNER = r'''
import builtins, io, json, os, resource, signal, sys, traceback
cfg = json.loads(sys.argv[1])
code = sys.stdin.read()
sys.stdin = io.StringIO("")
out_fd = os.dup(1)                       # the JSON report goes here; fd 1 and 2 go to /dev/null
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)

class Capped(io.TextIOBase):
    def __init__(self, limit):
        self.parts, self.size, self.limit, self.truncated = [], 0, limit, False
    def writable(self):
        return True
    def write(self, s):
        s = str(s)
        room = self.limit - self.size
        if len(s) > room:
            s, self.truncated = s[:max(room, 0)], True
        self.parts.append(s)
        self.size += len(s)
        return len(s)
    def value(self):
        return "".join(self.parts) + (cfg["truncated"] if self.truncated else "")

stdout, stderr = Capped(cfg["max_output"]), Capped(cfg["max_output"])
mem = cfg["max_memory"]
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["max_file"], cfg["max_file"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
signal.alarm(cfg["cpu_seconds"] + 1)     # a backstop should the parent die

import shutil, socket, subprocess
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

report = dict(error="", memory_exceeded=False)
sys.stdout, sys.stderr = stdout, stderr
try:
    exec(compile(code, "<code>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except MemoryError:
    report.update(error="MemoryError: the code exceeded the memory limit", memory_exceeded=True)
except SystemExit as e:
    if e.code not in (None, 0):
        report["error"] = f"SystemExit: {e.code}"
except BaseException as e:
    stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))  # minus our frame
    report["error"] = f"{type(e).__name__}: {e}"
sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
report.update(stdout=stdout.value(), stderr=stderr.value())
os.write(out_fd, json.dumps(report).encode())
os._exit(0)
'''


@dataclass
class ExecutionResult:
    success: bool
    stdout: str = ""
    stderr: str = ""
    error: str = ""              # "" on success, else a one-line reason
    timeout: bool = False
    memory_exceeded: bool = False


def execute_code(code, timeout=5.0, max_memory_bytes=256 * 1024 ** 2, max_output_bytes=16 * 1024,
                 max_file_bytes=1024 ** 2):
    """Run `code` in a sandboxed child process; see the module docstring. Never raises for
    anything the code does; returns an ExecutionResult."""
    if not isinstance(code, str):
        raise ValueError(f"execute_code: code must be a str, got {type(code).__name__}")
    cfg = dict(max_output=max_output_bytes, max_memory=max_memory_bytes, max_file=max_file_bytes,
               cpu_seconds=max(1, int(timeout) + 1), truncated=TRUNCATED)
    workdir = tempfile.mkdtemp(prefix="nanochat_exec_")
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "HOME": workdir, "TMPDIR": workdir}
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER, json.dumps(cfg)], cwd=workdir, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: we can kill all of it
        try:
            raw, _ = proc.communicate(code.encode("utf-8", errors="replace"), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return ExecutionResult(False, error=f"timed out after {timeout:g} s", timeout=True)
        finally:
            _kill_group(proc)  # anything it left behind in its group
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        report = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGALRM, -signal.SIGKILL):
            return ExecutionResult(False, error=f"killed by signal {-proc.returncode} (time limit)", timeout=True)
        return ExecutionResult(False, error=f"the process died (exit code {proc.returncode}) without a report")
    cap = max_output_bytes + len(TRUNCATED)
    return ExecutionResult(success=not report["error"], stdout=report["stdout"][:cap], stderr=report["stderr"][:cap],
                           error=report["error"], memory_exceeded=report["memory_exceeded"])


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
