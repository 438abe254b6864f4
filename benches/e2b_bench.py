"""The measuring half of benches/e2b.sh (run with the e2b venv's python; read its header).

Environment (set by e2b.sh): BENCH_URL, BENCH_TOKEN, BENCH_DATA (the server's data dir,
for the agents' sockets), BENCH_N, BENCH_CALLS, BENCH_MIB, BENCH_WARMUP.

Every sandbox it makes is deleted by id when its measurement ends and again, best
effort, on the way out; e2b.sh deletes whatever is still listed after that.
"""

import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import sys
import time
import urllib.parse

URL = os.environ["BENCH_URL"].rstrip("/")
TOKEN = os.environ["BENCH_TOKEN"]
DATA = os.environ["BENCH_DATA"]
N = int(os.environ["BENCH_N"])
CALLS = int(os.environ["BENCH_CALLS"])
MIB = int(os.environ["BENCH_MIB"])
WARMUP = int(os.environ["BENCH_WARMUP"])
RID = secrets.token_hex(3)
HOST, PORT = urllib.parse.urlsplit(URL).hostname, urllib.parse.urlsplit(URL).port

# Exactly what a user sets to point a script at Aetherium instead of E2B's cloud.
os.environ.update(E2B_API_KEY=TOKEN, E2B_API_URL=URL + "/e2b", E2B_SANDBOX_URL=URL + "/e2b")
for var in ("E2B_DEBUG", "E2B_DOMAIN"):
    os.environ.pop(var, None)

from e2b import Sandbox  # noqa: E402  (after the environment is set)

live = {}  # sandbox id -> how to delete it ("api" or an e2b Sandbox)


class Abort(Exception):
    pass


def _term(signum, frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _term)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket: the agent's, as the gateway reaches it."""

    def __init__(self, path, timeout=300):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def tcp():
    return http.client.HTTPConnection(HOST, PORT, timeout=300)


def request(conn, method, path, body=None, headers=None):
    """One request on a kept-alive connection: (status, raw body)."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def api(conn, method, path, body=None, ok=(200,)):
    status, raw = request(conn, method, path, body, {"Authorization": "Bearer " + TOKEN})
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    if status not in ok:
        raise Abort(f"{method} {path}: HTTP {status}: {str(parsed)[:600]}")
    return parsed


def delete_sandbox(sid):
    how = live.get(sid)
    if how is None:
        return
    if how == "api":
        conn = tcp()
        try:
            api(conn, "DELETE", f"/api/v1/vms/{sid}?wait=60s", ok=(200, 202, 404))
        finally:
            conn.close()
    else:
        how.kill()
    live.pop(sid, None)


def pct(xs, q):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


# ---- 1. create -> first command output -----------------------------------------
def e2b_cold(i):
    first = []

    def on_stdout(_):
        if not first:
            first.append(time.perf_counter())

    t0 = time.perf_counter()
    sbx = Sandbox.create()
    live[sbx.sandbox_id] = sbx
    result = sbx.commands.run("echo hi", on_stdout=on_stdout)
    if not first or result.stdout != "hi\n" or result.exit_code != 0:
        raise Abort(f"E2B SDK: expected stdout 'hi\\n', got {result!r}")
    ms = (first[0] - t0) * 1000.0
    delete_sandbox(sbx.sandbox_id)  # untimed
    return ms


def api_cold(conn, i):
    t0 = time.perf_counter()
    resp = api(conn, "POST", "/api/v1/vms?wait=60s", {"name": f"e2bbench-{RID}-{i}"})
    sid = resp.get("vm_id") if isinstance(resp, dict) else None
    if sid:
        live[sid] = "api"
    if not sid or (resp.get("vm") or {}).get("status") != "RUNNING":
        raise Abort(f"POST /api/v1/vms: expected a RUNNING VM, got {str(resp)[:600]}")
    conn.request(
        "POST",
        f"/api/v1/vms/{sid}/exec/stream",
        body=json.dumps({"command": "echo", "args": ["hi"]}).encode(),
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
    )
    r = conn.getresponse()
    if r.status != 200:
        raise Abort(f"exec/stream: HTTP {r.status}: {r.read()[:600]!r}")
    ms, stdout, end = None, "", None
    while True:
        line = r.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("type") == "stdout":
            if ms is None:
                ms = (time.perf_counter() - t0) * 1000.0
            stdout += event.get("data") or ""
        elif event.get("type") in ("end", "error"):
            end = event
    r.read()
    if ms is None or stdout != "hi\n" or not end or end.get("exit_code") != 0:
        raise Abort(f"exec/stream: expected stdout 'hi\\n' and exit 0, got {stdout!r}, {end}")
    delete_sandbox(sid)  # untimed
    return ms


# ---- 2. and 3.: one sandbox, reached through the relay and straight ------------
def make_sandbox(conn):
    """A sandbox made through E2B's control plane: (id, envdAccessToken, socket path)."""
    body = {"templateID": "base", "timeout": 3600, "metadata": {}, "envVars": {}}
    status, raw = request(conn, "POST", "/e2b/v2/sandboxes", body, {"X-API-KEY": TOKEN})
    if status != 201:
        raise Abort(f"POST /e2b/v2/sandboxes: HTTP {status}: {raw[:600]!r}")
    sbx = json.loads(raw)
    sid, access = sbx["sandboxID"], sbx.get("envdAccessToken")
    live[sid] = "api"
    if not access:
        raise Abort(f"the create answer has no envdAccessToken: {sbx}")
    sock = os.path.join(DATA, "sockets", sid, "agent.sock")
    if not os.path.exists(sock):
        raise Abort(f"no agent socket at {sock}")
    return sid, access, sock


