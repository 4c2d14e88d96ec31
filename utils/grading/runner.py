"""The process side of the grader: ``python -I -B -m utils.grading.runner --zygote FD``.

A ZYGOTE is started once per grading worker with a minimal environment and ``-I`` (so neither its
folder nor PYTHON* variables are on the import path: ``utils`` is the installed course package).
It imports what every submission of the chapter needs (torch, the course package, the modules
the trusted notebook imports, IPython), then forks one child per submission on request: the
imports are paid once, not once per student. It never runs student code itself.

Each CHILD (one submission, see ``serve``):

1. starts its own session; gets its stdin (the submission's request), its result pipe and its
   output pipe from the grader (file descriptors passed over the zygote's control socket);
2. enters the sandbox (``jail``): new user, mount, pid and network namespaces (the submission's
   code runs as pid 1 of its own namespace, seeing no other process), hidden files, a read-only
   filesystem but for its scratch folder; or, in the basic sandbox under a root grader, becomes an
   unprivileged user of its own (``privileges``); then limits and the audit hook;
3. writes the copy of the submission into its scratch folder and runs its non-test cells in an
   IPython shell, one by one, as a notebook would (an error in a cell is reported and the next
   cell runs; graded test cells are never sent, so no check runs here);
4. calls the student's functions on the grader's arguments and sends back each output; each call
   runs under the tripwire's mark (``tripwire.Tripwire.graded``), so a reference of the chapter
   running anywhere beneath it taints that case, whoever calls the reference.

Frames go back on the result pipe (``codec``): the pid to watch, a cell or call starting (the grader
enforces the time limits from these), its end, each result and every refused action. Nothing is
compared here: the expected values never exist in this process.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time

PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- frames (stdlib only)


def _read_exact(fd: int, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError("truncated request")
        data += chunk
    return bytes(data)


def read_frame(fd: int) -> tuple[dict, bytes]:
    (length,) = struct.unpack(">I", _read_exact(fd, 4))
    header = json.loads(_read_exact(fd, length))
    size = header.get("blob", 0)
    return header, _read_exact(fd, size) if size else b""


def make_sender(fd: int):
    def send(message: dict, payload: bytes = b"") -> None:
        if payload:
            message = dict(message, blob=len(payload))
        data = json.dumps(message).encode()
        view = memoryview(struct.pack(">I", len(data)) + data + payload)
        while view:
            view = view[os.write(fd, view):]

    return send


# --------------------------------------------------------------------------- the zygote


def _preload_common() -> None:
    """What every chapter needs; imported while the grader is still planning."""
    import torch

    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    from IPython.core.interactiveshell import InteractiveShell  # noqa: F401

    import utils.checks.core  # noqa: F401 (imported before the jail, so the child finds it loaded)
    from utils.grading import codec, jail  # noqa: F401


def _preload(work: dict):
    """Everything this chapter's cells import, and an IPython shell (copied into each child)."""
    import importlib

    for name in work.get("imports", []):  # what the chapter itself imports (the trusted notebook's list)
        try:
            importlib.import_module(name)
        except ImportError:
            continue  # "from X import name" where name is not a module
        except Exception as e:  # a broken module: the cell that imports it reports the error itself
            print(f"zygote: importing {name} failed ({type(e).__name__}: {e})", file=sys.stderr)
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.InteractiveShell.colors = "NoColor"
    cfg.InteractiveShell.autocall = 0
    return InteractiveShell.instance(config=cfg)


