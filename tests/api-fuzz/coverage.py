"""Fails a fuzz run in which an operation never succeeded.

A run whose operations only ever met 401s (a revoked key) or 404s (ids that never
existed) checked nothing about them, yet schemathesis counts them as passed. The
server counts every answer by method, route template and status
(`aetherium_http_requests_total`, read from its metrics after the run): every
operation the spec lists, bar those the run excludes or exempts, must have had a
2xx (or a 3xx: a redirect is an answer).

    python3 coverage.py OPENAPI_JSON METRICS_TEXT EXCLUDE_REGEX [EXEMPT_REGEX]

EXEMPT_REGEX names `METHOD path` pairs that are fuzzed but cannot succeed without
a secret the fuzzer cannot know (a password); their own tests cover the success.

Prints, per operation without a 2xx, the statuses it did get; exits 1 if any.
"""

import json
import re
import sys
from collections import defaultdict

METHODS = ("get", "post", "put", "patch", "delete")
# Greedy: label values hold braces themselves (`route="/api/v1/vms/{id}"`).
SAMPLE = re.compile(r"^aetherium_http_requests_total\{(?P<labels>.*)\}\s+(?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def operations(spec, exclude):
    for path, item in spec.get("paths", {}).items():
        if exclude.search(path):
            continue
        for method in METHODS:
            if method in item:
                yield method.upper(), path


def answers(metrics_text):
    """{(method, route): {status: count}} from the Prometheus text."""
    seen = defaultdict(lambda: defaultdict(float))
    for line in metrics_text.splitlines():
        m = SAMPLE.match(line.strip())
        if not m:
            continue
        labels = dict(LABEL.findall(m.group("labels")))
        key = (labels.get("method", ""), labels.get("route", ""))
        seen[key][labels.get("status", "")] += float(m.group("value"))
    return seen


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    with open(argv[2], encoding="utf-8") as f:
        seen = answers(f.read())
    exclude = re.compile(argv[3])
    exempt = re.compile(argv[4]) if len(argv) == 5 and argv[4] else None
    ops = sorted(operations(spec, exclude), key=lambda o: (o[1], o[0]))
    if exempt:
        ops = [(m, p) for m, p in ops if not exempt.search(f"{m} {p}")]
    if not ops:
        print("api-fuzz coverage: the spec lists no operation", file=sys.stderr)
        return 1
    if not seen:
        print("api-fuzz coverage: the metrics hold no request count", file=sys.stderr)
        return 1
    missing = []
    for method, path in ops:
        statuses = seen.get((method, path), {})
        # A redirect is a success too (`GET /docs` answers 303 by design).
        if not any(s[:1] in ("2", "3") and n > 0 for s, n in statuses.items()):
            got = ", ".join(f"{s}x{int(n)}" for s, n in sorted(statuses.items())) or "no request"
            missing.append(f"  {method} {path}: {got}")
    reached = len(ops) - len(missing)
    print(f"api-fuzz coverage: {reached}/{len(ops)} operations answered 2xx at least once")
    if missing:
        print("api-fuzz coverage: these never succeeded, so the run checked nothing of what they do:")
        print("\n".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
