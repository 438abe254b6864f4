"""Makes the state some operations need before they can succeed, for the fuzz run.

Random ids only ever find 404s, and a few operations need a resource in a given
state: a file to download, a task that is running (to cancel) or dead (to retry or
delete), a workspace secret (to delete). This script makes them through the API and
writes their ids as libFuzzer dictionaries that schemathesis.toml binds, with a
probability, to those operations' parameters, so the fuzzer draws them among its
generated values. coverage.py then fails the run if one still never succeeded.

    python3 seed.py URL TOKEN OUT_DIR

Writes OUT_DIR/{vm-ids,file-paths,paused-vm-ids,pausable-vm-ids,deletable-vm-ids,execution-ids,live-task-ids,
retry-task-ids,delete-task-ids,workspace-ids,workspace-secret-ids,global-secret-ids,
deletable-workspace-ids}.dict: a dead task retried is
live again, and one deleted is gone, so retry and delete draw from their own. Exits 1 with the API's answer when a step fails.
"""

import json
import secrets
import sys
import time
import urllib.error
import urllib.request

# How many of each: a cancel, a retry or a delete uses one up.
LIVE_TASKS = 2
DEAD_TASKS = 3  # each, for retry and for delete
WORKSPACE_SECRETS = 3
SEED_FILE = "/tmp/api-fuzz-seed.txt"


class Api:
    def __init__(self, url, token):
        self.url = url.rstrip("/") + "/api/v1"
        self.token = token

    def call(self, method, path, body=None, raw=None, expect=(200, 201, 202)):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        elif raw is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode(errors="replace")
        if status not in expect:
            raise SystemExit(f"api-fuzz seed: {method} {path} answered {status}: {text}")
        return json.loads(text) if text.strip() else None


def wait_task(api, task_id, want, timeout=120):
    """Polls a task until its status is one of `want`; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        task = api.call("GET", f"/tasks/{task_id}")
        if task["status"] in want:
            return task
        if time.monotonic() > deadline:
            raise SystemExit(f"api-fuzz seed: task {task_id} is {task['status']}, not {want}, after {timeout}s")
        time.sleep(0.5)


def write_dict(out_dir, name, values):
    with open(f"{out_dir}/{name}.dict", "w", encoding="utf-8") as f:
        for v in values:
            f.write(json.dumps(str(v)) + "\n")


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    api = Api(argv[1], argv[2])
    out_dir = argv[3]
    tag = secrets.token_hex(4)

    # A running sandbox with a file of known content.
    created = api.call("POST", "/vms?wait=120s", {"name": f"fuzz-seed-{tag}"}, expect=(200,))
    vm_id = created["vm_id"]
    if created["status"] != "completed" or created.get("vm", {}).get("status") != "RUNNING":
        raise SystemExit(f"api-fuzz seed: the seed VM did not start: {json.dumps(created)}")
    api.call("PUT", f"/vms/{vm_id}/files?path={SEED_FILE}", raw=b"seeded for the API fuzz run\n")

    # A paused sandbox (to resume).
    paused = api.call("POST", "/vms?wait=120s", {"name": f"fuzz-paused-{tag}"}, expect=(200,))["vm_id"]
    api.call("POST", f"/vms/{paused}/pause?wait=30s", {}, expect=(200,))

    # Sandboxes for pause and delete, which would otherwise pick the ones above.
    pausable = api.call("POST", "/vms?wait=120s", {"name": f"fuzz-pausable-{tag}"}, expect=(200,))["vm_id"]
    deletable = api.call("POST", "/vms", {"name": f"fuzz-deletable-{tag}"}, expect=(202,))["vm_id"]

    # Running tasks (to cancel): commands that outlive the run.
    live, executions = [], []
    for _ in range(LIVE_TASKS):
        r = api.call("POST", f"/vms/{vm_id}/execute", {"command": "sleep", "args": ["900"]}, expect=(202,))
        live.append(r["task_id"])
        executions.append(r["execution_id"])
    done = api.call("POST", f"/vms/{vm_id}/execute?wait=60s", {"command": "echo", "args": ["seeded"]},
                    expect=(200,))
    executions.append(done["execution_id"])
    for task_id in live:
        wait_task(api, task_id, ("running",))

    # Dead tasks (to retry and delete): a sandbox whose image no registry serves
    # (port 1 refuses at once), so its vm:create fails for good.
    dead = []
    for i in range(2 * DEAD_TASKS):
        r = api.call("POST", "/vms", {"name": f"fuzz-dead-{tag}-{i}", "image": "127.0.0.1:1/aetherium/none:seed"},
                     expect=(202,))
        dead.append(r["task_id"])
    for task_id in dead:
        task = wait_task(api, task_id, ("failed", "completed", "cancelled"), timeout=240)
        if task["status"] != "failed" or not task.get("archived_at"):
            raise SystemExit(f"api-fuzz seed: task {task_id} did not end dead: {json.dumps(task)}")

    # A workspace with secrets (to delete). Its preparation may still run: secrets
    # can be set and deleted while it does.
    api.call("POST", "/environments", {"name": f"fuzz-env-{tag}"}, expect=(201,))
    ws = api.call("POST", "/workspaces", {"name": f"fuzz-ws-{tag}", "environment_id": f"fuzz-env-{tag}"},
                  expect=(201,))
    secret_ids = []
    for i in range(WORKSPACE_SECRETS):
        s = api.call("POST", f"/workspaces/{ws['id']}/secrets",
                     {"name": f"FUZZ_SEED_{i}", "value": secrets.token_hex(8)}, expect=(201,))
        secret_ids.append(s["id"])

    # What the deletes of secrets and workspaces are seeded with instead, so that
    # they do not pick the workspace and secrets above from earlier responses.
    global_ids = []
    for i in range(2):
        s = api.call("POST", "/secrets", {"name": f"FUZZ_SEED_GLOBAL_{tag}_{i}", "value": secrets.token_hex(8)},
                     expect=(201,))
        global_ids.append(s["id"])
    doomed = api.call("POST", "/workspaces", {"name": f"fuzz-ws-doomed-{tag}", "environment_id": f"fuzz-env-{tag}"},
                      expect=(201,))

    write_dict(out_dir, "vm-ids", [vm_id])
    write_dict(out_dir, "global-secret-ids", global_ids)
    write_dict(out_dir, "deletable-workspace-ids", [doomed["id"]])
    write_dict(out_dir, "file-paths", [SEED_FILE, "/etc/hostname"])
    write_dict(out_dir, "paused-vm-ids", [paused])
    write_dict(out_dir, "pausable-vm-ids", [pausable])
    write_dict(out_dir, "deletable-vm-ids", [deletable])
    write_dict(out_dir, "execution-ids", executions)
    write_dict(out_dir, "live-task-ids", live)
    write_dict(out_dir, "retry-task-ids", dead[:DEAD_TASKS])
    write_dict(out_dir, "delete-task-ids", dead[DEAD_TASKS:])
    write_dict(out_dir, "workspace-ids", [ws["id"]])
    write_dict(out_dir, "workspace-secret-ids", secret_ids)
    print(f"api-fuzz seed: VM {vm_id}, paused VM {paused}, {len(live)} running and {len(dead)} dead tasks, "
          f"workspace {ws['id']} with {len(secret_ids)} secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
