"""Start one submission's process and watch it: time limits per cell and in total, a memory
watchdog, a cap on what it may send back. Grader side; ``runner`` is the process side and ``jail``
the walls.

Processes come from a ZYGOTE (``runner.zygote``): one per grading worker, it pays the imports once
and forks a fresh child per submission. The zygote is trusted code started with a minimal
environment; no student code ever runs in it.

Longer than 400 lines because it is the grader's whole side of one child process (the zygote that
starts it, the probes for which walls the kernel allows, the watchdog loop, the protocol of what
comes back), and those parts share the limits and the child's state.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.grading import codec

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Limits:
    timeout_cell: float = 120.0  # seconds per notebook cell, and per call of a student's function
    timeout_total: float = 600.0  # seconds for the whole submission
    memory_mb: int = 4096  # what the submission may allocate on top of Python + torch + the course
    scratch_mb: int = 512  # size of its scratch directory (namespace sandbox)
    fsize_mb: int = 256  # largest file it may write
    output_mb: int = 512  # most it may send back
    grace: float = 5.0  # seconds between the interrupt of a slow cell and the kill
    setup_timeout: float = 60.0  # from the fork to the first cell (counts towards timeout_total)
    threads: int = 1
    max_threads: int = 64  # threads the submission's process may run at once (it cannot start processes)
    cgroup: bool = True  # a memory + task cgroup per submission where the machine allows one (see cgroup.py)


@dataclass
class RunResult:
    """What came back from one submission's process."""

    ended: str = "done"  # done | timeout | memory | threads | crashed | fatal | protocol | output
    detail: str = ""
    ready: bool = False
    cells: dict = field(default_factory=dict)  # cell index -> {"error": str|None, "seconds": float}
    timed_out_cells: list = field(default_factory=list)
    results: dict = field(default_factory=dict)  # request index -> (header, tensors)
    timed_out_calls: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    exit_code: Optional[int] = None
    wall_s: float = 0.0
    setup_s: float = 0.0
    cells_s: float = 0.0
    calls_s: float = 0.0
    peak_rss_mb: float = 0.0
    cgroup: bool = False  # whether a memory cgroup held the run
    output_tail: str = ""
    last_phase: Optional[tuple] = None  # ("cell", index) or ("call", k) when it stopped early


class SandboxError(RuntimeError):
    """The grader could not start a submission's process (never the submission's fault)."""


# --------------------------------------------------------------------------- the environment


