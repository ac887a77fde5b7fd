"""Hostile programs against the sandbox (nanochat/execution.py). Each runs through execute_code
and must leave the host untouched: a canary directory and file, a canary process, a TCP and a
UDP listener and an abstract unix socket on the host, the parent's secret environment, and no
process of the program left once the call returns. Each program is written so that, were its
escape to work, it would finish normally; contained, it ends in a clean error result.

Where bubblewrap cannot create namespaces, these tests skip (and tool calls are refused)."""

import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from nanochat.call_limits import UID_BASE, cgroups
from nanochat.execution import execute_code, sandbox_mode

pytestmark = pytest.mark.skipif(sandbox_mode()[0] != "bwrap",
                                reason=f"no namespace sandbox here: {sandbox_mode()[1]} (apt-get install bubblewrap)")

MARKER = f"4{secrets.randbelow(10 ** 6)}.{secrets.randbelow(10 ** 6)}"   # a daemon's `sleep` argument, to find it
SECRET = "canary-secret-" + secrets.token_hex(8)


class Host:
    """The things a program must not touch, started once for the module."""

    def __init__(self, root):
        self.dir = root / "canary"
        self.dir.mkdir()
        self.file = self.dir / "precious.txt"
        self.file.write_text("precious")
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.abstract_name = "\0nanochat-canary-" + secrets.token_hex(4)
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.abstract_name)
        self.unix.listen()
        for s in (self.tcp, self.unix):
            s.setblocking(False)
        os.environ["NANOCHAT_TEST_SECRET"] = SECRET

    def fill(self, code):
        return (code.replace("CANARY_DIR", str(self.dir)).replace("CANARY_FILE", str(self.file))
                .replace("CANARY_PID", str(self.proc.pid)).replace("HOST_PID", str(os.getpid()))
                .replace("TCP_PORT", str(self.tcp.getsockname()[1])).replace("UDP_PORT", str(self.udp.getsockname()[1]))
                .replace("ABSTRACT", repr(self.abstract_name)).replace("MARKER", MARKER))

    def assert_untouched(self, result):
        assert self.file.read_text() == "precious" and sorted(os.listdir(self.dir)) == ["precious.txt"]
        assert self.proc.poll() is None, "the canary process was killed"
        for s in (self.tcp, self.unix):
            with pytest.raises(BlockingIOError):
                s.accept()
        with pytest.raises(BlockingIOError):
            self.udp.recv(100)
        assert SECRET not in result.stdout + result.stderr + result.error
        deadline = time.time() + 3
        while _marked_processes() and time.time() < deadline:  # the kernel tears the namespace down
            time.sleep(0.05)
        assert not _marked_processes(), "a process of the program outlived the call"

    def close(self):
        self.proc.kill()
        self.proc.wait()
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        os.environ.pop("NANOCHAT_TEST_SECRET", None)


def _marked_processes():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if MARKER.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("host"))
    yield h
    h.close()


