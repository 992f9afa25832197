"""The browser path: ``python -m workbench.tui.serve`` binds 127.0.0.1, serves the page, and a websocket session
starts the real app and streams its screen."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

import textual_serve  # noqa: F401,E402  (pinned in requirements.txt)
import aiohttp  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_streams_the_app_on_localhost(tmp_path):
    port = _free_port()
    env = {**os.environ, "OPTBENCH_SESSIONS": str(tmp_path / "s"), "OPTBENCH_CONFIG_DIR": str(tmp_path / "c")}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.tui.serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    async def talk() -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as r:
                        status, page = r.status, await r.text()
                        break
                except aiohttp.ClientConnectorError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            screen = b""
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws?width=100&height=30") as ws:
                end = time.monotonic() + 30
                while time.monotonic() < end and b"Optimizations" not in screen:
                    try:
                        msg = await ws.receive(timeout=1)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        screen += msg.data
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        screen += msg.data.encode()
                    else:
                        break
            return status, page, screen

    try:
        status, page, screen = asyncio.run(talk())
        listening = [c for c in __import__("psutil").Process(proc.pid).net_connections("tcp")
                     if c.status == "LISTEN" and c.laddr.port == port]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert status == 200 and "optbench" in page
    assert b"Optimizations" in screen and b"optbench" in screen  # the workbench's first screen arrived
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)  # loopback only
