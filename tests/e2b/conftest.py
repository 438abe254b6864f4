"""Fixtures for driving aetherium-agent with E2B's own Python SDK.

The SDK runs in debug mode (no control plane); its envd URL is pointed at an
agent that this file starts on a random free loopback port (E2B_SANDBOX_URL is
honoured before the debug default of localhost:49983), so runs can go in
parallel. The agent is stopped through its own Popen handle.
"""

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 15.0

_agent_log: Path | None = None


def agent_binary() -> Path:
    explicit = os.environ.get("AETHERIUM_AGENT_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR")
    if not target:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        target = os.path.join(cache, "aetherium", "target")
    return Path(target) / "agent" / "aetherium-agent"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _start_agent(binary: Path, workdir: Path, log_path: Path):
    """Start the agent on a free port; retry if another process took the port
    between our probe and the agent's bind."""
    last_error = ""
    for _ in range(5):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [str(binary), "--listen", f"tcp:127.0.0.1:{port}"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _healthy(url):
                return proc, url
            time.sleep(0.05)
        if proc.poll() is None:
            _stop(proc)
            last_error = f"no healthy /health on {url} within {STARTUP_TIMEOUT}s"
        else:
            last_error = f"agent exited with status {proc.returncode}"
    raise RuntimeError(f"could not start {binary}: {last_error} (log: {log_path})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def agent_url(tmp_path_factory):
    global _agent_log
    binary = agent_binary()
    if not binary.is_file():
        pytest.fail(
            f"agent binary {binary} is missing: run `make -C {REPO} agent` "
            "or set AETHERIUM_AGENT_BIN"
        )
    workdir = tmp_path_factory.mktemp("agent")
    _agent_log = workdir / "agent.log"
    proc, url = _start_agent(binary, workdir, _agent_log)
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def sandbox(agent_url):
    from e2b import Sandbox

    # Debug mode: Sandbox.create() makes no request at all; every call goes to
    # agent_url, plain HTTP/1.1, Connect JSON codec.
    return Sandbox.create(debug=True, sandbox_url=agent_url)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """On failure, show the end of the agent's log next to pytest's report."""
    if exitstatus == 0 or _agent_log is None or not _agent_log.exists():
        return
    lines = _agent_log.read_text(errors="replace").splitlines()
    terminalreporter.section(f"agent log (last 60 lines of {_agent_log})")
    for line in lines[-60:]:
        terminalreporter.write_line(line)
