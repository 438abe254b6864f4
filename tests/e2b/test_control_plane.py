"""E2B's Python SDK in normal mode against a real `aetherium up` (on Docker).

tests/e2b/run.sh starts the server and sets only what a user moving from E2B's
cloud sets: E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL (both `<server>/e2b`).
The SDK then calls the E2B control plane (create, list, connect, kill, timeouts,
pause) and reaches each sandbox's agent through the server's envd relay. The tests
also look through Aetherium's own API (AETHERIUM_URL, AETHERIUM_TOKEN) and Docker
to check that an E2B sandbox is an ordinary VM and that nothing stays behind.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from e2b import (
    AuthenticationException,
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)

NEEDED = ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "AETHERIUM_URL", "AETHERIUM_TOKEN")


@pytest.fixture(scope="module", autouse=True)
def server():
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: run these tests with `bash tests/e2b/run.sh`, "
            "which starts a server for them"
        )
    assert os.environ.get("E2B_DEBUG", "").lower() not in ("1", "true"), "normal mode only"


def api(method, path, body=None, token=None):
    """Aetherium's own API: (status, parsed JSON or None)."""
    request = urllib.request.Request(
        os.environ["AETHERIUM_URL"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token or os.environ['AETHERIUM_TOKEN']}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text else None


def raw(method, path, headers=None, body=None):
    """A request to the E2B endpoints as bytes on the wire: (status, headers, body)."""
    request = urllib.request.Request(
        os.environ["E2B_API_URL"] + path, method=method, data=body, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def containers_of(sandbox_id):
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.aetherium.vm_id={sandbox_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def wait_until(check, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture
def tag():
    """Metadata unique to one test, so lists see only its own sandboxes."""
    return {"suite": "py-control-plane", "test": uuid.uuid4().hex}


@pytest.fixture
def sbx(tag):
    sandbox = Sandbox.create(metadata=tag, timeout=300)
    try:
        yield sandbox
    finally:
        Sandbox.kill(sandbox.sandbox_id)


def test_create_runs_commands_with_the_requests_env_and_is_an_ordinary_vm(tag):
    sandbox = Sandbox.create(metadata=tag, envs={"GREETING": "hello from e2b"}, timeout=120)
    try:
        assert sandbox.commands.run("echo $GREETING").stdout == "hello from e2b\n"
        # A command's own envs win over the sandbox's.
        out = sandbox.commands.run("echo $GREETING", envs={"GREETING": "mine"})
        assert out.stdout == "mine\n"
        info = sandbox.get_info()
        assert info.sandbox_id == sandbox.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == tag
        assert info.state == SandboxState.RUNNING
        assert 110 <= (info.end_at - info.started_at).total_seconds() <= 130
        # The same sandbox through Aetherium's API, with its time to live; the
        # values of the env never show.
        status, vm = api("GET", f"/api/v1/vms/{sandbox.sandbox_id}")
        assert status == 200, vm
        assert vm["status"] == "RUNNING" and vm["expires_at"]
        assert "hello from e2b" not in json.dumps(vm)
        assert len(containers_of(sandbox.sandbox_id)) == 1
    finally:
        assert sandbox.kill() is True
    # Killed: gone everywhere, at once.
    assert containers_of(sandbox.sandbox_id) == []
    assert api("GET", f"/api/v1/vms/{sandbox.sandbox_id}")[0] == 404
    assert Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)
    assert sandbox.is_running() is False


def test_list_filters_by_metadata_and_state_and_pages(tag):
    made = [Sandbox.create(metadata={**tag, "n": str(i)}, timeout=120) for i in range(3)]
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata=tag), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        ids = [s.sandbox_id for s in first + second]
        assert sorted(ids) == sorted(s.sandbox_id for s in made)
        # Newest first.
        assert ids == [s.sandbox_id for s in reversed(made)]
        one = Sandbox.list(query=SandboxQuery(metadata={**tag, "n": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [made[1].sandbox_id]
        assert one[0].metadata == {**tag, "n": "1"}
        assert one[0].state == SandboxState.RUNNING
        paused = Sandbox.list(query=SandboxQuery(metadata=tag, state=[SandboxState.PAUSED]))
        assert paused.next_items() == []
        odd = {**tag, "odd key/é": "a&b=c d%e?f#g+h"}
        made.append(Sandbox.create(metadata=odd, timeout=120))
        found = Sandbox.list(query=SandboxQuery(metadata=odd)).next_items()
        assert [s.sandbox_id for s in found] == [made[-1].sandbox_id]
        assert found[0].metadata == odd
    finally:
        for s in made:
            s.kill()


def test_a_sandbox_made_through_aetheriums_api_is_listed_and_connectable(tag):
    status, created = api(
        "POST", "/api/v1/vms?wait=120", {"name": f"py-{tag['test'][:12]}", "metadata": tag}
    )
    assert status == 200, created
    vm_id = created["vm_id"]
    try:
        listed = Sandbox.list(query=SandboxQuery(metadata=tag)).next_items()
        assert [s.sandbox_id for s in listed] == [vm_id]
        sandbox = Sandbox.connect(vm_id)
        assert sandbox.commands.run("echo reached").stdout == "reached\n"
    finally:
        api("DELETE", f"/api/v1/vms/{vm_id}")


def test_connect_and_set_timeout_move_the_end(sbx):
    end = sbx.get_info().end_at
    sbx.set_timeout(30)
    shorter = sbx.get_info().end_at
    assert shorter < end
    # Connecting with a longer timeout extends it; a shorter one never cuts it.
    again = Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert again.sandbox_id == sbx.sandbox_id
    longer = sbx.get_info().end_at
    assert (longer - shorter).total_seconds() > 500
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert sbx.get_info().end_at == longer


def test_the_timeout_kills_the_sandbox_and_leaves_nothing(tag):
    sandbox = Sandbox.create(metadata=tag, timeout=2)
    assert sandbox.commands.run("true").exit_code == 0

    def gone():
        try:
            Sandbox.get_info(sandbox.sandbox_id)
            return False
        except NotFoundException:
            return True

    wait_until(gone, timeout=30, what="the sandbox's end")
    wait_until(lambda: containers_of(sandbox.sandbox_id) == [], timeout=30, what="no container")
    wait_until(
        lambda: api("GET", f"/api/v1/vms/{sandbox.sandbox_id}")[0] == 404,
        timeout=30,
        what="no VM record",
    )
    assert sandbox.is_running() is False


def test_pause_then_connect_resumes_with_its_files_and_processes(sbx):
    sbx.files.write("/tmp/kept.txt", "before the pause")
    background = sbx.commands.run("sleep 600", background=True)
    assert sbx.pause() is True
    info = Sandbox.get_info(sbx.sandbox_id)
    assert info.state == SandboxState.PAUSED
    assert api("GET", f"/api/v1/vms/{sbx.sandbox_id}")[1]["status"] == "PAUSED"
    # Pausing a paused sandbox is False (E2B's 409); envd is unreachable meanwhile.
    assert Sandbox.pause(sbx.sandbox_id) is False
    assert sbx.is_running() is False
    listed = Sandbox.list(
        query=SandboxQuery(metadata=info.metadata, state=[SandboxState.PAUSED])
    ).next_items()
    assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]

    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("/tmp/kept.txt") == "before the pause"
    pids = [p.pid for p in resumed.commands.list()]
    assert background.pid in pids
    # The handle from before the pause works again too (same access token).
    assert sbx.commands.run("echo again").stdout == "again\n"


def test_commands_stream_take_stdin_and_report_exit_codes(sbx):
    chunks = []
    result = sbx.commands.run(
        "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2",
        on_stdout=lambda line: chunks.append((time.monotonic(), line)),
    )
    assert result.stdout == "line1\nline2\nline3\n" and result.stderr == "oops\n"
    assert len(chunks) == 3 and chunks[-1][0] - chunks[0][0] > 0.25, "streamed as produced"

    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo out; exit 7")
    assert failed.value.exit_code == 7 and failed.value.stdout == "out\n"

    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "through the relay\n")
    sbx.commands.close_stdin(cat.pid)
    assert cat.wait().stdout == "through the relay\n"

    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sbx.commands.kill(sleeper.pid) is True
    assert sleeper.pid not in [p.pid for p in sbx.commands.list()]


def test_pty_through_the_relay(sbx):
    from e2b import PtySize

    terminal = sbx.pty.create(PtySize(rows=24, cols=80), timeout=30)
    try:
        sbx.pty.resize(terminal.pid, PtySize(rows=31, cols=97))
        sbx.pty.send_stdin(terminal.pid, b"stty size; echo pty-$((6*7))\n")
        seen = b""
        for _stdout, _stderr, pty in terminal:
            seen += pty or b""
            if b"pty-42" in seen:
                break
        assert b"31 97" in seen
    finally:
        terminal.kill()


def test_files_text_bytes_listing_watch_and_large_transfers(sbx):
    sbx.files.write("/tmp/t/a.txt", "text")
    sbx.files.write("/tmp/t/b.bin", bytes(range(256)))
    assert sbx.files.read("/tmp/t/a.txt") == "text"
    assert bytes(sbx.files.read("/tmp/t/b.bin", format="bytes")) == bytes(range(256))
    assert sorted(e.name for e in sbx.files.list("/tmp/t")) == ["a.txt", "b.bin"]
    assert sbx.files.exists("/tmp/t/a.txt") and not sbx.files.exists("/tmp/t/none")

    events = []
    watcher = sbx.files.watch_dir("/tmp/t")
    sbx.files.write("/tmp/t/new.txt", "x")
    wait_until(
        lambda: events.extend(watcher.get_new_events()) or any(e.name == "new.txt" for e in events),
        timeout=20,
        what="a watch event",
    )
    watcher.stop()

    # 8 MiB each way, through the relay (multipart up, streamed down).
    data = os.urandom(8 * 1024 * 1024)
    sbx.files.write("/tmp/big.bin", data)
    size = sbx.commands.run("stat -c %s /tmp/big.bin").stdout.strip()
    assert size == str(len(data))
    assert bytes(sbx.files.read("/tmp/big.bin", format="bytes")) == data


def test_metrics_report_what_the_sandbox_uses(sbx):
    samples = sbx.get_metrics()
    assert len(samples) == 1
    sample = samples[0]
    info = sbx.get_info()
    assert sample.cpu_count == info.cpu_count
    # The sandbox's own memory (its limit), not the host's.
    assert sample.mem_total == info.memory_mb * 1024 * 1024
    assert 0 < sample.mem_used <= sample.mem_total
    assert 0 < sample.disk_used <= sample.disk_total


def test_an_environment_is_a_template_and_an_unknown_template_is_refused(tag):
    name = f"py-tmpl-{tag['test'][:10]}"
    status, env = api(
        "POST",
        "/api/v1/environments",
        {"name": name, "vcpus": 1, "memory_mb": 256, "env_vars": {"FROM_ENV": "env-var"}},
    )
    assert status == 201, env
    try:
        sandbox = Sandbox.create(template=name, metadata=tag, timeout=120)
        try:
            assert sandbox.commands.run("echo $FROM_ENV").stdout == "env-var\n"
            assert sandbox.get_info().template_id == name
        finally:
            sandbox.kill()
    finally:
        api("DELETE", f"/api/v1/environments/{env['id']}")
    with pytest.raises(SandboxException, match="not found"):
        Sandbox.create(template=f"no-such-{tag['test']}", metadata=tag)
    assert Sandbox.list(query=SandboxQuery(metadata=tag)).next_items() == []


def test_bad_keys_unknown_sandboxes_and_wrong_tokens_get_json_errors(sbx, tag):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_not-a-key", metadata=tag)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_not-a-key").next_items()
    status, _, body = raw("GET", "/v2/sandboxes", {"X-API-KEY": "nope"})
    assert status == 401 and json.loads(body)["code"] == 401

    unknown = str(uuid.uuid4())
    with pytest.raises(NotFoundException):
        Sandbox.connect(unknown)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout(unknown, 60)
    assert Sandbox.kill(unknown) is False
    status, _, body = raw("DELETE", f"/sandboxes/{unknown}", {"X-API-KEY": os.environ["E2B_API_KEY"]})
    assert status == 404 and json.loads(body) == {
        "code": 404,
        "error": "Not Found",
        "message": f"sandbox {unknown} not found",
    }

    # envd: an unknown sandbox is the SDK's "not found" 502; a wrong token never
    # reaches the sandbox; the agent's platform routes are not relayed.
    status, _, body = raw("GET", "/files?path=/etc/hostname", {"E2b-Sandbox-Id": unknown})
    assert status == 502 and "was not found" in json.loads(body)["message"]
    status, _, body = raw(
        "GET",
        "/files?path=/etc/hostname",
        {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "wrong"},
    )
    assert status == 401, body
    token = sbx._envd_access_token
    status, _, _ = raw(
        "POST",
        "/init",
        {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": token, "Content-Type": "application/json"},
        b'{"accessToken":"mine"}',
    )
    assert status == 404
    assert sbx.commands.run("echo still mine").stdout == "still mine\n"


def test_a_viewer_key_can_list_but_not_create(sbx, tag):
    status, created = api("POST", "/api/v1/api-keys", {"name": f"viewer-{tag['test'][:8]}", "role": "viewer"})
    assert status == 201, created
    viewer = created["key"]
    try:
        with pytest.raises(SandboxException, match="403"):
            Sandbox.create(api_key=viewer, metadata=tag)
        listed = Sandbox.list(api_key=viewer, query=SandboxQuery(metadata=tag)).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        # A viewer sees the sandbox but not the token that runs commands in it.
        status, _, body = raw("GET", f"/sandboxes/{sbx.sandbox_id}", {"X-API-KEY": viewer})
        assert status == 200 and "envdAccessToken" not in json.loads(body)
        status, _, body = raw(
            "GET", f"/sandboxes/{sbx.sandbox_id}", {"X-API-KEY": os.environ["E2B_API_KEY"]}
        )
        assert json.loads(body)["envdAccessToken"] == sbx._envd_access_token
    finally:
        api("POST", f"/api/v1/api-keys/{created['api_key']['id']}/revoke")


def test_a_script_written_for_e2bs_cloud_runs_unchanged(tmp_path):
    """What a user has today: a script that only imports the SDK."""
    script = tmp_path / "cloud_script.py"
    script.write_text(
        "from e2b import Sandbox\n"
        "with Sandbox.create() as sandbox:\n"
        "    sandbox.files.write('/tmp/hello.py', 'print(6 * 7)')\n"
        "    result = sandbox.commands.run('cat /tmp/hello.py && echo done')\n"
        "    print(result.stdout, end='')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHERIUM_",))}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "print(6 * 7)done\n"
