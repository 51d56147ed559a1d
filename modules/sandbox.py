"""Run untrusted programs (model-written code) under OS isolation: `run(argv)` and `run_python(source)`.

Python-level guards (audit hooks, restricted builtins) live in memory the untrusted code can rewrite, so nothing
here relies on them. The program runs in a child set up by a maintained OS tool, chosen at call time:

- `bwrap` (bubblewrap; Debian package `bubblewrap`, installed by `make install`) when it works here, else
- util-linux `unshare` (namespaces) + `mount` + `chroot` + `setpriv`, run by a short shell script.

Either way the program gets:

- no network: its own network namespace (only a loopback with nothing listening; the host's 127.0.0.1 services,
  abstract Unix sockets and the internet are unreachable);
- its own PID namespace with its own `/proc`: no process outside the sandbox is visible or can be signalled
  (`os.kill(os.getppid(), ...)` reaches the sandbox's own init, which ends the sandbox), and
  `/proc/<pid>/environ` of the trainer does not exist there;
- a read-only file system holding only what a program needs (`/usr`, the `/bin` `/lib*` links, a few files of
  `/etc`, the Python installation, `ro_paths`), mounted nosuid, plus a fresh size-limited tmpfs as its working
  directory `/sandbox` (also `$HOME`, `$TMPDIR` and `/tmp`); home directories, tokens and sockets under `/run` are
  not in the view; `files` are bind-mounted read-only into `/sandbox`;
- an environment of PATH / HOME / TMPDIR / LANG only (the parent's variables never reach it: the launcher itself
  runs with a minimal environment);
- no privileges: run as root, the program runs as uid/gid 65534 (nobody; root is exempt from RLIMIT_NPROC) with
  no capabilities; otherwise as the caller inside a user namespace without capabilities; no-new-privs is set,
  so setuid binaries gain nothing; its own IPC and UTS namespaces and session (no TIOCSTI into a terminal);
- rlimits set soft = hard (it cannot raise them) by a tiny launcher before the program is exec'd: processes
  (RLIMIT_NPROC, `max_processes`; per sandbox in a user namespace, per uid 65534 when run as root), address
  space (RLIMIT_AS, `memory_mb`), CPU seconds (RLIMIT_CPU), file size (RLIMIT_FSIZE), open files, no core files;
- a wall-clock `timeout`, after which the launcher tool is SIGKILLed; its PID-namespace init dies with it and the
  kernel kills every process of the namespace, so forks, daemons and `setsid` escapees never outlive the call
  (the same happens when the program exits normally);
- output read through pipes and truncated to `max_output_bytes` per stream (the rest is drained and dropped).

When neither tool works (no bwrap, user namespaces disabled, a locked-down container), `run` raises
`SandboxUnavailable` (install bubblewrap, or pass `allow_unsandboxed=True`). With `allow_unsandboxed=True` it
runs the program anyway with the rlimits, the minimal environment, a temporary directory and the timeout only,
and warns once: such a program can read your files, use the network and signal your processes.

>>> run_python("print(6 * 7)").stdout  # doctest: +SKIP
'42\\n'
"""

from __future__ import annotations

import functools
import json
import math
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

WORKDIR = "/sandbox"
NOBODY = 65534
BACKENDS = ("bwrap", "unshare")
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
              "nsswitch.conf")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_HOST_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_FIX = "install bubblewrap (apt-get install bubblewrap, or `make install`) or pass allow_unsandboxed=True"

# Runs inside the sandbox (trusted: it is ours), as the last step before the untrusted program: sets the rlimits
# (soft = hard, so they cannot be raised again), enters the working directory and exec's the program with the
# given environment; under unshare it first forks, staying behind as the namespace's init (bwrap has its own).
# No Python guard survives the exec; the isolation is the namespaces around it.
_LAUNCHER = r'''
import json, os, resource, sys
spec = json.loads(sys.argv[1])
if spec["init"]:  # PID 1 of the namespace (unshare): reap orphans, exit as the program did (a signal N: 128 + N)
    child = os.fork()
    while child:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
for name, value in spec["limits"].items():
    res = getattr(resource, name)
    hard = resource.getrlimit(res)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(res, (value, value))
os.chdir(spec["cwd"])
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
'''


