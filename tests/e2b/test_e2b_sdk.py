"""E2B's Python SDK, unmodified, driving aetherium-agent as if it were envd.

Each test names the SDK call it covers; docs/e2b-compat.md has the wire format
behind each one and the current pass/fail table. The agent runs on this
machine as the same user as the tests, so the tests check the agent's file
operations against the local filesystem directly.
"""

import io
import os
import pwd
import time
import uuid

import pytest
from e2b import CommandExitException, FilesystemEventType, FileType, PtySize
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
)


def pids(sandbox):
    return {p.pid for p in sandbox.commands.list()}


# --- health -------------------------------------------------------------------


def test_is_running_uses_health(sandbox):
    assert sandbox.is_running() is True


# --- commands.run ---------------------------------------------------------------


def test_run_returns_output_and_exit_code(sandbox):
    result = sandbox.commands.run("echo hi; echo oops >&2")
    assert result.exit_code == 0
    assert result.stdout == "hi\n"
    assert result.stderr == "oops\n"


def test_run_streams_output_as_produced(sandbox):
    received = []  # (monotonic time, chunk)
    started = time.monotonic()
    result = sandbox.commands.run(
        "for i in 1 2 3; do echo line$i; sleep 0.5; done",
        on_stdout=lambda chunk: received.append((time.monotonic(), chunk)),
    )
    ended = time.monotonic()

    assert result.exit_code == 0
    assert result.stdout == "line1\nline2\nline3\n"
    assert "".join(chunk for _, chunk in received) == result.stdout
    # Produced 0.5 s apart, so they must arrive as separate callbacks, the
    # first one long before the command ends (not buffered until exit).
    assert len(received) >= 3, received
    first_at = received[0][0]
    assert first_at - started < ended - started - 0.7, (
        f"first chunk after {first_at - started:.2f}s of {ended - started:.2f}s"
    )


def test_run_streams_stderr_to_callback(sandbox):
    out, err = [], []
    sandbox.commands.run(
        "echo to-out; echo to-err >&2", on_stdout=out.append, on_stderr=err.append
    )
    assert "".join(out) == "to-out\n"
    assert "".join(err) == "to-err\n"


def test_failing_command_raises_with_exit_code(sandbox):
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo before; echo broken >&2; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "before\n"
    assert info.value.stderr == "broken\n"


def test_run_with_envs_and_cwd(sandbox, tmp_path):
    result = sandbox.commands.run(
        'echo "$GREETING"; pwd', envs={"GREETING": "hello there"}, cwd=str(tmp_path)
    )
    assert result.stdout == f"hello there\n{tmp_path}\n"


def test_run_as_explicit_user_root(sandbox):
    # user= makes the SDK send `Authorization: Basic cm9vdDo=` ("root:"); the
    # agent runs as root here, so it must accept it.
    result = sandbox.commands.run("echo as-root", user="root")
    assert result.stdout == "as-root\n"


def test_binary_output_is_decoded_utf8(sandbox):
    result = sandbox.commands.run("printf 'caf\\303\\251 \\342\\234\\223\\n'")
    assert result.stdout == "café ✓\n"


# --- background commands, stdin, kill ----------------------------------------


def test_send_stdin_to_background_cat(sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True, timeout=20)
    try:
        assert handle.pid > 0
        sandbox.commands.send_stdin(handle.pid, "hello\n")
        handle.send_stdin(b"world\n")
        seen = ""
        for stdout, _stderr, _pty in handle:
            if stdout:
                seen += stdout
            if "hello\nworld\n" in seen:
                break
        assert seen == "hello\nworld\n"
    finally:
        handle.kill()


def test_close_stdin_ends_cat(sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True, timeout=20)
    try:
        handle.send_stdin("abc\n")
        handle.close_stdin()
        result = handle.wait()
    finally:
        handle.kill()
    assert result.exit_code == 0
    assert result.stdout == "abc\n"