def list_call(conn, path, headers):
    t0 = time.perf_counter()
    status, raw = request(conn, "POST", path, b"{}", headers)
    ms = (time.perf_counter() - t0) * 1000.0
    if status != 200 or not isinstance(json.loads(raw), dict):
        raise Abort(f"POST {path}: HTTP {status}: {raw[:600]!r}")
    return ms


def relay_overhead(sid, access, sock):
    base = {"Content-Type": "application/json", "Connect-Protocol-Version": "1", "X-Access-Token": access}
    relay_h = dict(base, **{"E2b-Sandbox-Id": sid})
    relay, direct = tcp(), UnixHTTPConnection(sock)
    a = lambda: list_call(relay, "/e2b/process.Process/List", relay_h)  # noqa: E731
    b = lambda: list_call(direct, "/process.Process/List", base)  # noqa: E731
    for _ in range(20):  # opens both connections (and the relay's own to the agent)
        a(), b()
    ra, rb = [], []
    for i in range(N):
        for k in range(CALLS):
            if (i + k) % 2 == 0:
                ra.append(a()), rb.append(b())
            else:
                rb.append(b()), ra.append(a())
        log(f"  Process/List {i + 1}/{N}: relay median {statistics.median(ra[-CALLS:]):.3f} ms, "
            f"direct {statistics.median(rb[-CALLS:]):.3f} ms")
    relay.close(), direct.close()
    return ra, rb


def download(conn, path, headers):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        raise Abort(f"GET {path}: HTTP {r.status}: {r.read()[:600]!r}")
    got = 0
    while True:
        n = r.readinto(view)
        if not n:
            break
        got += n
    s = time.perf_counter() - t0
    if got != MIB << 20:
        raise Abort(f"GET {path}: {got} bytes, expected {MIB << 20}")
    return MIB / s


def upload(conn, path, headers, chunk):
    def body():
        for _ in range(MIB):
            yield chunk

    headers = dict(headers, **{"Content-Type": "application/octet-stream", "Content-Length": str(MIB << 20)})
    t0 = time.perf_counter()
    status, raw = request(conn, "POST", path, body(), headers)
    s = time.perf_counter() - t0
    if status != 200:
        raise Abort(f"POST {path}: HTTP {status}: {raw[:600]!r}")
    return MIB / s


def throughput(conn, sid, access, sock):
    cmd = f"head -c {MIB << 20} /dev/urandom > /tmp/big"
    resp = api(conn, "POST", f"/api/v1/vms/{sid}/execute?wait=300s", {"command": "sh", "args": ["-c", cmd]})
    ex = resp.get("execution") if isinstance(resp, dict) else None
    if not ex or ex.get("exit_code") != 0:
        raise Abort(f"making /tmp/big: {str(resp)[:600]}")
    base = {"X-Access-Token": access}
    relay_h = dict(base, **{"E2b-Sandbox-Id": sid})
    relay, direct = tcp(), UnixHTTPConnection(sock)
    chunk = memoryview(os.urandom(1 << 20))
    out = {}
    for what, fn in (
        ("download", lambda c, p, h: download(c, p + "/files?path=/tmp/big", h)),
        ("upload", lambda c, p, h: upload(c, p + "/files?path=/tmp/up", h, chunk)),
    ):
        a = lambda: fn(relay, "/e2b", relay_h)  # noqa: E731
        b = lambda: fn(direct, "", base)  # noqa: E731
        ra, rb = [], []
        for i in range(-WARMUP, N):
            if i % 2 == 0:
                x, y = a(), b()
            else:
                y, x = b(), a()
            if i >= 0:
                ra.append(x), rb.append(y)
            tag = "warm-up" if i < 0 else f"{i + 1}/{N}"
            log(f"  {what} {MIB} MiB {tag}: relay {x:7.0f} MiB/s, direct {y:7.0f} MiB/s")
        out[what] = (ra, rb)
    relay.close(), direct.close()
    return out


