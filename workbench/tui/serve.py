"""Serve the workbench in a web browser with textual-serve, bound to 127.0.0.1 unless told otherwise.

    python -m workbench.tui.serve [--port 8000] [--host 127.0.0.1] [--sessions-dir DIR]

Each browser tab gets its own optbench process (the same app as in a terminal). Reach a remote machine's server
through an SSH tunnel: ``ssh -L 8000:127.0.0.1:8000 host``, then open http://127.0.0.1:8000 locally. Anyone who can
reach the port can drive the app (and so read and write files as you): keep it on loopback and tunnel.
"""

from __future__ import annotations

import argparse
import shlex
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_command(sessions_dir: str | None = None, no_mouse: bool = False) -> str:
    cmd = [sys.executable, "-m", "workbench"]
    if sessions_dir:
        cmd += ["--sessions-dir", sessions_dir]
    if no_mouse:
        cmd.append("--no-mouse")
    return " ".join(shlex.quote(c) for c in cmd)


def serve(host: str = "127.0.0.1", port: int = 8000, sessions_dir: str | None = None) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        print("optbench: error: textual-serve is not installed; expected `pip install textual-serve`",
              file=sys.stderr)
        return 2
    if host not in LOOPBACK:
        print(f"optbench: warning: serving on {host}: anyone who can reach port {port} can use the app as you; "
              f"prefer 127.0.0.1 and an SSH tunnel", file=sys.stderr)
    Server(build_command(sessions_dir), host=host, port=port, title="optbench").serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.tui.serve",
                                description="Serve the optbench workbench in a browser (textual-serve).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sessions-dir", help="where sessions live (default ./sessions or $OPTBENCH_SESSIONS)")
    args = p.parse_args(argv)
    return serve(args.host, args.port, args.sessions_dir)


if __name__ == "__main__":
    sys.exit(main())