class SandboxUnavailable(RuntimeError):
    """No OS isolation works on this machine and the caller did not allow running without it."""


@dataclass
class SandboxResult:
    """What a sandboxed run gave: exit status (negative = killed by that signal), output, timing.

    `truncated`: stdout or stderr was longer than `max_output_bytes` and was cut. `backend`: "bwrap", "unshare"
    or "none" (allow_unsandboxed without isolation)."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    truncated: bool = False
    backend: str = ""


# ---------------------------------------------------------------------------------------------- public API
def run_python(source: str, args: Sequence[str] = (), **kwargs) -> SandboxResult:
    """Run Python `source` (stdlib only: `-I -S`, no site-packages) as `/sandbox/main.py` with `args` under `run`.

    Every keyword of `run` applies (timeout, memory_mb, max_processes, allow_unsandboxed, ...)."""
    files = {**kwargs.pop("files", {}), "main.py": source}
    return run([python_executable(), "-I", "-S", "-B", "main.py", *map(str, args)], files=files, **kwargs)


def run(argv: Sequence[str], *, files: Mapping[str, str | bytes] | None = None, timeout: float = 5.0,
        memory_mb: int = 512, cpu_seconds: int | None = None, max_processes: int = 32,
        max_file_bytes: int = 1 << 20, disk_mb: int = 64, max_output_bytes: int = 20_000,
        ro_paths: Iterable[str] = (), allow_unsandboxed: bool = False, backend: str | None = None
        ) -> SandboxResult:
    """Run `argv` in the sandbox described in the module docstring; never raises for what the program does.

    `files`: {name: text or bytes} placed read-only in the working directory `/sandbox` (the program's cwd).
    `timeout`: wall-clock seconds, then everything in the sandbox is killed (`timed_out=True`, returncode -9).
    `cpu_seconds`: RLIMIT_CPU per process (default ceil(timeout) + 1). `max_processes`: RLIMIT_NPROC.
    `memory_mb`: RLIMIT_AS per process. `max_file_bytes`: RLIMIT_FSIZE. `disk_mb`: size of the `/sandbox` tmpfs.
    `max_output_bytes`: kept per stream. `ro_paths`: extra host paths made visible read-only (same path).
    `backend`: force "bwrap" or "unshare" (default: the first that works). `allow_unsandboxed`: where none
    works, run with rlimits only (warned once) instead of raising `SandboxUnavailable`.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("sandbox.run: argv is empty; pass the program and its arguments")
    if not timeout > 0:
        raise ValueError(f"sandbox.run: timeout={timeout} must be > 0 seconds")
    for name in files or {}:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox.run: file name {name!r} must be a plain name (no '/'), placed in {WORKDIR}")
    chosen = _choose_backend(backend, allow_unsandboxed)
    limits = {"RLIMIT_CPU": int(cpu_seconds or math.ceil(timeout) + 1), "RLIMIT_AS": int(memory_mb) << 20,
              "RLIMIT_FSIZE": int(max_file_bytes), "RLIMIT_NPROC": int(max_processes), "RLIMIT_NOFILE": 256,
              "RLIMIT_CORE": 0}
    return _execute(chosen, argv, files or {}, limits, timeout=timeout, disk_bytes=int(disk_mb) << 20,
                    max_output_bytes=int(max_output_bytes), ro_paths=tuple(ro_paths))


def available_backend() -> str | None:
    """The isolation `run` would use now ("bwrap" or "unshare"), or None where neither works."""
    return next((name for name in BACKENDS if _backend_problem(name) is None), None)


def python_executable() -> str:
    """The real interpreter behind this one (a venv's base Python): what `run_python` runs inside the sandbox."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


# ---------------------------------------------------------------------------------------------- choosing
def _choose_backend(backend: str | None, allow_unsandboxed: bool) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"sandbox.run: backend={backend!r}; choose one of {BACKENDS} or None (automatic)")
        problem = _backend_problem(backend)
        if problem:
            raise SandboxUnavailable(f"sandbox backend {backend} does not work here ({problem}); {_FIX}")
        return backend
    problems = {}
    for name in BACKENDS:
        problems[name] = _backend_problem(name)
        if problems[name] is None:
            return name
    why = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
    if not allow_unsandboxed:
        raise SandboxUnavailable(f"no OS sandbox for untrusted code on this machine ({why}); {_FIX}")
    _warn_unsandboxed(why)
    return "none"


@functools.cache
def _warn_unsandboxed(why: str) -> None:
    warnings.warn(f"modules.sandbox: no OS isolation ({why}); running untrusted code with rlimits only "
                  "(allow_unsandboxed=True): it can read your files, use the network and signal your processes",
                  RuntimeWarning, stacklevel=4)


def _backend_problem(name: str) -> str | None:
    """None when `name` works here, else why not. Tools are looked up on every call, the probe run once each."""
    tools = {"bwrap": ("bwrap",), "unshare": ("unshare", "mount", "chroot", "setpriv", "sh")}[name]
    if os.geteuid() == 0 and "setpriv" not in tools:
        tools += ("setpriv",)
    found = []
    for tool in tools:
        path = shutil.which(tool, path=_HOST_PATH)
        if path is None:
            return f"{tool} not found"
        found.append(path)
    return _probe(name, tuple(found), os.geteuid())


@functools.cache
def _probe(name: str, tools: tuple[str, ...], euid: int) -> str | None:
    try:
        result = _execute(name, ["true"], {}, {"RLIMIT_NPROC": 16}, timeout=20.0, disk_bytes=1 << 20,
                          max_output_bytes=2000, ro_paths=())
    except OSError as exc:
        return f"cannot start it: {exc}"
    if result.returncode == 0:
        return None
    first = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[0].strip()
    return f"a test run failed: {first}"


# ---------------------------------------------------------------------------------------------- the view
def _visible_paths(ro_paths: tuple[str, ...]) -> list[str]:
    """Host paths shown read-only at the same place, parents before children, without duplicates."""
    python = python_executable()
    wanted = [*_SYSTEM_PATHS, *(f"/etc/{name}" for name in _ETC_FILES),
              os.path.realpath(sys.base_prefix), os.path.dirname(python), *map(os.path.abspath, ro_paths)]
    out: list[str] = []
    for path in wanted:
        if not os.path.lexists(path):
            continue
        if any(path == seen or path.startswith(seen.rstrip("/") + "/") for seen in out
               if not os.path.islink(seen)):
            continue
        out.append(path)
    return out


def _dropper(root: bool, userns: bool) -> list[str]:
    """setpriv in front of the launcher: as root, become nobody without capabilities; in a user namespace made
    by unshare, keep uid 0 there but without capabilities (noroot: exec grants none)."""
    setpriv = shutil.which("setpriv", path=_HOST_PATH) or "/usr/bin/setpriv"
    if root:
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    if userns:
        return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked,+keep_caps_locked",
                "--"]
    return []


def _bwrap_command(root: bool, visible: list[str], files: dict[str, str], disk_bytes: int,
                   inner: list[str]) -> list[str]:
    cmd = [shutil.which("bwrap", path=_HOST_PATH) or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if root:  # privileged bwrap: the capabilities setpriv needs to drop to nobody (bwrap drops all others)
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    made: set[str] = set()
    for path in visible:  # parents bwrap would create with the host's modes (/root: 0700, closed to nobody)
        parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "/" and str(p) not in made]
        for parent in parents:
            cmd += ["--perms", "0755", "--dir", parent]
        made.update(parents)
        cmd += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "0777" if root else "0700", "--size", str(disk_bytes),
            "--tmpfs", WORKDIR]
    for name, host in files.items():
        cmd += ["--ro-bind", host, f"{WORKDIR}/{name}"]
    cmd += ["--symlink", WORKDIR, "/tmp", "--chdir", WORKDIR, "--", *_dropper(root, userns=False), *inner]
    return cmd


def _unshare_command(root: bool, visible: list[str], files: dict[str, str], disk_bytes: int, inner: list[str],
                     newroot: str) -> list[str]:
    q = shlex.quote
    owner = f"uid={NOBODY},gid={NOBODY}," if root else ""
    lines = ["set -eu", "umask 022", f"R={q(newroot)}", 'mount -t tmpfs -o mode=0755,size=1m r1-sandbox-root "$R"']
    for path in visible:
        target = '"$R"' + q(path)
        lines.append(f"mkdir -p \"$R\"{q(os.path.dirname(path))}")
        if os.path.islink(path):
            lines.append(f"ln -s {q(os.readlink(path))} {target}")
            continue
        lines.append(f"mkdir {target}" if os.path.isdir(path) else f"touch {target}")
        lines.append(f"mount --bind {q(path)} {target}")
        lines.append(f"mount -o remount,bind,ro,nosuid,nodev {target}")
    lines += ['mkdir "$R/proc" "$R/dev" "$R/sandbox"', 'mount -t proc -o nosuid,nodev,noexec proc "$R/proc"']
    for device in _DEVICES:
        lines += [f'touch "$R/dev/{device}"', f'mount --bind /dev/{device} "$R/dev/{device}"']
    lines.append(f'mount -t tmpfs -o {owner}mode=0700,size={disk_bytes},nosuid,nodev r1-sandbox "$R{WORKDIR}"')
    for name, host in files.items():
        target = f'"$R{WORKDIR}/"{q(name)}'
        lines += [f"touch {target}", f"mount --bind {q(host)} {target}",
                  f"mount -o remount,bind,ro,nosuid,nodev {target}"]
    lines += [f'ln -s {WORKDIR} "$R/tmp"', 'mount -o remount,bind,ro,nosuid,nodev "$R"',
              "exec chroot \"$R\" " + " ".join(q(a) for a in (*_dropper(root, userns=not root), *inner))]
    tool = shutil.which("unshare", path=_HOST_PATH) or "unshare"
    namespaces = ["--pid", "--net", "--ipc", "--uts", "--mount", "--cgroup"]
    if not root:
        namespaces = ["--user", "--map-root-user", *namespaces]
    return [tool, *namespaces, "--fork", "--kill-child", "--propagation", "private", "--",
            shutil.which("sh", path=_HOST_PATH) or "/bin/sh", "-c", "\n".join(lines)]


# ---------------------------------------------------------------------------------------------- running
def _execute(backend: str, argv: list[str], files: Mapping[str, str | bytes], limits: dict[str, int], *,
             timeout: float, disk_bytes: int, max_output_bytes: int, ro_paths: tuple[str, ...]) -> SandboxResult:
    started = time.perf_counter()
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="r1_sandbox_") as tmp:
        os.chmod(tmp, 0o711)
        inputs = os.path.join(tmp, "input")
        os.mkdir(inputs, 0o755)
        host_files = {}
        for name, content in files.items():
            host_files[name] = os.path.join(inputs, name)
            with open(host_files[name], "wb") as fh:
                fh.write(content.encode("utf-8") if isinstance(content, str) else bytes(content))
            os.chmod(host_files[name], 0o644)
        cwd = WORKDIR
        popen_extra: dict = {}
        if backend == "none":
            cwd = os.path.join(tmp, "work")
            os.mkdir(cwd, 0o700)
            for name, host in host_files.items():
                shutil.copyfile(host, os.path.join(cwd, name))
            if root and _others_can_run(argv[0], env_path="/usr/local/bin:/usr/bin:/bin"):
                for path in (cwd, *(os.path.join(cwd, n) for n in host_files)):
                    os.chown(path, NOBODY, NOBODY)
                popen_extra = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8"}
        spec = json.dumps({"limits": limits, "cwd": cwd, "env": env, "argv": argv, "init": backend == "unshare"})
        inner = [python_executable(), "-I", "-S", "-B", "-c", _LAUNCHER, spec]
        visible = _visible_paths(ro_paths)
        if backend == "bwrap":
            cmd = _bwrap_command(root, visible, host_files, disk_bytes, inner)
        elif backend == "unshare":
            newroot = os.path.join(tmp, "root")
            os.mkdir(newroot, 0o700)
            cmd = _unshare_command(root, visible, host_files, disk_bytes, inner, newroot)
        else:
            cmd = inner
        # The tool itself gets no variable of ours either (tokens in the trainer's environment stay here).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": _HOST_PATH, "LANG": "C.UTF-8"}, cwd=tmp,
                                close_fds=True, start_new_session=True, **popen_extra)
        stdout, stderr, truncated, timed_out = _collect(proc, timeout, max_output_bytes)
        returncode = proc.returncode
    if backend != "none" and returncode is not None and 128 < returncode < 128 + signal.NSIG and not timed_out:
        returncode = 128 - returncode  # the namespace's init reports a program killed by signal N as 128 + N
    return SandboxResult(returncode=returncode, stdout=stdout.decode("utf-8", errors="replace"),
                         stderr=stderr.decode("utf-8", errors="replace"), timed_out=timed_out,
                         seconds=time.perf_counter() - started, truncated=truncated, backend=backend)


def _others_can_run(program: str, env_path: str) -> bool:
    """Whether uid 65534 could exec `program` (and this interpreter): every directory on the way o+x."""
    paths = [shutil.which(program, path=env_path) or program, python_executable()]
    for path in paths:
        full = Path(os.path.realpath(path))
        if not full.is_file() or not all(os.stat(d).st_mode & 0o001 for d in (full, *full.parents)):
            return False
    return True


def _collect(proc: subprocess.Popen, timeout: float, limit: int) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes (keeping `limit` bytes each) until the program's end or the deadline, then make sure
    nothing of the sandbox is left: SIGKILL the tool's process group (its PID-namespace init dies with it)."""
    deadline = time.monotonic() + timeout
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = timed_out = False
    exited_at = None
    with selectors.DefaultSelector() as selector:
        for pipe in kept:
            selector.register(pipe, selectors.EVENT_READ)

        def read(until: float, keep: bool) -> bool:  # False once both pipes are at end of file
            nonlocal truncated
            for key, _ in selector.select(timeout=max(0.0, min(0.1, until - time.monotonic()))):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = kept[key.fileobj]
                room = limit - len(buffer) if keep else 0
                truncated |= len(chunk) > room
                buffer += chunk[:max(room, 0)]
            return bool(selector.get_map())

        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and _exited(proc):
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # the program is gone; only an escaped descendant (no isolation) still holds a pipe
            if now >= deadline:
                timed_out = True
                break
            read(deadline, keep=True)
        while not timed_out and not _exited(proc):  # pipes closed: the tool is reporting the exit status
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(0.005)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet, so the group id is still ours
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        # Every process of the sandbox holds the pipes: their end of file says the namespace is gone.
        grace = time.monotonic() + 2.0
        while time.monotonic() < grace and read(grace, keep=not timed_out):
            pass
    for pipe in kept:
        pipe.close()
    if timed_out:
        proc.returncode = -signal.SIGKILL
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), truncated, timed_out


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it (its pid stays ours for the final killpg)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


__all__ = [
    "BACKENDS",
    "WORKDIR",
    "SandboxResult",
    "SandboxUnavailable",
    "available_backend",
    "python_executable",
    "run",
    "run_python",
]