def zygote(control_fd: int) -> None:
    import select
    import socket

    _preload_common()
    work, blob = read_frame(0)
    shell = _preload(work)
    from utils.grading import codec

    tensors = codec.tensors_from_bytes(blob)
    sock = socket.socket(fileno=control_fd)
    sock.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            try:
                msg, fds, _, _ = socket.recv_fds(sock, 4096, 3)
            except OSError:
                msg, fds = b"", []
            if not msg:  # the grader went away: so do we, and every submission still running
                for pid in children:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass  # that submission has already ended
                os._exit(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    sock.close()
                    _child(fds, work, tensors, shell)
                finally:
                    os._exit(70)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            sock.send(json.dumps({"spawned": pid}).encode())
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            sock.send(json.dumps({"exited": pid, "status": status}).encode())


# --------------------------------------------------------------------------- one submission

_INTERRUPTED = [False]  # the grader's SIGINT arrived (a KeyboardInterrupt the student raised is theirs)


def _on_sigint(signum, frame):
    _INTERRUPTED[0] = True
    raise KeyboardInterrupt


def _describe(exc: BaseException) -> str:
    """``Type: message`` of what a cell raised, whatever its ``__str__`` does."""
    try:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    except BaseException:  # a hostile __str__ (raising, even SystemExit): the type alone
        return f"{type(exc).__name__} (its message could not be read)"


def _child(fds: list, work: dict, tensors: dict, shell) -> None:
    """A forked child of the zygote: becomes the submission's process (never returns)."""
    import ctypes

    os.setsid()  # its own process group: the grader kills the whole group
    # The grader stops a slow cell or call with SIGINT, which must raise KeyboardInterrupt here. Set
    # that up explicitly: a Python started with SIGINT ignored (as a child of some shells, CI
    # runners and test harnesses) keeps it ignored, and forks inherit that and any blocked mask.
    signal.signal(signal.SIGINT, _on_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the zygote
    stdin_fd, result_fd, out_fd = fds
    os.dup2(stdin_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(result_fd, 3)
    for fd in set(fds) - {0, 1, 2, 3}:
        os.close(fd)
    os.closerange(4, 1024)
    send = make_sender(3)
    header, _ = read_frame(0)
    config = header["config"]
    try:
        for procs in config.get("cgroups", []):  # the grader's cgroup for this submission, joined first
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if config["sandbox"] == "namespace":
            from utils.grading import jail

            pid = jail.fork_into_namespaces(libc)  # the grandchild is pid 1 of the new pid namespace
            if pid:
                send({"t": "pid", "pid": pid})
                os.close(0)
                os.close(3)
                _, status = os.waitpid(pid, 0)
                if os.WIFSIGNALED(status):
                    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
                    os.kill(os.getpid(), os.WTERMSIG(status))
                os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 71)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            jail.enter_namespace(config["scratch"], config["hide_dirs"], config["hide_files"], config["scratch_mb"],
                                 mount_proc=True)
        else:
            send({"t": "pid", "pid": os.getpid()})
            os.makedirs(config["scratch"], exist_ok=True)
            if config.get("unprivileged"):  # a root grader: from here on, a user of its own (privileges)
                from utils.grading import privileges

                privileges.drop(config["scratch"], *config["unprivileged"])
        serve(header, work, tensors, shell, send)
    except BaseException as e:
        try:
            send({"t": "fatal", "error": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(3)
    os._exit(0)


def _raised(raised_message, exc: BaseException) -> str:
    """What the student's function raised, in at most 2000 characters (whatever its __str__ does)."""
    try:
        return raised_message("{exercise}", exc)[:2000]
    except BaseException:  # a hostile __str__ or __repr__: the type alone
        return f"{{exercise}}: your function raised {type(exc).__name__}"[:2000]


def serve(header: dict, work: dict, tensors: dict, shell, send) -> None:
    started = time.perf_counter()
    config = header["config"]
    scratch = config["scratch"]
    os.chdir(scratch)
    env = dict(config["env"])
    os.environ.clear()
    os.environ.update(env)
    import tempfile

    tempfile.tempdir = None
    for sub in ("tmp", ".config", ".cache", ".ipython"):
        os.makedirs(sub, exist_ok=True)
    with open(config["notebook_name"], "w", encoding="utf-8") as f:  # the scratch copy of the submission
        f.write(header["notebook"])

    import torch

    import utils
    from utils.checks.core import raised_message
    from utils.grading import codec, jail

    if os.path.realpath(utils.__file__).startswith(os.path.realpath(scratch)):
        raise RuntimeError(f"utils imported from the scratch directory ({utils.__file__})")
    from utils.grading import tripwire

    # Before any student code: the chapter's references note their use, their source is unreadable.
    wire = tripwire.install(work["checks_module"]) if work.get("checks_module") else tripwire.Tripwire()
    tripwire.block_source_reads(lambda what: send({"t": "violation", "what": what}))
    jail.set_limits(int(config["memory_mb"]) * 2**20, int(config["fsize_mb"]) * 2**20, int(config["cpu_seconds"]))
    if config.get("seccomp"):  # the kernel's wall under the audit hook (before it: it uses ctypes)
        from utils.grading import seccomp

        seccomp.install()
    jail.install_guard(scratch, config["protected"], lambda what: send({"t": "violation", "what": what}))
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    send({"t": "ready", "setup_s": time.perf_counter() - started, "rss": rss})

    # ------------------------------------------------------------------ the notebook's own cells
    cells_s = 0.0
    for cell in header["cells"]:
        send({"t": "cell", "i": cell["index"], "phase": "start"})
        t0 = time.perf_counter()
        error = None
        try:
            result = shell.run_cell(cell["source"], store_history=False, silent=False)
            exc = result.error_before_exec or result.error_in_exec
            if exc is not None:
                error = _describe(exc)
        except BaseException as exc:  # KeyboardInterrupt outside IPython's own handler: a timeout
            error = _describe(exc)
        dt = time.perf_counter() - t0
        cells_s += dt
        send({"t": "cell", "i": cell["index"], "phase": "end", "error": error, "seconds": dt})

    # ------------------------------------------------------------------ the calls the grader asked for
    calls_s = 0.0
    namespace = shell.user_ns
    stuck: set = set()  # symbols whose call timed out once: their other calls are not attempted
    for k, req in enumerate(work["requests"]):
        send({"t": "call", "k": k, "phase": "start"})
        t0 = time.perf_counter()
        symbol = req["symbol"]
        out: dict = {"t": "result", "k": k}
        payload = b""
        try:
            if symbol in stuck:
                out["error"] = {"kind": "timeout"}
            elif symbol not in namespace:
                out["error"] = {"kind": "missing"}
            elif req["kind"] == "value":
                value_tensors: dict = {}
                out["value"] = codec.encode(namespace[symbol], value_tensors)
                payload = codec.tensors_to_bytes(value_tensors)
            else:
                fn = namespace[symbol]
                if not callable(fn):
                    out["error"] = {"kind": "not_callable", "type": type(fn).__name__}
                else:
                    args, kwargs = codec.decode(req["call"], tensors)
                    if req.get("rng") is not None:
                        torch.set_rng_state(tensors[req["rng"]])
                    # The mark: a reference of the chapter running anywhere beneath this call (or
                    # while its output is encoded: a lazy value) taints the case, whoever calls it.
                    with wire.graded() as used_references:
                        try:
                            _INTERRUPTED[0] = False
                            try:
                                with torch.no_grad():
                                    got = fn(*args, **kwargs)
                            except NotImplementedError:
                                out["error"] = {"kind": "not_implemented"}
                            except KeyboardInterrupt as exc:
                                if _INTERRUPTED[0]:  # the grader's interrupt: out of time
                                    out["error"] = {"kind": "timeout"}
                                    stuck.add(symbol)
                                else:  # raised by the student's own code: an error like any other
                                    out["error"] = {"kind": "raised", "message": _raised(raised_message, exc)}
                            except MemoryError:
                                out["error"] = {"kind": "memory"}
                            except BaseException as exc:  # SystemExit included: the student's bug
                                out["error"] = {"kind": "raised", "message": _raised(raised_message, exc)}
                            else:
                                out_tensors: dict = {}
                                out["value"] = codec.encode(got, out_tensors)
                                payload = codec.tensors_to_bytes(out_tensors)
                        finally:
                            if used_references:
                                out["used_reference"] = sorted(used_references)
        except KeyboardInterrupt:
            out, payload = {"t": "result", "k": k, "error": {"kind": "timeout"}}, b""
            stuck.add(symbol)
        except BaseException as exc:  # a value that broke the encoder (a hostile __len__, ...)
            out, payload = {"t": "result", "k": k, "error": {"kind": "unsendable", "type": type(exc).__name__}}, b""
        dt = time.perf_counter() - t0
        calls_s += dt
        out["seconds"] = dt
        try:
            send(out, payload)
        except (OSError, ValueError, TypeError):  # an unencodable header: report the call as unsendable
            send({"t": "result", "k": k, "error": {"kind": "unsendable", "type": "header"}, "seconds": dt})
    send({"t": "done", "cells_s": cells_s, "calls_s": calls_s})
    try:
        sys.stdout.flush()  # sys.stdout may be the submission's own object, raising anything
    finally:
        os._exit(0)  # whatever it raised; and skip atexit handlers and finalizers a submission may have registered


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--zygote":
        zygote(int(sys.argv[2]))
    else:
        sys.exit("usage: python -I -B -m utils.grading.runner --zygote FD (started by utils.grading.sandbox)")