def main():
    log(f"bench: {N} iteration(s), {WARMUP} warm-up, {CALLS} Process/List calls per iteration, {MIB} MiB transfers")
    rows = []

    log("1. create -> first command output (E2B SDK vs /api/v1; alternating which goes first)")
    conn = tcp()
    e2b_ms, api_ms = [], []
    for i in range(-WARMUP, N):
        if i % 2 == 0:
            x, y = e2b_cold(i), api_cold(conn, i)
        else:
            y, x = api_cold(conn, i), e2b_cold(i)
        if i >= 0:
            e2b_ms.append(x), api_ms.append(y)
        tag = "warm-up" if i < 0 else f"{i + 1}/{N}"
        log(f"  create->output {tag}: E2B SDK {x:7.1f} ms, /api/v1 {y:7.1f} ms")
    rows.append(("create -> 1st output (ms)", "E2B SDK", e2b_ms, "/api/v1", api_ms, "ms"))

    log("2./3. one sandbox (made via POST /e2b/v2/sandboxes): relay vs agent socket")
    sid, access, sock = make_sandbox(conn)
    ra, rb = relay_overhead(sid, access, sock)
    rows.append(("Process/List RTT (ms)", "relay", ra, "socket", rb, "ms"))
    tp = throughput(conn, sid, access, sock)
    rows.append((f"download {MIB} MiB (MiB/s)", "relay", tp["download"][0], "socket", tp["download"][1], "rate"))
    rows.append((f"upload {MIB} MiB (MiB/s)", "relay", tp["upload"][0], "socket", tp["upload"][1], "rate"))
    delete_sandbox(sid)
    conn.close()

    head = (f"{'scenario':<27} | {'A':<8} {'median':>8} {'p90':>8} | {'B':<7} {'median':>8} {'p90':>8} | "
            f"{'A/B':>6} | {'n':>5}")
    print()
    print(head)
    print("-" * len(head))
    for name, la, xa, lb, xb, kind in rows:
        if kind == "ms":
            ma, pa, mb, pb = statistics.median(xa), pct(xa, 90), statistics.median(xb), pct(xb, 90)
        else:  # p90 of the transfer time: the slow end, as a rate
            ma, pa, mb, pb = statistics.median(xa), pct(xa, 10), statistics.median(xb), pct(xb, 10)
        prec = 3 if name.startswith("Process") else 1 if kind == "ms" else 0
        print(f"{name:<27} | {la:<8} {ma:8.{prec}f} {pa:8.{prec}f} | {lb:<7} {mb:8.{prec}f} {pb:8.{prec}f} | "
              f"{ma / mb:5.2f}x | {len(xa):>5}")
    added_med = statistics.median(ra) - statistics.median(rb)
    added_p90 = pct(ra, 90) - pct(rb, 90)
    dl = statistics.median(tp["download"][0]) / statistics.median(tp["download"][1])
    ul = statistics.median(tp["upload"][0]) / statistics.median(tp["upload"][1])
    print()
    print(f"relay adds {added_med:.3f} ms (median), {added_p90:.3f} ms (p90) per unary call"
          f"   [target <= 1.5 ms: {'met' if added_p90 <= 1.5 else 'MISSED'}]")
    print(f"relay streams at {dl:.2f}x (download), {ul:.2f}x (upload) of the socket's rate"
          f"   [target >= 0.7x: {'met' if min(dl, ul) >= 0.7 else 'MISSED'}]")
    print("ms rows: A/B > 1 means A is slower. MiB/s rows: p90 is the slow end (p90 of the time),"
          " A/B < 1 means the relay is slower.")


rc = 0
try:
    main()
except Abort as e:
    log(f"bench: error: {e}")
    rc = 1
except KeyboardInterrupt:
    log("\nbench: interrupted; cleaning up")
    rc = 130
except (OSError, http.client.HTTPException) as e:
    log(f"bench: error: {type(e).__name__}: {e}")
    rc = 1
finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for sid in list(live):
        try:
            delete_sandbox(sid)
        except Exception as e:  # noqa: BLE001 - best effort; e2b.sh deletes what is left
            log(f"bench: warning: deleting sandbox {sid}: {e}")
sys.exit(rc)
