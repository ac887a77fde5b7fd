"""The sandbox: results for good and bad code, time and memory limits, disabled destructive
functions, capped output; it never hangs and never touches the host's files. Which mode is
active, and the refusal without namespaces. (Hostile programs: tests/test_sandbox_hostile.py.)"""

import time

import pytest

from nanochat import execution
from nanochat.execution import TRUNCATED, execute_code, sandbox_mode

needs_sandbox = pytest.mark.skipif(sandbox_mode()[0] == "unavailable", reason=sandbox_mode()[1])


@needs_sandbox
def test_success_captures_stdout_and_stderr():
    r = execute_code("import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)")
    assert r.success and r.stdout == "42\n" and r.stderr == "warn\n" and r.error == ""
    assert not r.timeout and not r.memory_exceeded
    r = execute_code("import sys; print('a'); sys.exit(0)\nprint('b')")  # exiting early is not finishing
    assert not r.success and r.stdout == "a\n" and r.error.startswith("SystemExit: 0")


@needs_sandbox
def test_errors_are_results():
    r = execute_code("def f(:\n    pass")
    assert not r.success and r.error.startswith("SyntaxError") and not r.timeout
    r = execute_code("print('before')\n1 / 0")
    assert not r.success and r.stdout == "before\n" and r.error == "ZeroDivisionError: division by zero"
    assert "line 2" in r.stderr
    assert execute_code("import sys; sys.exit(3)").error.startswith("SystemExit: 3")
    r = execute_code("import os; os._exit(1)")  # dies without reporting
    assert not r.success and "exit code 1" in r.error


@needs_sandbox
def test_timeout_never_hangs():
    for code in ("while True: pass", "import time; time.sleep(60)",
                 "import signal; signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass"):
        t0 = time.time()
        r = execute_code(code, timeout=1.0)
        assert r.timeout and not r.success and "timed out" in r.error, code
        assert time.time() - t0 < 5, code


@needs_sandbox
def test_memory_cap():
    for code in ("x = bytearray(2 * 1024 ** 3)", "x = [0] * 10 ** 9"):
        r = execute_code(code, max_memory_bytes=256 * 1024 ** 2)
        assert r.memory_exceeded and not r.success and not r.timeout, code
    assert execute_code("x = bytearray(50 * 1024 ** 2); print(len(x))").stdout == "52428800\n"


@needs_sandbox
def test_destructive_functions_are_disabled(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file.txt").write_text("precious")
    for code in (f"import shutil; shutil.rmtree({str(keep)!r})",
                 f"import os; os.remove({str(keep / 'file.txt')!r})",
                 f"import os; os.system('rm -rf {keep}')",
                 f"import subprocess; subprocess.run(['rm', '-rf', {str(keep)!r}])",
                 f"import subprocess; subprocess.Popen(['rm', '-rf', {str(keep)!r}])",
                 "import os; os.fork()",
                 "import os; os.kill(os.getpid(), 0)",  # signal 0: harmless should the guard ever fail
                 "import socket; socket.socket()",
                 "import socket; socket.create_connection(('example.com', 80))"):
        r = execute_code(code)
        assert not r.success and r.error.startswith("PermissionError") and "disabled in the sandbox" in r.error, code
    assert (keep / "file.txt").read_text() == "precious"


@needs_sandbox
def test_runs_in_a_scratch_directory():
    r = execute_code("import os; open('scratch.txt', 'w').write('x'); print(os.getcwd(), os.listdir('.'))")
    assert r.success and r.stdout.endswith("['scratch.txt']\n")
    r = execute_code("import os; print(os.listdir('.'))")  # a fresh one for every call
    assert r.success and r.stdout == "[]\n"
    r = execute_code("open('big.bin', 'wb').write(b'x' * (4 * 1024 ** 2))", max_file_bytes=1024 ** 2)
    assert not r.success and "File too large" in r.error


@needs_sandbox
def test_output_is_capped():
    r = execute_code("print('a' * 10 ** 6)\nimport sys; sys.stderr.write('b' * 10 ** 6)", max_output_bytes=1000)
    assert r.success
    assert r.stdout == "a" * 1000 + TRUNCATED and r.stderr == "b" * 1000 + TRUNCATED


@needs_sandbox
def test_a_flood_is_stopped_with_its_own_error():
    r = execute_code("import sys\nwhile True:\n    sys.stdout.write('a' * 65536)", timeout=30, max_output_bytes=1000)
    assert not r.success and not r.timeout and "MiB of output" in r.error
    assert r.stdout == "a" * 1000 + TRUNCATED


@pytest.fixture
def fresh_mode(monkeypatch):
    """sandbox_mode() probed again under the test's conditions, and again after it."""
    execution.sandbox_mode.cache_clear()
    execution._warn_unsafe_once.cache_clear()
    yield monkeypatch
    execution.sandbox_mode.cache_clear()
    execution._warn_unsafe_once.cache_clear()


def test_without_namespaces_tool_calls_are_refused_in_one_line(fresh_mode):
    fresh_mode.setattr(execution.shutil, "which", lambda name: None)
    fresh_mode.delenv(execution.UNSAFE_ENV, raising=False)
    assert execution.sandbox_mode() == ("unavailable", "bubblewrap (bwrap) is not installed")
    r = execute_code("print(1)")
    assert not r.success and r.stdout == "" and "\n" not in r.error
    assert r.error == execution.describe_sandbox()
    assert "bubblewrap (bwrap) is not installed" in r.error and "apt-get install bubblewrap" in r.error
    assert "NANOCHAT_UNSAFE_SANDBOX=1" in r.error


def test_the_unsafe_opt_in_runs_with_guards_and_warns_once(fresh_mode, capsys):
    fresh_mode.setattr(execution.shutil, "which", lambda name: None)
    fresh_mode.setenv(execution.UNSAFE_ENV, "1")
    assert execution.sandbox_mode()[0] == "unsafe"
    assert execution.describe_sandbox().startswith("sandbox: WARNING: NANOCHAT_UNSAFE_SANDBOX=1")
    assert execute_code("print(6 * 7)").stdout == "42\n"
    r = execute_code("import os; os.kill(os.getpid(), 0)")  # the in-process guard still answers
    assert not r.success and "disabled in the sandbox" in r.error
    assert capsys.readouterr().err.count("WARNING") == 1


@pytest.mark.skipif(sandbox_mode()[0] != "bwrap", reason=sandbox_mode()[1])
def test_bwrap_mode_is_announced():
    assert execution.describe_sandbox().startswith("sandbox: bubblewrap")


def test_a_bwrap_that_cannot_start_is_reported(fresh_mode):
    fresh_mode.delenv(execution.UNSAFE_ENV, raising=False)
    fresh_mode.setattr(execution.shutil, "which", lambda name: "/usr/bin/bwrap")
    fresh_mode.setattr(execution, "_bwrap_command", lambda size: (["bwrap", "--no-such-option"], None))
    mode, reason = execution.sandbox_mode()
    assert mode == "unavailable" and reason.startswith("bwrap cannot create namespaces here: ") and "\n" not in reason
    assert not execute_code("print(1)").success
