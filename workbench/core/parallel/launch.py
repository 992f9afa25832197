"""Launching a tensor-parallel job, and turning its ranks' endings into the job's one ending. Torch-free: the job
client (core/jobs/client.py) uses it in the front end's process.

A job whose spec asks for a degree N (a ``run`` job's ``recipe.model.tp``, or a spec's own ``tp``) runs as

    python -m torch.distributed.run --nproc_per_node N --master_addr 127.0.0.1 --master_port PORT -m MODULE

with the spec in a file (``OPTBENCH_JOB_SPEC``: N processes cannot share one stdin). Every rank runs the job program;
only rank 0 writes events (core/jobs/child.py), the others' stdout goes nowhere and their stderr reaches the job's
stderr tail. A rank that fails writes one marker line to stderr (``MARKER`` + its error as JSON) and exits; torchrun
then ends the other ranks and prints which rank failed first. ``RankWatch`` reads that stderr and makes the one
``error`` event the job ends with, preferring a rank's own error over what its peers saw after losing it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import tempfile

ENV_TP = "OPTBENCH_TP"  # set for every rank: the degree
ENV_SPEC = "OPTBENCH_JOB_SPEC"  # the spec file
MARKER = "optbench-rank-error: "
# torchrun's agent, as it notices a rank's end: "failed (exitcode: -9) local_rank: 1 (pid: 5562) of binary: ...",
# and its summary at exit, one block per failed rank: "  rank      : 1 (local_rank: 1)" then "  exitcode  : -9 ..."
_FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
_SUMMARY_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: \d+\)")
_SUMMARY_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def degree(spec: dict) -> int | None:
    """The tensor-parallel degree a job spec asks for (None: one process). Only a ``run`` job reads its recipe's:
    other kinds that carry a recipe (the tune worker) run in one process."""
    tp = spec.get("tp")
    if tp is None and spec.get("job") == "run":
        tp = ((spec.get("recipe") or {}).get("model") or {}).get("tp")
    return int(tp) if tp else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(module: str, n: int, port: int | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()), "--monitor_interval", "0.1",
            "-m", module]


def prepare(spec: dict, module: str, n: int) -> tuple[list[str], dict, str]:
    """(command, environment additions, spec file) for a job of degree ``n``. The caller deletes the file."""
    fd, path = tempfile.mkstemp(prefix="optbench-tp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(spec, fh)
    env = {
        ENV_TP: str(n), ENV_SPEC: path,
        # the GPU machines require NVLink multicast (NVLS) off; harmless for gloo on CPU
        "NCCL_NVLS_ENABLE": "0",
        # one rank per core share (torchrun would set 1 and warn)
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n)),
    }
    return command(module, n), env, path


def rank_error_line(rank: int, fields: dict, peer_loss: bool) -> str:
    """The marker a failing rank writes to stderr (one line)."""
    return MARKER + json.dumps({"rank": rank, "peer_loss": peer_loss, **fields}, default=str)


_SIGNALS = {signal.SIGKILL: "SIGKILL", signal.SIGTERM: "SIGTERM", signal.SIGSEGV: "SIGSEGV",
            signal.SIGABRT: "SIGABRT", signal.SIGBUS: "SIGBUS"}


class RankWatch:
    """Reads the job's stderr lines as they come: rank markers and torchrun's record of the first failed rank."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.errors: list[dict] = []
        self.failed: list[tuple[int, int]] = []  # (rank, exit code) in the order torchrun reported them
        self._summary_rank: int | None = None

    def feed(self, line: str) -> None:
        i = line.find(MARKER)
        if i >= 0:
            try:
                self.errors.append(json.loads(line[i + len(MARKER):]))
            except ValueError:
                pass
            return
        m = _FAILED.search(line)
        if m:
            self.failed.append((int(m.group(2)), int(m.group(1))))
            return
        m = _SUMMARY_RANK.match(line)
        if m:
            self._summary_rank = int(m.group(1))
            return
        m = _SUMMARY_CODE.match(line)
        if m and self._summary_rank is not None:
            self.failed.append((self._summary_rank, int(m.group(1))))
            self._summary_rank = None

    def error_event(self, returncode: int | None, tail: list[str]) -> dict:
        """The one error the job ends with (fields of an ``error`` event): a rank's own error first, then a rank
        killed by a signal, then a rank that exited without saying why, then what a rank saw on losing its peers."""
        own = [e for e in self.errors if not e.get("peer_loss")]
        if own:
            e = own[0]
            return {"kind": e.get("kind", "exception"), "message": f"rank {e['rank']} of {self.n}: {e['message']}",
                    "hint": e.get("hint", ""), "param": e.get("param")}
        lost = {e["rank"] for e in self.errors}  # ranks whose exit is explained by a peer's
        failed = sorted(((r, c) for r, c in self.failed if r not in lost), key=lambda rc: rc[1] >= 0)
        for rank, code in failed:
            if code < 0 and -code != signal.SIGTERM:  # SIGTERM: torchrun ending the others after the first
                sig = _SIGNALS.get(-code, f"signal {-code}")
                if -code == signal.SIGKILL:
                    return {"kind": "killed", "param": None,
                            "message": f"rank {rank} of {self.n} was killed (SIGKILL), most likely by the operating "
                                       f"system's out-of-memory killer; the other ranks were ended",
                            "hint": "use a smaller model, batch or sequence length, a higher degree, or free "
                                    "memory; nothing was saved from this run"}
                return {"kind": "killed", "param": None,
                        "message": f"rank {rank} of {self.n} died ({sig}); the other ranks were ended",
                        "hint": "see the job log (stderr tail) for the last thing it printed"}
            if code > 0:
                return {"kind": "crashed", "param": None,
                        "message": f"rank {rank} of {self.n} exited with code {code} without a result; the other "
                                   f"ranks were ended",
                        "hint": "see the job log (stderr tail) for the last thing it printed"}
        if self.errors:
            e = self.errors[0]
            return {"kind": e.get("kind", "exception"), "message": f"rank {e['rank']} of {self.n}: {e['message']}",
                    "hint": e.get("hint", ""), "param": e.get("param")}
        last = " | ".join(tail[-3:])[:400]
        return {"kind": "crashed", "param": None,
                "message": f"the tensor-parallel job (torchrun, {self.n} ranks) exited with code {returncode} "
                           f"without a result",
                "hint": f"last output: {last}" if last else "it printed nothing"}


def rank_pids(pid: int) -> list[int]:
    """The processes torchrun (``pid``) started: the ranks, each the leader of its own process group."""
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # gone already, or no psutil: cancel then reaches torchrun only
        return []


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie waiting to be reaped has ended)."""
    try:
        import psutil
    except ImportError:
        return []
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out
