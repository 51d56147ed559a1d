"""modules/sandbox.py: every attack class of model-written code fails inside the sandbox (run under each OS backend
that works here: bwrap, unshare), a benign program still runs, and without isolation it refuses unless allowed.

The attacks are real: if the sandbox broke, a file would appear outside it, the test's listener would get a
connection, this process would receive SIGUSR1, a process would survive, or the secret would be printed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest

from modules import sandbox

WORKING = [name for name in sandbox.BACKENDS if sandbox._backend_problem(name) is None]


@pytest.fixture(params=WORKING or [None], ids=lambda b: str(b))
def backend(request):
    if request.param is None:
        pytest.skip("neither bwrap nor unshare works on this machine")
    return request.param


def _alive(pattern: str, wait: float = 2.0) -> list[str]:
    """Command lines of processes matching `pattern` (pgrep -f), polled until none is left or `wait` passes."""
    until = time.monotonic() + wait
    while True:
        found = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True, check=False).stdout.splitlines()
        found = [line for line in found if "pgrep" not in line]
        if not found or time.monotonic() > until:
            return found
        time.sleep(0.05)


def test_benign_program_runs_and_returns_its_stdout(backend):
    result = sandbox.run_python("import sys\nopen('note.txt', 'w').write('ok')\nprint(6 * 7, open('note.txt').read(),"
                                " sys.argv[1:])\nsys.exit(3)", args=["a b"], backend=backend)
    assert (result.stdout, result.returncode, result.timed_out, result.backend) == ("42 ok ['a b']\n", 3, False,
                                                                                     backend), result
    assert sandbox.run(["/bin/sh", "-c", "echo hi; echo err >&2"], backend=backend).stdout == "hi\n"


def test_writes_outside_the_working_directory_do_not_happen(backend, tmp_path):
    tag = uuid.uuid4().hex
    targets = [str(tmp_path / "outside.txt"), f"/tmp/r1_pwned_{tag}", f"/usr/r1_pwned_{tag}",
               os.path.join(os.path.realpath(sys.base_prefix), f"r1_pwned_{tag}"), f"/etc/r1_pwned_{tag}"]
    code = ("import os, shutil, sys\n"
            "for path in sys.argv[1:]:\n"
            "    for how in ('open', 'os.open', 'copy', 'mkdir'):\n"
            "        try:\n"
            "            if how == 'open': open(path, 'w').write('x')\n"
            "            elif how == 'os.open': os.close(os.open(path, os.O_WRONLY | os.O_CREAT))\n"
            "            elif how == 'copy': open('a.txt', 'w').write('x'); shutil.copyfile('a.txt', path)\n"
            "            else: os.makedirs(path + '.d')\n"
            "            print('wrote', how, path)\n"
            "        except OSError as exc: print('failed', how, path, type(exc).__name__)\n"
            "# what an audit-hook sandbox relied on is plain Python here: rewriting it changes nothing\n"
            "sys.audit = lambda *a: None\n"
            "os.system('mount -o remount,rw / 2>/dev/null; mount -o remount,rw /usr 2>/dev/null')\n")
    try:
        result = sandbox.run_python(code, args=targets, backend=backend)
        leaked = [p for path in targets for p in (path, path + ".d") if os.path.exists(p)]
    finally:  # a broken sandbox must not leave files in /usr or /etc behind
        for path in targets[1:]:
            shutil.rmtree(path + ".d", ignore_errors=True)
            if os.path.isfile(path):
                os.remove(path)
    assert leaked == [], leaked
    assert result.returncode == 0 and result.stdout.count("\n") == 4 * len(targets), result
    # Inside, /tmp is the sandbox's own (its working directory): writing there works and stays there.
    assert all(line.startswith("failed") for line in result.stdout.splitlines()
               if not line.split()[2].startswith("/tmp/")), result.stdout
    assert list(tmp_path.iterdir()) == []


def test_no_network_not_even_the_hosts_loopback(backend):
    listener = socket.create_server(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0r1-sandbox-test-{uuid.uuid4().hex}")
    abstract.listen(1)
    port = listener.getsockname()[1]
    code = ("import socket, sys\n"
            "for family, address in ((socket.AF_INET, ('127.0.0.1', int(sys.argv[1]))), (socket.AF_INET, "
            "('1.1.1.1', 53)), (socket.AF_UNIX, sys.argv[2])):\n"
            "    s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(2)\n"
            "    try: s.connect(address); print('connected', address)\n"
            "    except OSError as exc: print('failed', type(exc).__name__)\n")
    try:
        result = sandbox.run_python(code, args=[port, abstract.getsockname()], backend=backend)
        for server in (listener, abstract):
            server.settimeout(0.2)
            with pytest.raises(socket.timeout):
                server.accept()
    finally:
        listener.close()
        abstract.close()
    assert result.returncode == 0 and result.stdout.count("failed") == 3 and "connected" not in result.stdout, result


def test_a_shell_cannot_write_outside(backend, tmp_path):
    target = tmp_path / "pwned.txt"
    code = ("import os, subprocess, sys\n"
            "os.system(f\"/bin/sh -c 'echo pwned > {sys.argv[1]}'\")\n"
            "print(subprocess.run(['/bin/sh', '-c', f'echo pwned > {sys.argv[1]}']).returncode)\n")
    result = sandbox.run_python(code, args=[target], backend=backend)
    assert result.returncode == 0 and result.stdout.strip() == "2" and "pwned.txt" in result.stderr, result
    assert not target.exists()


def test_signals_and_ctypes_cannot_reach_the_parent(backend):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    code = ("import ctypes, ctypes.util, os, signal, sys\n"
            "me = int(sys.argv[1])\n"
            "print('visible', os.path.exists(f'/proc/{me}/cmdline') and 'pytest' in open(f'/proc/{me}/cmdline').read())\n"
            "try: os.kill(me, signal.SIGUSR1); print('os.kill reached it')\n"
            "except OSError as exc: print('os.kill', type(exc).__name__)\n"
            "libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)\n"
            "print('libc.kill', libc.kill(me, signal.SIGUSR1), ctypes.get_errno() != 0)\n"
            "print('parent', os.getppid(), flush=True)\n"
            "os.kill(os.getppid(), signal.SIGUSR1)\n")
    try:
        result = sandbox.run_python(code, args=[os.getpid()], backend=backend)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [], "the sandbox signalled the test process"
    lines = result.stdout.splitlines()
    assert lines[:3] == ["visible False", "os.kill ProcessLookupError", "libc.kill -1 True"], result
    assert lines[3] in ("parent 1", "parent 0"), result  # the namespace's init, not this process


def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind(backend):
    marker = f"r1-forkbomb-{uuid.uuid4().hex}"
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = sandbox.run_python(code, args=[marker], timeout=1.5, max_processes=16, backend=backend)
    assert result.timed_out and result.returncode == -signal.SIGKILL, result
    assert time.monotonic() - started < 5.0
    assert _alive(marker) == []


def test_background_processes_do_not_outlive_the_sandbox(backend):
    duration = f"1000.{uuid.uuid4().int % 10**9}"
    code = ("import os, subprocess, sys\n"
            "subprocess.Popen(['sleep', sys.argv[1]], start_new_session=True)\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        os.execvp('sleep', ['sleep', sys.argv[1]])\n"
            "    os._exit(0)\n"
            "os.wait()\n"
            "print('started')\n")
    result = sandbox.run_python(code, args=[duration], backend=backend)
    assert result.returncode == 0 and result.stdout == "started\n", result
    assert _alive(f"sleep {duration}") == []


def test_the_parents_environment_is_not_readable(backend, monkeypatch):
    secret = f"r1-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1_TEST_SECRET", secret)
    holder = subprocess.Popen(["sleep", "30"], env={**os.environ})  # /proc/<pid>/environ on the host has it
    code = ("import glob, os, sys\n"
            "print(dict(os.environ))\n"
            "for path in [*sys.argv[1:], *glob.glob('/proc/*/environ')]:\n"
            "    try: print(path, open(path, 'rb').read())\n"
            "    except OSError as exc: print(path, type(exc).__name__)\n")
    try:
        until = time.monotonic() + 5
        while secret.encode() not in Path(f"/proc/{holder.pid}/environ").read_bytes():  # once it has exec'd
            assert time.monotonic() < until, "the holder process never showed the secret"
            time.sleep(0.01)
        # (the attack works without the sandbox: the host's /proc shows the holder's environment)
        result = sandbox.run_python(code, args=[f"/proc/{holder.pid}/environ", f"/proc/{os.getpid()}/environ",
                                                f"/proc/{os.getppid()}/environ"], backend=backend)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0 and "'PATH'" in result.stdout, result
    assert secret not in result.stdout + result.stderr and "R1_TEST_SECRET" not in result.stdout


def test_memory_above_the_limit_fails(backend):
    result = sandbox.run_python("b = bytearray(512 << 20)\nprint('allocated')", memory_mb=128, backend=backend)
    assert result.returncode != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout, result


def test_output_above_the_limit_is_truncated(backend):
    result = sandbox.run_python("import sys\nprint('x' * 300_000)\nsys.stderr.write('e' * 300_000)",
                                max_output_bytes=1000, backend=backend)
    assert result.returncode == 0 and result.truncated, result
    assert result.stdout == "x" * 1000 and result.stderr == "e" * 1000


def test_an_infinite_loop_is_killed_at_the_timeout(backend):
    started = time.monotonic()
    result = sandbox.run_python("while True:\n    pass\n", timeout=1.0, backend=backend)
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 4.0


def test_without_isolation_it_refuses_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_HOST_PATH", str(tmp_path))  # no bwrap, no unshare on the search path
    assert sandbox.available_backend() is None
    with pytest.raises(sandbox.SandboxUnavailable) as refused:
        sandbox.run_python("print(1)")
    message = str(refused.value)
    assert "\n" not in message and "install bubblewrap" in message and "allow_unsandboxed=True" in message
    with pytest.raises(sandbox.SandboxUnavailable, match="bwrap does not work here"):
        sandbox.run_python("print(1)", backend="bwrap", allow_unsandboxed=True)  # a forced backend never degrades
    sandbox._warn_unsandboxed.cache_clear()
    with pytest.warns(RuntimeWarning, match="no OS isolation"):
        result = sandbox.run_python("print(6 * 7)", allow_unsandboxed=True)
    assert (result.stdout, result.returncode, result.backend) == ("42\n", 0, "none")
    with warnings.catch_warnings(record=True) as records:  # said once, not on every call
        warnings.simplefilter("always")
        assert sandbox.run_python("print(1)", allow_unsandboxed=True).stdout == "1\n"
    assert records == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="timeout"):
        sandbox.run(["true"], timeout=0)
    with pytest.raises(ValueError, match="plain name"):
        sandbox.run(["true"], files={"../x": "y"})
    with pytest.raises(ValueError, match="backend"):
        sandbox.run(["true"], backend="docker")
