"""How responsive is the workbench? Time to first frame, key-press response while a job saturates the CPU, and the UI
process's memory — measured on the real app in a pseudo-terminal, the way a user runs it.

    .venv/bin/python benchmarks/tui_latency.py [--model demo:smollm2] [--launches 5] [--presses 30]

* first frame: from spawning ``python -m workbench`` until the screen shows its panes (the words "Optimizations"
  and "Model" in the output), over several launches;
* key response: from writing a key (1/2/3 switch tabs) to the pty until the new tab's text arrives, first with no
  job, then while a run of ``--model`` (default demo:smollm2, default bench settings) keeps the CPU busy;
* live update cadence: the longest gap between screen updates while the Live tab shows a running job;
* UI memory: the RSS of the UI process when idle and its peak during the run, and whether torch is mapped into it.

Writes benchmarks/results/tui_latency.json and prints a summary. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(rb"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]|\x1b[\]P^_].*?(?:\x07|\x1b\\)|\x1b[@-Z\\-_]", re.S)
TAB_KEYS = [("2", b"Monitor"), ("3", b"Latency"), ("1", b"Optimizations")]
F5 = "\x1b[15~"


class Term:
    """The app on a pseudo-terminal of a fixed size; reads and writes raw bytes."""

    def __init__(self, args: list[str], env: dict, cols: int = 120, rows: int = 40) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.buf = b""
        self.chunks: list[tuple[float, int]] = []  # (time, bytes) of every read

    def read(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return b""
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:
            return b""
        self.chunks.append((time.perf_counter(), len(data)))
        self.buf += data
        return data

    def wait_for(self, markers: list[bytes], timeout: float, since: int = 0) -> float | None:
        """Seconds until every marker appears in the (de-ANSI'd) output after offset ``since``; None on timeout."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            self.read(0.02)
            text = ANSI.sub(b"", self.buf[since:])
            if all(m in text for m in markers):
                return time.perf_counter() - start
        return None

    def drain(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.read(0.02)

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        try:
            self.send("\x11")  # ctrl+q
            self.drain(0.5)
            if self.proc.poll() is None:
                self.send("\r")  # confirm, if asked
                self.drain(1.0)
        except OSError:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for child in psutil.Process().children(recursive=True):
            child.kill()
        os.close(self.master)


def stats(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"count": 0}
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return {"count": len(values), "median": round(statistics.median(values), 1), "p90": round(p90, 1),
            "min": round(values[0], 1), "max": round(values[-1], 1)}


def press_tabs(term: Term, presses: int, keep_going=lambda: True, gap: float = 0.3) -> list[tuple[str, float]]:
    """(key, ms) for each tab switch that showed its tab within 5 s."""
    out = []
    for i in range(presses):
        if not keep_going():
            break
        key, marker = TAB_KEYS[i % len(TAB_KEYS)]
        since = len(term.buf)
        t = time.perf_counter()
        term.send(key)
        took = term.wait_for([marker], 5.0, since=since)
        if took is not None:
            out.append((key, (time.perf_counter() - t) * 1000))
        term.drain(gap)
    return out


def by_key(samples: list[tuple[str, float]]) -> dict:
    names = {"1": "setup", "2": "live", "3": "results"}
    return {names[k]: stats([ms for kk, ms in samples if kk == k]) for k in names}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_mapped(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo:smollm2", help="the model the CPU-saturating run uses")
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--presses", type=int, default=30)
    ap.add_argument("--opt", default="int8-dynamic", help="optimization switched on (via the command palette)")
    ap.add_argument("--idle-only", action="store_true", help="skip the run (quick look at idle numbers)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tui_latency.json"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="optbench-tui-bench-")
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "OPTBENCH_SESSIONS": f"{tmp}/sessions",
           "OPTBENCH_CONFIG_DIR": f"{tmp}/config", "OPTBENCH_CACHE": f"{tmp}/cache"}
    cmd = [sys.executable, "-m", "workbench"]

    # 1. first frame, cold process each time
    first = []
    for _ in range(args.launches):
        term = Term(cmd, env)
        took = term.wait_for([b"Optimizations", b"Model"], 20.0)
        first.append((time.perf_counter() - term.t0) * 1000 if took is not None else float("nan"))
        term.drain(0.3)
        term.close()

    # 2. idle key response and idle RSS
    term = Term(cmd + ["--model", args.model], env)
    term.wait_for([b"Optimizations"], 20.0)
    term.drain(1.0)
    ui = psutil.Process(term.proc.pid)
    for child in ui.children(recursive=True):  # the inspect job started by --model: let it finish first
        try:
            child.wait(120)
        except psutil.TimeoutExpired:
            pass
    term.drain(0.5)
    idle_rss = ui.memory_info().rss / 2**20
    idle = press_tabs(term, max(9, args.presses // 3))
    if args.idle_only:
        term.close()
        print(json.dumps({"first_frame_ms": stats(first), "idle": stats([ms for _, ms in idle]),
                          "idle_by_tab": by_key(idle), "idle_rss_mb": round(idle_rss, 1)}, indent=1))
        return 0

    # 3. the same while a run saturates the CPU
    term.send("1")
    term.drain(0.3)
    if args.opt:
        term.send("\x10")  # ctrl+p: the command palette
        term.drain(0.5)
        term.send(f"Turn {args.opt} on")
        term.drain(1.0)
        term.send("\r")
        term.drain(0.5)
    run_started_at = len(term.buf)
    term.send(F5)
    job = None
    deadline = time.perf_counter() + 30
    while job is None and time.perf_counter() < deadline:
        term.drain(0.2)
        kids = ui.children(recursive=True)
        job = kids[0] if kids else None
    if job is None:
        print("the run did not start", file=sys.stderr)
        term.close()
        return 1
    job.cpu_percent(None)
    psutil.cpu_percent(None)
    term.drain(3.0)  # past model loading, into benchmarking
    busy_cpu, rss_peak = [], idle_rss

    def running() -> bool:
        nonlocal rss_peak
        if not job.is_running():
            return False
        try:
            busy_cpu.append(psutil.cpu_percent(None))
            rss_peak = max(rss_peak, ui.memory_info().rss / 2**20)
        except psutil.Error:
            return False
        return True

    # live cadence: the Live tab (shown when the run starts) while the job works, no keys pressed
    start = len(term.chunks)
    ui.cpu_percent(None)
    job.cpu_percent(None)
    t_end = time.perf_counter() + 5
    while time.perf_counter() < t_end and job.is_running():
        term.drain(0.25)
    ui_cpu_watching = ui.cpu_percent(None)
    job_cpu_watching = job.cpu_percent(None)
    times = [t for t, _ in term.chunks[start:]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    ui.cpu_percent(None)
    job.cpu_percent(None)
    during = press_tabs(term, args.presses, keep_going=running)
    ui_cpu_pressing = ui.cpu_percent(None)
    torch_in_ui = torch_mapped(ui.pid)
    while job.is_running():
        term.drain(0.5)
    term.drain(1.0)
    screen = ANSI.sub(b"", term.buf[run_started_at:]).decode("utf-8", "replace")
    finished = "Run finished" in screen and "speedup" in screen
    term.close()

    result = {
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    # PYTHONDONTWRITEBYTECODE=1 (set on some machines) makes every launch compile from source
                    "bytecode_written": not os.environ.get("PYTHONDONTWRITEBYTECODE")},
        "terminal": "pty 120x40, TERM=xterm-256color",
        "run": {"model": args.model, "optimization": args.opt, "bench": "defaults"},
        "first_frame_ms": {**stats(first), "runs": [round(v, 1) for v in first]},
        "key_response_ms": {"idle": stats([ms for _, ms in idle]), "during_run": stats([ms for _, ms in during]),
                            "idle_by_tab": by_key(idle), "during_run_by_tab": by_key(during),
                            "what": "tab switch key written to the pty until the new tab's text arrives"},
        "during_run": {"job_cpu_percent_while_watching": round(job_cpu_watching, 1),
                       "ui_cpu_percent_while_watching": round(ui_cpu_watching, 1),
                       "ui_cpu_percent_while_pressing_keys": round(ui_cpu_pressing, 1),
                       "system_cpu_percent_median": round(statistics.median(busy_cpu), 1) if busy_cpu else None,
                       "live_update_max_gap_s": round(max(gaps), 3) if gaps else None,
                       "run_finished_and_shown": finished},
        "ui_rss_mb": {"idle": round(idle_rss, 1), "peak_during_run": round(rss_peak, 1)},
        "torch_mapped_in_ui_process": torch_in_ui,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
