"""Drives a real `klambda up` and prints the pipeline figures recorded in docs/BENCHMARKS.md.

Usage: bench_pipeline.py KLAMBDA_BINARY [--functions N] [--concurrent N] [--resume N]
Standard library only.
"""
import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

NODE = "exports.handler = async (event) => ({ ok: true, n: %d });"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Platform:
    def __init__(self, binary):
        self.binary = binary
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix="klambda-bench-")
        self.base = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "up", "--port", str(self.port), "--data-dir", self.data],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.data, "up.log"), "a"),
        )
        for _ in range(600):
            try:
                self.get("/functions")
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("klambda up did not start; see " + self.data)

    def crash_and_restart(self):
        """SIGKILL, then the same command on the same data directory; returns when it answers."""
        self.process.kill()
        self.process.wait()
        self.start()

    def auth(self):
        """The API token `klambda up` keeps in its data directory, as a bearer header."""
        try:
            with open(os.path.join(self.data, "api-token")) as f:
                return {"authorization": "Bearer " + f.read().strip()}
        except OSError:
            return {}

    def get(self, path):
        request = urllib.request.Request(self.base + path, headers=self.auth())
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def submit(self, name, event_id, n, kind="created"):
        data = {"name": name, "runtime": "nodejs20", "handler": "index.handler",
                "source": {"kind": "inline", "files": [{"path": "index.js", "content": NODE % n}]}}
        event = {"specversion": "1.0", "id": event_id, "source": "/bench", "subject": name,
                 "type": f"io.knative.lambda.function.{kind}", "datacontenttype": "application/json", "data": data}
        request = urllib.request.Request(self.base + "/", data=json.dumps(event).encode(),
                                         headers={"content-type": "application/cloudevents+json", **self.auth()})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202, response.status

    def wait_ready(self, name, since_mark=None, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                state = self.get(f"/functions/{name}")
                if state["phase"] in ("ready", "failed") and (since_mark is None or state["updatedAt"] != since_mark):
                    return state
            except urllib.error.HTTPError:
                pass
            time.sleep(0.005)
        raise SystemExit(f"{name} not ready within {timeout} s")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--functions", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--resume", type=int, default=10)
    args = parser.parse_args()

    platform = Platform(args.binary)
    try:
        time.sleep(2)
        idle_rss = rss_kib(platform.process.pid)

        # Submit → ready, one function at a time (Node.js, no dependencies: the build is the
        # syntax check; the deploy starts the function's process and waits for its health check).
        totals, pipeline, deploys = [], [], []
        for i in range(args.functions):
            name = f"bench-{i}"
            platform.submit(name, f"create-{i}", i)
            state = platform.wait_ready(name)
            assert state["phase"] == "ready", state
            t = state["timingsMs"]
            totals.append(t["total"])
            deploys.append(t["deploy"])
            pipeline.append(t["total"] - t["deploy"])

        # Cached redeploy → ready: the same source again (a cache hit, the serving revision).
        cached = []
        for i in range(args.functions):
            name = f"bench-{i}"
            before = platform.get(f"/functions/{name}")["updatedAt"]
            platform.submit(name, f"redeploy-{i}", i, kind="updated")
            state = platform.wait_ready(name, since_mark=before)
            cached.append(state["timingsMs"]["total"])

        # N concurrent submissions of one function (distinct ids): every one must reach
        # service.ready (none lost).
        peak = [0]
        sampling = [True]

        def sample():
            while sampling[0]:
                peak[0] = max(peak[0], rss_kib(platform.process.pid))
                time.sleep(0.05)

        def readies():
            events = platform.get("/functions/bench-0/events?limit=100000")
            return sum(1 for e in events if e["event"]["type"] == "io.knative.lambda.service.ready")

        before = readies()
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            list(pool.map(lambda k: platform.submit("bench-0", f"load-{k}", 0, kind="updated"), range(args.concurrent)))
        accepted = time.time() - started
        ready = 0
        deadline = time.time() + 300
        while time.time() < deadline:
            # Each submission's chain of replies has its own ids, so each ends in its own
            # service.ready in the log.
            ready = readies() - before
            if ready >= args.concurrent:
                break
            time.sleep(0.2)
        elapsed = time.time() - started
        sampling[0] = False
        sampler.join()
        dead = platform.get("/dead-letters")

        # Restart → resumed work done: N fresh functions submitted, klambda up killed with
        # SIGKILL before they are ready, started again; the time from its restart (answering
        # again) until every one is ready, from what the status store recorded.
        names = [f"resume-{i}" for i in range(args.resume)]
        for i, name in enumerate(names):
            platform.submit(name, f"resume-{i}", i)
        platform.crash_and_restart()
        restarted = time.time()
        for name in names:
            state = platform.wait_ready(name)
            assert state["phase"] == "ready", state
        resumed = time.time() - restarted
    finally:
        platform.stop()

    rows = [
        ("submit → ready (p50 / p99), Node.js, no deps", f"{statistics.median(totals):.0f} / {percentile(totals, 99):.0f} ms"),
        ("  of which pipeline before deploy (p50 / p99)", f"{statistics.median(pipeline):.0f} / {percentile(pipeline, 99):.0f} ms"),
        ("  of which deploy: start process, health (p50)", f"{statistics.median(deploys):.0f} ms"),
        ("cached redeploy → ready (p50 / p99)", f"{statistics.median(cached):.0f} / {percentile(cached, 99):.0f} ms"),
        (f"{args.concurrent} concurrent submissions: accepted in", f"{accepted:.1f} s"),
        (f"{args.concurrent} concurrent submissions: all ready in", f"{elapsed:.1f} s ({ready}/{args.concurrent} ready, {len(dead)} dead letters)"),
        (f"klambda up killed with {args.resume} fresh submissions: restart → all ready", f"{resumed:.2f} s"),
        ("klambda up RSS idle", f"{idle_rss / 1024:.1f} MiB"),
        ("klambda up RSS peak under load", f"{peak[0] / 1024:.1f} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | --- |")
    for label, value in rows:
        print(f"| {label.ljust(width)} | {value} |")
    if ready < args.concurrent:
        sys.exit(f"only {ready} of {args.concurrent} submissions reached service.ready")


if __name__ == "__main__":
    main()