def test_kill_background_process(sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert handle.pid in pids(sandbox)

    started = time.monotonic()
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert time.monotonic() - started < 10
    assert info.value.exit_code != 0  # envd reports -1 for a signal

    assert handle.pid not in pids(sandbox)
    # Gone: a second kill reports "not found" as False.
    assert sandbox.commands.kill(handle.pid) is False


def test_commands_kill_by_pid(sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in pids(sandbox)


def test_kill_unknown_pid_is_false(sandbox):
    assert sandbox.commands.kill(2_000_000_000) is False


def test_send_stdin_unknown_pid_fails(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(2_000_000_000, "x")


# --- files ----------------------------------------------------------------------


def test_write_then_read_text(sandbox, tmp_path):
    path = tmp_path / "hello.txt"
    info = sandbox.files.write(str(path), "hello file\n")
    assert info.path == str(path)
    assert info.name == "hello.txt"
    assert info.type == FileType.FILE
    assert path.read_text() == "hello file\n"
    assert sandbox.files.read(str(path)) == "hello file\n"


def test_write_overwrites_and_creates_parents(sandbox, tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    sandbox.files.write(str(path), "first version, rather long\n")
    sandbox.files.write(str(path), "second\n")
    assert path.read_text() == "second\n"


def test_read_local_file(sandbox, tmp_path):
    path = tmp_path / "local.txt"
    path.write_text("written locally ✓\n")
    assert sandbox.files.read(str(path)) == "written locally ✓\n"


def test_binary_round_trip(sandbox, tmp_path):
    data = bytes(range(256)) * 4 + os.urandom(200_000) + b"\r\n\x00--boundary--\r\n"
    path = tmp_path / "blob.bin"
    sandbox.files.write(str(path), data)
    assert path.read_bytes() == data
    assert bytes(sandbox.files.read(str(path), format="bytes")) == data


def test_write_from_file_object_uses_octet_stream(sandbox, tmp_path):
    # A file-like object makes the SDK upload raw application/octet-stream
    # instead of multipart.
    data = os.urandom(70_000)
    path = tmp_path / "streamed.bin"
    info = sandbox.files.write(str(path), io.BytesIO(data))
    assert info.path == str(path)
    assert path.read_bytes() == data


def test_read_missing_file_raises(sandbox, tmp_path):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(str(tmp_path / "missing.txt"))


def test_list_dir(sandbox, tmp_path):
    (tmp_path / "a.txt").write_text("0123456789")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.txt").write_text("not listed at depth 1")

    entries = {e.name: e for e in sandbox.files.list(str(tmp_path))}
    assert set(entries) == {"a.txt", "sub"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].path == str(tmp_path / "a.txt")
    assert entries["a.txt"].size == 10
    assert entries["sub"].type == FileType.DIR
    assert entries["sub"].path == str(tmp_path / "sub")


def test_list_missing_dir_raises(sandbox, tmp_path):
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(str(tmp_path / "nope"))


def test_make_dir(sandbox, tmp_path):
    path = tmp_path / "x" / "y"
    assert sandbox.files.make_dir(str(path)) is True
    assert path.is_dir()
    # Already there: the SDK maps already_exists to False.
    assert sandbox.files.make_dir(str(path)) is False


def test_exists(sandbox, tmp_path):
    (tmp_path / "here.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    assert sandbox.files.exists(str(tmp_path / "here.txt")) is True
    assert sandbox.files.exists(str(tmp_path / "dir")) is True
    assert sandbox.files.exists(str(tmp_path / "not-here.txt")) is False


def test_remove_file_and_dir(sandbox, tmp_path):
    f = tmp_path / "gone.txt"
    f.write_text("x")
    d = tmp_path / "tree"
    (d / "inner").mkdir(parents=True)
    (d / "inner" / "file").write_text("x")

    sandbox.files.remove(str(f))
    sandbox.files.remove(str(d))
    assert not f.exists()
    assert not d.exists()
    assert sandbox.files.exists(str(f)) is False


def test_remove_missing_is_not_an_error(sandbox, tmp_path):
    # envd's Remove is os.RemoveAll: a path that is not there is no error.
    sandbox.files.remove(str(tmp_path / "never-was"))


def test_files_as_explicit_user_root(sandbox, tmp_path):
    # user= adds `?username=root` to /files and `Authorization: Basic` to RPCs.
    path = tmp_path / "root.txt"
    sandbox.files.write(str(path), "by root", user="root")
    assert sandbox.files.read(str(path), user="root") == "by root"
    assert sandbox.files.exists(str(path), user="root") is True


# --- beyond the basics: the rest of the SDK surface ---------------------------


def test_commands_list_shows_config(sandbox, tmp_path):
    handle = sandbox.commands.run(
        "sleep 30", background=True, envs={"MARK": "listed"}, cwd=str(tmp_path)
    )
    try:
        info = {p.pid: p for p in sandbox.commands.list()}[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args == ["-l", "-c", "sleep 30"]
        assert info.envs.get("MARK") == "listed"
        assert info.cwd == str(tmp_path)
    finally:
        handle.kill()


def test_connect_to_running_command(sandbox):
    handle = sandbox.commands.run(
        "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.3; done", background=True
    )
    handle.disconnect()
    again = sandbox.commands.connect(handle.pid, timeout=20)
    assert again.pid == handle.pid
    result = again.wait()
    assert result.exit_code == 0
    # Output produced while nobody was attached may be gone; the end is not.
    assert result.stdout.endswith("tick6\n")


def test_stream_input(sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True, timeout=20)
    try:
        sandbox.commands.stream_input(handle.pid, ["one\n", b"two\n"], timeout=20)
        handle.close_stdin()
        result = handle.wait()
    finally:
        handle.kill()
    assert result.stdout == "one\ntwo\n"


def test_unknown_user_is_rejected(sandbox):
    # envd answers `unauthenticated` for a user that does not exist.
    with pytest.raises(AuthenticationException):
        sandbox.commands.run("true", user="no-such-user-e2b-test")


def test_pty_input_output_and_resize(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=30)
    try:
        sandbox.pty.resize(handle.pid, PtySize(rows=33, cols=101))
        sandbox.pty.send_stdin(handle.pid, b"stty size; echo pty-$((40+2))\n")
        seen = b""
        for _stdout, _stderr, pty in handle:
            if pty:
                seen += pty
            if b"pty-42" in seen:
                break
        assert b"33 101" in seen
    finally:
        handle.kill()


def test_get_info_and_rename(sandbox, tmp_path):
    src, dst = tmp_path / "before.txt", tmp_path / "after.txt"
    src.write_text("12345")
    os.chmod(src, 0o640)
    local = os.stat(src)

    info = sandbox.files.get_info(str(src))
    assert info.type == FileType.FILE
    assert info.name == "before.txt"
    assert info.path == str(src)
    assert info.size == 5
    assert info.mode == 0o640
    assert info.permissions == "-rw-r-----"
    assert info.owner == pwd.getpwuid(local.st_uid).pw_name
    assert abs(info.modified_time.timestamp() - local.st_mtime) < 1

    moved = sandbox.files.rename(str(src), str(dst))
    assert moved.path == str(dst)
    assert not src.exists() and dst.read_text() == "12345"

    assert sandbox.files.get_info(str(tmp_path)).type == FileType.DIR
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info(str(src))


def test_write_files_multiple(sandbox, tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "d" / "two.bin"
    infos = sandbox.files.write_files(
        [{"path": str(one), "data": "first"}, {"path": str(two), "data": b"\x00second"}]
    )
    assert sorted(i.path for i in infos) == sorted([str(one), str(two)])
    assert one.read_text() == "first"
    assert two.read_bytes() == b"\x00second"


def test_gzip_write_and_read(sandbox, tmp_path):
    data = b"compressible " * 5000 + os.urandom(1000)
    path = tmp_path / "gz.bin"
    sandbox.files.write(str(path), data, gzip=True)
    assert path.read_bytes() == data
    assert bytes(sandbox.files.read(str(path), format="bytes", gzip=True)) == data


def test_relative_path_is_in_home(sandbox):
    # envd resolves relative paths against the user's home directory; the
    # agent runs as this test's user.
    name = f"e2b-test-{uuid.uuid4().hex}.txt"
    expected = os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, name)
    try:
        info = sandbox.files.write(name, "at home")
        assert info.path == expected
        assert sandbox.files.read(name) == "at home"
    finally:
        if os.path.exists(expected):
            os.remove(expected)


def test_watch_dir(sandbox, tmp_path):
    watcher = sandbox.files.watch_dir(str(tmp_path))
    try:
        (tmp_path / "new.txt").write_text("x")
        events = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events += watcher.get_new_events()
            if any(e.name == "new.txt" for e in events):
                break
            time.sleep(0.1)
        kinds = {e.type for e in events if e.name == "new.txt"}
        assert FilesystemEventType.CREATE in kinds, events
    finally:
        watcher.stop()