# (id, program, expected outcome): "error" a clean error result, "timeout", "memory", or "any"
# (the program may succeed inside its walls: the host checks are what matter)
FLOOD = 400 * 1024 ** 2
CASES = [
    # nanochat's own cases (tests/test_execution.py)
    ("rmtree", "import shutil; shutil.rmtree('CANARY_DIR')", "error"),
    ("os_remove", "import os; os.remove('CANARY_FILE')", "error"),
    ("os_system_rm", "import os; os.system('rm -rf CANARY_DIR')", "error"),
    ("subprocess_run_rm", "import subprocess; subprocess.run(['rm', '-rf', 'CANARY_DIR'])", "error"),
    ("subprocess_popen_rm", "import subprocess; subprocess.Popen(['rm', '-rf', 'CANARY_DIR'])", "error"),
    ("os_fork", "import os; os.fork()", "error"),
    ("os_kill_self", "import os; os.kill(os.getpid(), 0)", "error"),
    ("socket_socket", "import socket; socket.socket()", "error"),
    ("socket_connect_out", "import socket; socket.create_connection(('example.com', 80))", "error"),
    # the escapes found by trying the sandbox as an attacker would
    ("posix_kill_getppid", "import os, posix, signal; posix.kill(os.getppid(), signal.SIGKILL)", "error"),
    ("posix_kill_host_parent", "import posix, signal; posix.kill(HOST_PID, signal.SIGKILL)", "error"),
    ("posix_kill_canary", "import posix, signal; posix.kill(CANARY_PID, signal.SIGKILL)", "error"),
    ("posix_unlink", "import posix; posix.unlink('CANARY_FILE')", "error"),
    ("posix_system", "import posix; assert posix.system('rm CANARY_FILE') == 0", "error"),
    ("reload_os", "import importlib, os; importlib.reload(os); os.remove('CANARY_FILE')", "error"),
    ("reload_shutil_rmtree", "import importlib, shutil; importlib.reload(shutil); shutil.rmtree('CANARY_DIR')", "error"),
    ("reload_subprocess", "import importlib, subprocess; importlib.reload(subprocess)\n"
                          "subprocess.run(['rm', '-r', 'CANARY_DIR'], check=True)", "error"),
    ("write_abs_path", "open('CANARY_FILE', 'w').write('pwned')", "error"),
    ("write_new_abs_file", "open('CANARY_DIR/new.txt', 'w').write('pwned')", "error"),
    ("write_usr", "open('/usr/lib/pwned.txt', 'w').write('pwned')", "error"),
    ("os_open_trunc", "import os; os.open('CANARY_FILE', os.O_WRONLY | os.O_TRUNC)", "error"),
    ("os_open_trunc_interpreter", "import os, sys; os.open(sys.executable, os.O_WRONLY | os.O_TRUNC)", "error"),
    ("raw_socket_loopback_tcp", "import _socket; s = _socket.socket(); s.connect(('127.0.0.1', TCP_PORT)); "
                                "s.send(b'hello')", "error"),
    ("raw_socket_loopback_udp", "import _socket; s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
                                "s.connect(('127.0.0.1', UDP_PORT)); s.send(b'x'); s.recv(1)", "error"),
    ("raw_socket_abstract_unix", "import _socket; s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM); "
                                 "s.connect(ABSTRACT)", "error"),
    ("raw_socket_internet", "import _socket; s = _socket.socket(); s.settimeout(2); s.connect(('1.1.1.1', 53))", "error"),
    ("proc_parent_environ", "print(open('/proc/HOST_PID/environ').read())", "error"),
    ("proc_init_environ", "print(open('/proc/1/environ').read())", "error"),
    ("proc_self_environ", "import os; e = open('/proc/self/environ').read(); assert 'NANOCHAT_TEST_SECRET' in e, e", "error"),
    ("proc_list_host", "import os; assert 'CANARY_PID' in os.listdir('/proc'), os.listdir('/proc')", "error"),
    ("proc_parent_cwd", "import os; print(os.listdir('/proc/HOST_PID/cwd'))", "error"),
    ("fork_setsid_daemon", "import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n"
                           "    if posix.fork() == 0:\n        posix.execv('/usr/bin/sleep', ['sleep', 'MARKER'])\n"
                           "    posix._exit(0)\ntime.sleep(0.3)\nraise SystemExit('daemon left behind')", "error"),
    ("daemon_then_success", "import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n"
                            "    posix.execv('/usr/bin/sleep', ['sleep', 'MARKER'])\ntime.sleep(0.3)", "any"),
    ("forged_json_exit0", "import os, posix, json\nfake = json.dumps(dict(error='', stdout='PASS', stderr='', "
                          "memory_exceeded=False)).encode()\nfor fd in range(1, 64):\n    try:\n"
                          "        posix.write(fd, fake)\n    except OSError:\n        pass\nposix._exit(0)", "error"),
    ("forged_ok_report", "import posix\nfor fd in range(3, 64):\n    try:\n        posix.write(fd, b'ok ' + b'0' * 32)\n"
                         "    except OSError:\n        pass\nposix._exit(0)", "error"),
    ("os_exit_early", "import os; os._exit(0)\nassert False", "error"),
    ("sys_exit_nonzero", "import sys; sys.exit(3)", "error"),
    ("sys_exit_zero_early", "import sys; sys.exit(0)\nassert False", "error"),
    ("close_report_fds", "import posix\nfor fd in range(3, 64):\n    try:\n        posix.close(fd)\n"
                         "    except OSError:\n        pass", "error"),
    ("flood_stdout_400mb", f"import posix\nb = b'x' * (1 << 20)\nfor _ in range({FLOOD >> 20}):\n"
                           "    posix.write(1, b)\nraise SystemExit(1)", "error"),
    ("flood_stderr_400mb", f"import posix\nb = b'x' * (1 << 20)\nfor _ in range({FLOOD >> 20}):\n"
                           "    posix.write(2, b)\nraise SystemExit(1)", "error"),
    ("flood_report_400mb", f"import posix\nb = b'x' * (1 << 20)\nfor _ in range({FLOOD >> 20}):\n"
                           "    for fd in range(3, 8):\n        try:\n            posix.write(fd, b)\n"
                           "        except OSError:\n            pass\nposix._exit(0)", "error"),
    ("flood_print_forever", "while True:\n    print('x' * 1000)", "error"),
    ("fork_bomb", "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass", "timeout"),
    ("fork_bomb_subprocess", "import importlib, subprocess; importlib.reload(subprocess)\n"
                             "procs = [subprocess.Popen(['sleep', 'MARKER']) for _ in range(1000)]", "error"),
    ("thread_bomb", "import threading, time\nfor _ in range(10000):\n"
                    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()", "limit"),
    ("ptrace_parent", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "assert libc.ptrace(16, os.getppid(), 0, 0) == 0, ctypes.get_errno()", "error"),
    ("ptrace_host_pid", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                        "assert libc.ptrace(16, CANARY_PID, 0, 0) == 0, ctypes.get_errno()", "error"),
    ("unshare_user_ns", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                        "assert libc.unshare(0x10000000 | 0x20000) == 0, ctypes.get_errno()", "error"),
    ("mount_tmpfs", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                    "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0, ctypes.get_errno()", "error"),
    ("dev_shm_fill", "for i in range(100):\n    open(f'/dev/shm/f{i}', 'wb').write(b'x' * 1000000)", "error"),
    ("tmp_fill", "for i in range(100):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 1000000)", "error"),
    ("file_too_large", "open('/tmp/big', 'wb').write(b'x' * (4 << 20))", "error"),
    ("symlink_out_of_tmp", "import posix; posix.symlink('CANARY_DIR', '/tmp/out')\n"
                           "open('/tmp/out/precious.txt', 'w').write('pwned')", "error"),
    ("symlink_proc_root", "import posix; posix.symlink('/proc/1/root', '/tmp/root')\n"
                          "open('/tmp/root/CANARY_FILE', 'w').write('pwned')", "error"),
    ("proc_sys_write", "open('/proc/sys/kernel/hostname', 'w').write('pwned')", "error"),
    ("sethostname", "import socket; socket.sethostname('pwned')", "error"),
    ("chmod_interpreter", "import posix, sys; posix.chmod(sys.executable, 0o777)", "error"),
    ("read_shadow", "print(open('/etc/shadow').read())", "error"),
    ("read_canary", "print(open('CANARY_FILE').read())", "error"),
    ("signal_storm_init", "import posix\nfor s in range(1, 32):\n    try:\n        posix.kill(1, s)\n"
                          "    except OSError:\n        pass\nposix.kill(1, 9)", "error"),
    ("signal_storm_everyone", "import posix, signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                              "    posix.kill(-1, s)\nraise SystemExit('still here')", "error"),
    ("kill_own_group", "import posix; posix.killpg(0, 9)", "error"),
    ("ignore_signals_spin", "import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
                            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", "timeout"),
    ("sleep_forever", "import time; time.sleep(3600)", "timeout"),
    ("huge_argv", "import posix; posix.execv('/usr/bin/true', ['true'] + ['x' * 100000] * 1000)", "error"),
    ("huge_env", "import posix; posix.execve('/usr/bin/true', ['true'], {'A': 'x' * (64 << 20)})", "error"),
    ("memory_bomb", "x = bytearray(8 << 30)", "memory"),
    ("memory_list", "x = [0] * 10 ** 9", "memory"),
    ("recursion", "def f():\n    return f()\nf()", "error"),
    ("stdin_read", "input()", "error"),
    ("ctypes_system", "import ctypes; assert ctypes.CDLL(None).system(b'rm -r CANARY_DIR') == 0", "error"),
]


def _check(result, expect):
    if expect == "any":
        return
    assert not result.success and result.error and "\n" not in result.error, result
    if expect == "limit":  # the process or the memory limit, whichever the kernel meets first
        assert not result.timeout, result
        return
    assert result.timeout == (expect == "timeout"), result
    assert result.memory_exceeded == (expect == "memory"), result


@pytest.mark.parametrize("name,code,expect", CASES, ids=[c[0] for c in CASES])
def test_hostile_program_is_contained(host, name, code, expect):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    t0 = time.time()
    result = execute_code(host.fill(code), timeout=1.5)
    assert time.time() - t0 < 6, f"{name} held the caller for {time.time() - t0:.1f} s"
    _check(result, expect)
    assert len(result.stdout) < 20000 and len(result.stderr) < 20000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024, "the parent grew"
    host.assert_untouched(result)


def test_there_are_at_least_50_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_the_sandbox_is_what_it_claims(host):
    """The view from inside: an unprivileged uid, no capabilities, only loopback, a private pid namespace and a
    filesystem of /usr, the interpreter, /proc, /dev and a small tmpfs."""
    code = ("import os, socket\nst = open('/proc/self/status').read()\n"
            "print(os.getresuid(), os.getresgid(), [l.split()[1] for l in st.splitlines() if l.startswith('CapEff')])\n"
            "print(socket.if_nameindex())\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
            "print(os.getcwd(), sorted(os.listdir('/')))\nprint(os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize)")
    result = execute_code(code)
    assert result.success, result
    ids, links, pids, fs, tmp_size = result.stdout.splitlines()
    uid = UID_BASE if os.geteuid() == 0 else 65534  # as root, the first free slot's program uid
    assert ids.startswith(f"({uid}, {uid}, {uid}) ({uid}, {uid}, {uid}) ") and ids.endswith(" ['0000000000000000']")
    assert links == "[(1, 'lo')]"
    assert len(eval(pids)) <= 3  # bwrap's init, the runner, listdir's own view
    assert fs.startswith("/tmp ") and "work" not in fs and "home" not in fs and "etc" not in fs
    assert int(tmp_size) <= 16 * 1024 ** 2


def test_parallel_calls_do_not_interfere(host):
    results = [None] * 8

    def run(i):
        results[i] = execute_code(f"open('/tmp/mine', 'w').write('{i}')\nimport time; time.sleep(0.2)\n"
                                  f"print(open('/tmp/mine').read())")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]


# Wrong answers to add(a, b) that try to pass anyway: each returns 0 (or a thing that is not a sum)
# and attacks the verdict. Graded, the tests run in the supervisor; none of these may pass.
FORGERIES = [
    ("exit_early", "    return 0\nimport os; os._exit(0)\n"),
    ("posix_exit_early", "    return 0\nimport posix; posix._exit(0)\n"),
    ("sys_exit", "    return 0\nimport sys; sys.exit(0)\n"),
    ("raise_system_exit", "    return 0\nraise SystemExit\n"),
    ("spray_every_fd", "    return 0\nimport os\nfor fd in range(3, 64):\n    for m in (b'ok', b'ok\\n', b'ready\\n'):\n"
                       "        try:\n            os.write(fd, m)\n        except OSError:\n            pass\nos._exit(0)\n"),
    ("claim_memory", "    return 0\nimport os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'memory\\n')\n"
                     "    except OSError:\n        pass\n"),
    ("skip_the_tests", "    return 0\nimport sys\nsys._getframe(0).f_globals.update(entry=None)\n"
                       "g = sys._getframe(1).f_globals if sys._getframe(1) else {}\ng['entry'] = None\n"),
    ("replace_main_finish", "    return 0\nimport sys\nm = sys.modules['__main__']\n"
                            "m.finish = lambda *a: m.exit_now(0)\nm.entry = None\n"),
    ("supervisor_fds", "    return 0\nimport os\nd = f'/proc/{os.getppid()}/fd'\n"
                       "for n in os.listdir(d):\n    open(f'{d}/{n}', 'w').write('ok')\n"),
    ("supervisor_memory", "    return 0\nimport os\nopen(f'/proc/{os.getppid()}/mem', 'r+b').write(b'ok')\n"),
    ("kill_supervisor", "    return 0\nimport os, posix\nposix.kill(os.getppid(), 9)\n"),
    ("thread_forges_while_main_spins",
     "    return 0\nimport os, threading\ndef forge():\n    for fd in range(3, 64):\n        try:\n"
     "            os.write(fd, b'ready\\n')\n        except OSError:\n            pass\n    os._exit(0)\n"
     "threading.Thread(target=forge).start()\nwhile True:\n    pass\n"),
    ("patch_builtins_abs", "    return 0\nimport builtins\nbuiltins.abs = lambda x: 0\n"),
    ("tracer_rebinds_check", "    return 0\nimport sys\ndef tracer(frame, event, arg):\n"
                             "    if callable(frame.f_globals.get('check')):\n"
                             "        frame.f_globals['check'] = lambda c: None\n    return tracer\n"
                             "sys.settrace(tracer)\nsys._getframe().f_trace = tracer\n"),
    ("read_nonce_and_report", "    return 0\nimport json, os, sys\ncfg = json.loads(sys.argv[1])\n"
                              "nonce = os.read(cfg['nonce_fd'], 64).decode() if 'nonce_fd' in cfg else ''\n"
                              "os.write(cfg['report_fd'], ('ok ' + nonce).strip().encode())\nos._exit(0)\n"),
    ("equal_to_everything", "    class Anything:\n        def __eq__(self, other):\n            return True\n"
                            "        def __sub__(self, other):\n            return self\n"
                            "        def __abs__(self):\n            return 0\n    return Anything()\n"),
    ("int_equal_to_everything", "    class I(int):\n        def __eq__(self, other):\n            return True\n"
                                "        def __sub__(self, other):\n            return 0\n    return I(0)\n"),
    ("read_the_tests", "    return int(open('/proc/self/cmdline').read().split('candidate(2, 3) - ')[1][:1])\n"),
]
ADD = {"messages": [{"role": "user", "content": "def add(a, b):\n    \"\"\"a + b\"\"\"\n"}], "entry_point": "add",
       "test": "def check(candidate):\n    assert abs(candidate(2, 3) - 5) < 1e-9\n    assert abs(candidate(4, 4) - 8) < 1e-9\n"}


def test_a_right_answer_passes_and_the_tests_stay_outside():
    from tasks.humaneval import build_program
    program, tests = build_program(ADD, "    return a + b\n")
    assert execute_code(program, tests=tests, entry_point="add").success
    assert "candidate" not in program and "check" not in program
    result = execute_code(*build_program(ADD, "    return a * b\n")[:1], tests=build_program(ADD, "")[1],
                          entry_point="add")
    assert not result.success and result.error == "AssertionError", result


@pytest.mark.parametrize("name,completion", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_wrong_humaneval_answer_cannot_forge_a_pass(host, name, completion):
    from tasks.humaneval import build_program
    program, tests = build_program(ADD, completion)
    result = execute_code(program, timeout=1.5, tests=tests, entry_point="add")
    assert not result.success and result.error and "\n" not in result.error, result
    host.assert_untouched(result)


def test_a_plain_call_cannot_reach_the_report():
    """A plain call's success is the program's own account (it may claim it), but the report the
    parent reads is the supervisor's: a program that fails after writing to every fd fails."""
    spray = ("import os\nfor fd in range(3, 64):\n    for m in (b'ok', b'ok\\n'):\n        try:\n"
             "            os.write(fd, m)\n        except OSError:\n            pass\n")
    result = execute_code(spray + "raise ValueError('failed after all')")
    assert not result.success and result.error == "ValueError: failed after all", result
    result = execute_code(spray + "import os; os._exit(3)")
    assert not result.success and "exit code 3" in result.error, result
    result = execute_code(spray + "import time; time.sleep(60)", timeout=1.0)
    assert result.timeout and not result.success, result


# per-call limits: memory and processes of all of a call's processes together, and calls apart

FORK_HOGS = """import posix, time
kids = []
for i in range(8):
    pid = posix.fork()
    if pid == 0:
        x = b'\\1' * (200 << 20)
        time.sleep(1.5)
        posix._exit(0)
    kids.append(pid)
for pid in kids:
    assert posix.waitpid(pid, 0)[1] == 0
print('8 children held 200 MB each')
"""


@pytest.mark.skipif(cgroups()[0] is None, reason=f"no per-call cgroup here: {cgroups()[1]}")
def test_a_call_memory_budget_covers_its_forked_children(host):
    """rlimits bound each process (256 MB), so 8 forked children once held 1.6 GB in one call;
    the call's cgroup bounds them together, and the kernel, not the program, says so."""
    result = execute_code(FORK_HOGS, timeout=10)
    assert not result.success and result.memory_exceeded and "memory budget" in result.error, result
    host.assert_untouched(result)


@pytest.mark.skipif(os.geteuid() != 0, reason="per-call uids need root (in a user namespace every call is 65534)")
def test_a_fork_flood_does_not_starve_a_concurrent_call(host):
    """RLIMIT_NPROC counts per uid: with one uid for every call, one call's fork flood made a
    concurrent call fail to start a thread. Each call now has its own uids (and cgroup)."""
    results = {}

    def flood():
        results["flood"] = execute_code("import posix, time\nfor i in range(200):\n    if posix.fork() == 0:\n"
                                        "        time.sleep(3)\n        posix._exit(0)\n", timeout=5)

    def neighbour():
        time.sleep(0.5)  # while the flood holds its processes
        results["neighbour"] = execute_code("import threading\nt = threading.Thread(target=print, args=('ok',))\n"
                                            "t.start()\nt.join()", timeout=5)

    threads = [threading.Thread(target=flood), threading.Thread(target=neighbour)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not results["flood"].success and "Resource temporarily unavailable" in results["flood"].error
    assert results["neighbour"].success and results["neighbour"].stdout == "ok\n", results["neighbour"]
    host.assert_untouched(results["neighbour"])


def test_the_engine_tool_contains_the_escapes(host):
    """The path chat_web, chat_cli and chat_eval use: Engine's default tool (run_python)."""
    from nanochat.python_tool import run_python
    out = run_python("import os, posix, signal; posix.kill(os.getppid(), signal.SIGKILL)")
    assert out.startswith("PermissionError") or out.startswith("ProcessLookupError"), out
    assert "FileNotFoundError" in run_python(host.fill("import posix; posix.unlink('CANARY_FILE')"))
    assert run_python("6 * 7") == "42"
    host.assert_untouched(execute_code("pass"))