def child_env(scratch: str, threads: int) -> dict:
    """The whole environment of a submission's process: nothing of the grader's leaks in."""
    t = str(threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": os.path.join(scratch, "tmp"),
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": os.path.join(scratch, ".cache", "hf"),
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": os.path.join(scratch, ".config", "matplotlib"),
        "XDG_CACHE_HOME": os.path.join(scratch, ".cache"), "XDG_CONFIG_HOME": os.path.join(scratch, ".config"),
        "IPYTHONDIR": os.path.join(scratch, ".ipython"), "DEMYSTIFY_PROGRESS": os.path.join(scratch, "progress.json"),
        "TQDM_DISABLE": "1", "PYTHONIOENCODING": "utf-8",
    }


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether a forked child may enter new user, mount, pid, network and IPC namespaces and pivot
    into a new root (checked once, in a throwaway process, by ``jail.probe``: the very steps the
    runner takes)."""
    if not sys.platform.startswith("linux"):
        return False
    probe = "from utils.grading import jail; raise SystemExit(jail.probe())"
    try:
        return subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def namespaces_missing_reason() -> str:
    """Why unprivileged user namespaces fail here, as far as the kernel's settings tell."""
    for path, bad in (("/proc/sys/kernel/unprivileged_userns_clone", "0"), ("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        try:
            if Path(path).read_text().strip() == bad:
                return f"{path} is {bad}"
        except OSError:
            continue
    return "the kernel or the container refuses unprivileged user and mount namespaces"


def resolve_sandbox(choice: str) -> str:
    """``auto`` is the namespace sandbox or a refusal: untrusted work never falls back to ``basic``
    silently, since there a native extension could still write files; ``basic`` is the
    instructor's explicit choice. The namespace sandbox also needs the seccomp filter (no new
    processes, no uncounted memory; see ``seccomp``)."""
    from utils.grading import seccomp

    if choice in ("auto", "namespace") and not namespaces_available():
        raise RuntimeError(f"--sandbox {choice}: user namespaces are not available here "
                           f"({namespaces_missing_reason()}), so submissions cannot be isolated. Grade on a "
                           "machine that allows them, or pass --sandbox basic to accept the weaker sandbox "
                           "(an audit hook and process limits; fine for trusted submissions)")
    if choice in ("auto", "namespace") and not seccomp.available():
        raise RuntimeError(f"--sandbox {choice}: the kernel refuses a seccomp filter here (Linux x86_64 or "
                           "aarch64 with seccomp is needed), so a submission could start processes and hold "
                           "memory no limit counts. Grade on a machine that allows it, or pass --sandbox basic "
                           "(fine for trusted submissions)")
    return "namespace" if choice == "auto" else choice


# --------------------------------------------------------------------------- the zygote


class Zygote:
    """A pre-imported process that forks one child per submission (see runner.zygote).

    Started as soon as the grader knows where its scratch folders go; it imports torch and the
    course package while the grader plans the chapter, then ``load`` hands it the chapter's
    requests. ``spawn`` and ``exit_status`` may be called from several threads."""

    def __init__(self, base: str, threads: int = 1):
        self.dir = tempfile.mkdtemp(prefix="zygote-", dir=base)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.lock = threading.Lock()
        self.exits: dict[int, int] = {}
        self.ready = False
        self.log = open(os.path.join(self.dir, "zygote.log"), "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-m", "utils.grading.runner", "--zygote", str(theirs.fileno())],
                stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=(theirs.fileno(),),
                cwd=self.dir, env=child_env(self.dir, threads), start_new_session=True)
        finally:
            theirs.close()

    def load(self, work_frame: bytes, timeout: float = 300.0) -> None:
        """Send the chapter's requests; returns once the zygote has imported everything."""
        try:
            self.proc.stdin.write(work_frame)
            self.proc.stdin.close()
        except OSError:
            pass  # the zygote died while starting: no "ready" comes, and the error below quotes its log
        with self.lock:
            message = self._receive(timeout)
        if not message or not message.get("ready"):
            self.close()
            raise SandboxError(f"the grader's zygote process did not start: {self.log_tail()}")
        self.ready = True

    def log_tail(self) -> str:
        try:
            with open(self.log.name, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _receive(self, timeout: float) -> Optional[dict]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, OSError):
            return None
        if not data:
            return None
        message = json.loads(data)
        if "exited" in message:
            self.exits[message["exited"]] = message["status"]
        return message

    def spawn(self, fds: list[int]) -> int:
        with self.lock:
            socket.send_fds(self.sock, [json.dumps({"spawn": True}).encode()], fds)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = self._receive(max(0.01, deadline - time.monotonic()))
                if message is None:
                    break
                if "spawned" in message:
                    return int(message["spawned"])
        raise SandboxError(f"the zygote did not fork a child: {self.log_tail()}")

    def exit_status(self, pid: int) -> Optional[int]:
        """The child's wait status once it has exited (never blocks)."""
        with self.lock:
            while pid not in self.exits:
                if self._receive(0.0001) is None:
                    break
            return self.exits.pop(pid, None)

    def close(self) -> None:
        # Each step goes ahead whatever the one before it met: an OSError here means already closed or gone.
        if not self.ready and self.proc.poll() is None:  # still importing: nothing to wait for
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.sock.close()  # the zygote sees the grader go and kills what it still runs
        except OSError:
            pass
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- one run


def _rss(pid: Optional[int]) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _threads(pid: Optional[int]) -> int:
    """Threads of ``pid`` (0 when unknown). Under the seccomp filter a submission is one process, so
    its threads are everything it runs; a process-count rlimit would not hold here, since the
    grader may run as root, whom the kernel exempts from RLIMIT_NPROC."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass  # it has just ended
    return 0


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ProtocolError(ValueError):
    """A frame from the submission's process that the runner would never send (so: forged)."""


def _number(header: dict, key: str) -> float:
    value = header.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ProtocolError(f"{key}={str(value)[:40]!r} is not a time in seconds")
    return float(value)


def _text(value, what: str, optional: bool = True) -> None:
    if (value is None and optional) or isinstance(value, str):
        return
    raise ProtocolError(f"{what} is a {type(value).__name__}, not text")


class FrameOrder:
    """What the runner sends after ``ready``, in the only order it sends it: each cell of the plan
    once (start, then end), then calls 0, 1, 2, ... (start, then result), then ``done``. Anything
    else, or a field of the wrong type, is forged and raises ProtocolError: a forged cell end cannot
    restart the per-cell clock, and no malformed field reaches the scoring code."""

    ERROR_KINDS = {"timeout", "missing", "not_callable", "not_implemented", "memory", "raised", "unsendable"}

    def __init__(self, cells: list):
        self.cells = [c["index"] for c in cells]
        self.next_cell = 0
        self.open_cell = None
        self.next_call = 0
        self.open_call = None
        self.finished = False

    def check(self, header: dict) -> None:
        kind = header.get("t")
        if self.finished:
            raise ProtocolError(f"a {str(kind)[:20]!r} message after 'done'")
        if kind == "violation":
            _text(header.get("what"), "a violation's text", optional=False)
        elif kind == "cell":
            i, phase = header.get("i"), header.get("phase")
            if phase == "start":
                if (self.open_cell is not None or self.next_call or self.next_cell >= len(self.cells)
                        or i != self.cells[self.next_cell] or isinstance(i, bool)):
                    raise ProtocolError(f"a start of cell {str(i)[:20]} out of order")
                self.open_cell, self.next_cell = i, self.next_cell + 1
            elif phase == "end":
                if self.open_cell is None or i != self.open_cell or isinstance(i, bool):
                    raise ProtocolError(f"an end of cell {str(i)[:20]} that had not started")
                _text(header.get("error"), "a cell's error")
                _number(header, "seconds")
                self.open_cell = None
            else:
                raise ProtocolError(f"a cell message with phase {str(phase)[:20]!r}")
        elif kind == "call":
            k = header.get("k")
            if (self.open_cell is not None or self.open_call is not None or self.next_cell != len(self.cells)
                    or k != self.next_call or isinstance(k, bool) or header.get("phase") != "start"):
                raise ProtocolError(f"a start of call {str(k)[:20]} out of order")
            self.open_call, self.next_call = k, self.next_call + 1
        elif kind == "result":
            k = header.get("k")
            if self.open_call is None or k != self.open_call or isinstance(k, bool):
                raise ProtocolError(f"a result for call {str(k)[:20]} that had not started")
            error = header.get("error")
            if error is not None:
                if not isinstance(error, dict) or error.get("kind") not in self.ERROR_KINDS:
                    raise ProtocolError(f"a result with error {str(error)[:60]!r}")
                _text(error.get("message"), "an error message")
                _text(error.get("type"), "an error type")
            used = header.get("used_reference")
            if used is not None and not (isinstance(used, list) and all(isinstance(u, str) for u in used)):
                raise ProtocolError("a result whose used_reference is not a list of names")
            _number(header, "seconds")
            self.open_call = None
        elif kind == "done":
            if self.open_cell is not None or self.open_call is not None or self.next_cell != len(self.cells):
                raise ProtocolError("'done' before every cell and call had finished")
            _number(header, "cells_s")
            _number(header, "calls_s")
            self.finished = True
        else:
            raise ProtocolError(f"a message of unknown type {str(kind)[:20]!r}")


# Until the child reports its own footprint ("ready"), its memory limit is the submission's budget
# plus this headroom: it already holds Python, torch and the course package (pages of the zygote it
# was forked from, which its RSS counts) and imports the rest before any student code runs. After
# "ready" the limit is that measured footprint plus the budget.
STARTUP_HEADROOM_MB = 2048


def run(*, zygote: Zygote, submission: dict, limits: Limits) -> RunResult:
    """Run one submission; never raises for anything the submission does (SandboxError when the
    grader itself cannot start it)."""
    watch = _Watch(zygote, submission, limits)
    watch.start()
    watch.watch()
    return watch.collect()


def _send_request(fd: int, submission: dict) -> None:
    """Thread: write the submission's request to its stdin."""
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(codec.pack_frame(submission))
    except OSError:
        pass  # the process died before reading it: the watch loop reports how it ended


def _read_results(fd: int, budget: int, frames: queue.Queue) -> None:
    """Thread: queue each frame from the result pipe, at most ``budget`` bytes of tensors; the
    reader's own notes (``_output``, ``_protocol``) and a final None end the stream."""
    with os.fdopen(fd, "rb", buffering=1 << 16) as stream:
        try:
            while True:
                frame = codec.read_frame(stream, max_blob=budget)
                if frame is None:
                    break
                budget -= len(frame[1])
                frames.put(frame)
                if budget < 0:
                    frames.put(({"t": "_output"}, b""))
                    break
        except codec.CodecError as e:
            frames.put(({"t": "_protocol", "error": str(e)}, b""))
    frames.put(None)


def _keep_tail(fd: int, tail: list) -> None:
    """Thread: read the process's stdout and stderr, keeping about the last 16 kB in ``tail``."""
    size = 0
    with os.fdopen(fd, "rb") as stream:
        for chunk in iter(lambda: stream.read1(4096), b""):
            tail.append(chunk)
            size += len(chunk)
            while size > 16384 and len(tail) > 1:
                size -= len(tail.pop(0))


class _Watch:
    """One submission's process from start to end: ``start`` forks it and starts the threads that
    feed it and read it; ``watch`` handles each frame it sends and enforces the limits (the
    watchdogs) until it has ended; ``collect`` says how it ended, in the RunResult."""

    def __init__(self, zygote: Zygote, submission: dict, limits: Limits):
        from utils.grading import cgroup

        self.zygote, self.limits = zygote, limits
        self.result = RunResult()
        self.started = time.monotonic()
        self.scratch_bytes = limits.scratch_mb * 2**20
        self.group = cgroup.create((limits.memory_mb + STARTUP_HEADROOM_MB) * 2**20 + self.scratch_bytes,
                                   limits.max_threads + 8) if limits.cgroup else None
        if self.group is not None:  # the process joins it itself, before any student code runs (runner._child)
            submission = dict(submission, config=dict(submission["config"], cgroups=self.group.procs_files))
        self.submission = submission
        self.result.cgroup = self.group is not None
        self.frames: queue.Queue = queue.Queue()
        self.tail: list[bytes] = []
        self.pid: Optional[int] = None  # the process that runs the notebook (pid 1 of its namespace)
        self.phase: Optional[tuple] = ("setup", None)
        self.phase_start = self.started
        self.interrupted_at: Optional[float] = None
        self.rss_limit = (limits.memory_mb + STARTUP_HEADROOM_MB) * 2**20  # until the child reports its footprint
        self.reader_done = False
        self.status: Optional[int] = None
        self.exited_at: Optional[float] = None
        self.done = False
        self.killed: Optional[tuple] = None
        self.order = FrameOrder(submission.get("cells", []))

    # ----------------------------------------------------------------------- start

    def start(self) -> None:
        stdin_r, stdin_w = os.pipe()
        result_r, result_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            self.leader = self.zygote.spawn([stdin_r, result_w, out_w])
        finally:
            for fd in (stdin_r, result_w, out_w):
                os.close(fd)
        self.threads = [threading.Thread(target=_send_request, args=(stdin_w, self.submission), daemon=True),
                        threading.Thread(target=_read_results, daemon=True,
                                         args=(result_r, self.limits.output_mb * 2**20, self.frames)),
                        threading.Thread(target=_keep_tail, args=(out_r, self.tail), daemon=True)]
        for t in self.threads:
            t.start()

    def kill(self, reason: str, detail: str) -> None:
        if self.killed is None:
            self.killed = (reason, detail)
            self.result.last_phase = self.phase
        _kill_group(self.leader, signal.SIGKILL)

    # ----------------------------------------------------------------------- the loop

    def watch(self) -> None:
        """Until the process has ended: a frame (or 50 ms of silence), then the watchdogs."""
        try:
            while True:
                try:
                    item = self.frames.get(timeout=0.05)
                except queue.Empty:
                    item = "idle"
                now = time.monotonic()
                if item is None:
                    self.reader_done = True
                elif item != "idle":
                    header, blob = item
                    if not self._accept(header):
                        continue
                    self._handle(header, blob, now)
                if self.status is None:
                    self.status = self.zygote.exit_status(self.leader)
                    if self.status is not None:
                        self.exited_at = now
                if self.killed is None and self.status is None:
                    self._watch_time(now)
                    self._watch_memory_and_threads()
                if self.status is not None and (self.reader_done or now - self.exited_at > 5):
                    break  # (a leftover grandchild holding the pipe open cannot keep us here)
                if not self.zygote.alive() and self.status is None:
                    self.kill("fatal", "the grader's zygote process died")
                    break
        finally:
            if self.status is None:
                _kill_group(self.leader, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while self.status is None and time.monotonic() < deadline and self.zygote.alive():
                    self.status = self.zygote.exit_status(self.leader)
                    time.sleep(0.01)

    def _accept(self, header: dict) -> bool:
        """False (and the process killed) for a frame the runner would never send at this point."""
        kind = header.get("t")
        if kind in ("_output", "_protocol"):
            return True  # the reader's own notes, handled with the others
        if self.result.ready and kind in ("pid", "ready", "fatal"):
            # only the runner sends these, before any student code runs: a later one is forged
            self.kill("protocol", f"sent a forged {kind!r} control message")
            return False
        if self.result.ready:
            try:
                self.order.check(header)
            except ProtocolError as e:
                self.kill("protocol", f"sent a message the grader never asked for ({e})")
                return False
        return True

    def _enter(self, phase: tuple, now: float) -> None:
        self.phase, self.phase_start, self.interrupted_at = phase, now, None

    def _handle(self, header: dict, blob: bytes, now: float) -> None:
        result, kind = self.result, header.get("t")
        if kind == "pid" and self.pid is None:
            self.pid = header.get("pid") if isinstance(header.get("pid"), int) and header["pid"] > 0 else None
        elif kind == "ready":
            result.ready = True
            result.setup_s = float(header.get("setup_s", 0))
            self.rss_limit = int(header.get("rss", 0)) + self.limits.memory_mb * 2**20 + 256 * 2**20
            if self.group is not None:  # every page it allocates from now on, its scratch files included
                self.group.set_memory_limit(self.rss_limit + self.scratch_bytes)
            self._enter(("between", None), now)
        elif kind == "cell":
            i = header.get("i")
            if header.get("phase") == "start":
                self._enter(("cell", i), now)
            else:
                result.cells[i] = {"error": header.get("error"), "seconds": float(header.get("seconds", 0.0))}
                self._enter(("between", None), now)
        elif kind == "call":
            self._enter(("call", header.get("k")), now)
        elif kind == "result":
            k = header.get("k")
            try:
                result.results[k] = (header, codec.tensors_from_bytes(blob))
            except codec.CodecError as e:
                result.results[k] = ({"t": "result", "k": k, "error": {"kind": "unsendable", "type": str(e)[:100]}}, {})
            self._enter(("between", None), now)
        elif kind == "violation":
            if len(result.violations) < 50:
                result.violations.append(str(header.get("what", ""))[:300])
        elif kind == "done":
            result.cells_s = float(header.get("cells_s", 0))
            result.calls_s = float(header.get("calls_s", 0))
            self.done = True
            self.phase = None
        elif kind == "fatal":
            self.kill("fatal", str(header.get("error", ""))[:500])
        elif kind == "_output":
            self.kill("output", f"sent back more than {self.limits.output_mb} MB")
        elif kind == "_protocol":
            self.kill("protocol", f"broke the result stream ({header.get('error')})")

    # ----------------------------------------------------------------------- the watchdogs

    def _watch_time(self, now: float) -> None:
        """The total and per-phase clocks: a slow cell or call is interrupted first, killed after the grace."""
        limits, phase = self.limits, self.phase
        if now - self.started > limits.timeout_total:
            self.kill("timeout", f"the whole notebook ran longer than {limits.timeout_total:g} s")
            return
        if phase is None:
            return
        limit = limits.setup_timeout if phase[0] == "setup" else limits.timeout_cell
        if now - self.phase_start <= limit:
            return
        if phase[0] == "setup":
            self.kill("timeout", f"start-up took longer than {limit:g} s")
        elif phase[0] == "between":  # the runner moves on at once; silence here is forged
            self.kill("timeout", f"sent nothing for {limit:g} s between cells")
        elif self.interrupted_at is None:
            (self.result.timed_out_cells if phase[0] == "cell" else self.result.timed_out_calls).append(phase[1])
            self.interrupted_at = now
            if self.pid is not None:
                try:  # like Jupyter's interrupt: the next cell still runs
                    os.kill(self.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass  # it has just ended: the loop sees its exit status next
        elif now - self.interrupted_at > min(limits.grace, limit / 2):
            what = f"cell {phase[1]}" if phase[0] == "cell" else "a call of your function"
            self.kill("timeout", f"{what} ran longer than {limit:g} s and ignored the interrupt")

    def _watch_memory_and_threads(self) -> None:
        rss = _rss(self.pid)
        self.result.peak_rss_mb = max(self.result.peak_rss_mb, rss / 2**20)
        if rss > self.rss_limit:
            self.kill("memory", f"used more than the {self.limits.memory_mb} MB memory limit")
        elif _threads(self.pid) > self.limits.max_threads:
            self.kill("threads", f"ran more than {self.limits.max_threads} threads at once")

    # ----------------------------------------------------------------------- collect

    def collect(self) -> RunResult:
        """How the process ended (it has, or was killed), once the threads are done with its pipes."""
        result, group = self.result, self.group
        for t in self.threads:
            t.join(timeout=2)
        if group is not None:
            if self.killed is None and not self.done and group.oom_kills() > 0:
                self.killed = ("memory", f"used more than the {self.limits.memory_mb} MB memory limit (the "
                                         "kernel's memory cgroup stopped it)")
            group.remove()
        result.wall_s = time.monotonic() - self.started
        result.output_tail = b"".join(self.tail).decode("utf-8", errors="replace")[-4000:]
        if self.status is not None:
            result.exit_code = os.waitstatus_to_exitcode(self.status)
        if self.killed is not None:
            result.ended, result.detail = self.killed
        elif not self.done:
            result.last_phase = self.phase
            result.ended, result.detail = _crash(result.exit_code, self.phase)
        return result


def _crash(code: Optional[int], phase: Optional[tuple]) -> tuple[str, str]:
    """``ended`` and ``detail`` for a process that stopped before it finished, unasked."""
    if code == -signal.SIGXCPU:
        return "timeout", "ran out of CPU time"
    if code is not None and code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    where = f" during cell {phase[1]}" if phase and phase[0] == "cell" else (
        " while a function of yours ran" if phase and phase[0] == "call" else "")
    return "crashed", f"the notebook's process {how}{where} before it finished"
