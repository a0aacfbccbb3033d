#!/usr/bin/env python3
"""admission.py -- the built-in admission rules measured, on this machine,
over loopback only.

WHAT IT MEASURES
  Three fast backends (one private nginx instance, three `server` blocks
  answering 200) behind target/release/switchyard with the round-robin
  plugin, driven by wrk:

  accuracy  `limit-req = { rate = R/s, burst = B }`; two clients (127.0.0.1,
            and 10.0.0.2 through a trusted X-Forwarded-For), each over
            CONNS keep-alive connections at the same time for T seconds
            across both worker threads. Each should get B + R x T requests
            through (T measured around wrk); the rest are 429s.
  cost      the same proxy without admission rules, with a limit-req that
            never refuses (one key: every request takes the same bucket,
            the worst case for its lock), and with the rate-limit admission
            plugin doing the same; wrk -c50, ROUNDS rounds taking the three
            in turn: requests per second, and the median ratios.
  memory    `limit-req` keyed by a header, a new key on every request
            (KEYS requests): the limiter's keys (/status) and the proxy's
            RSS growth, with the default `limit-keys` (100 000) and with
            `limit-keys = KEYS`.

USAGE
  cargo build --release -p switchyard
  examples/bench/admission.py [--rounds 5] [--duration 5] [--keys 1000000]
                              [--only accuracy,cost,memory]
PREREQUISITES
  nginx, wrk (apt-get install -y nginx wrk); the system nginx is not touched.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle_conns import free_port, rss_kib, wait_port  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(ROOT, "target", "release", "switchyard"))
PLUGINS = os.path.join(ROOT, "plugins")


class Bench:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="switchyard-admission.")
        os.chmod(self.tmp, 0o755)
        self.procs = []
        self.backends = [free_port() for _ in range(3)]
        servers = "\n".join(
            f'server {{ listen 127.0.0.1:{p}; location / {{ return 200 "Hello from backend {i + 1}\\n"; }} }}'
            for i, p in enumerate(self.backends)
        )
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"daemon off; worker_processes 1; pid {self.tmp}/nginx.pid; error_log {self.tmp}/nginx.err;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; keepalive_requests 1000000; {servers} }}\n"
            )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.spawn([nginx, "-p", self.tmp, "-c", conf])
        wait_port(self.backends[0])

    def spawn(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def proxy(self, name, extra):
        port, admin = free_port(), free_port()
        servers = ", ".join(f'"127.0.0.1:{p}"' for p in self.backends)
        path = os.path.join(self.tmp, f"{name}.toml")
        with open(path, "w") as f:
            f.write(
                f'listen = "127.0.0.1:{port}"\nadmin = "127.0.0.1:{admin}"\nplugins = "{PLUGINS}"\n'
                f'trusted-proxies = ["127.0.0.1"]\n\n[[upstream]]\nname = "app"\nservers = [{servers}]\n{extra}\n'
            )
        p = self.spawn([BIN, "run", "--config", path])
        wait_port(port)
        wait_port(admin)
        return {"port": port, "admin": admin, "pid": p.pid, "proc": p}

    def stop(self, proxy):
        proxy["proc"].send_signal(signal.SIGTERM)
        proxy["proc"].wait(timeout=30)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def status(proxy):
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy['admin']}/status", timeout=10) as r:
        return json.load(r)["upstreams"][0]


def wrk(port, conns, seconds, threads=1, header=None, script=None, script_args=()):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s"]
    if header:
        cmd += ["-H", header]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/")
    if script_args:
        cmd += ["--", *script_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def wrk_result(p):
    out = p.communicate()[0]
    total, took = re.search(r"(\d+) requests in ([\d.]+)s", out).groups()
    total = int(total)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return total, total - (int(non2xx.group(1)) if non2xx else 0), rps, float(took)


def accuracy(b, args):
    rate, burst, conns, secs = 1000, 100, 50, args.duration * 2
    proxy = b.proxy("accuracy", f'limit-req = {{ rate = "{rate}/s", burst = {burst} }}')
    one = wrk(proxy["port"], conns, secs)
    two = wrk(proxy["port"], conns, secs, header="X-Forwarded-For: 10.0.0.2")
    r1, r2 = wrk_result(one), wrk_result(two)
    print(f"\n## accuracy: limit-req {rate}/s burst {burst}, 2 clients x {conns} connections at once")
    print("| client | T (s, wrk's) | requests | allowed | expected (B + R x T) | allowed / expected |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (total, ok, _, took) in (("127.0.0.1", r1), ("10.0.0.2 (X-Forwarded-For)", r2)):
        expect = burst + rate * took
        print(f"| {name} | {took:.2f} | {total} | {ok} | {expect:.0f} | {ok / expect:.4f} |")
    s = status(proxy)["admission"]
    print(f"/status: allowed {s['allowed']}, limited {s['limited']}")
    b.stop(proxy)


def cost(b, args):
    proxies = [
        ("without limits", b.proxy("plain", "")),
        ("with limit-req", b.proxy("limited", 'limit-req = { rate = "1000000/s", burst = 1000000 }')),
        (
            "with the rate-limit plugin",
            b.proxy(
                "plugin",
                'admission = "rate-limit"\nadmission-params = { rate = "1000000/s", burst = 100000 }',
            ),
        ),
    ]
    for _, p in proxies:
        wrk_result(wrk(p["port"], 50, 2))
    rows = []
    for _ in range(args.rounds):
        rows.append([wrk_result(wrk(p["port"], 50, args.duration))[2] for _, p in proxies])
    print(f"\n## cost: wrk -t1 -c50, {args.rounds} rounds of {args.duration} s, the proxies in turn")
    print("| round | " + " | ".join(f"{name} (rps)" for name, _ in proxies) + " | ratios to the first |")
    print("| ---: |" + " ---: |" * (len(proxies) + 1))
    for i, row in enumerate(rows, 1):
        ratios = " / ".join(f"{r / row[0]:.3f}" for r in row[1:])
        print(f"| {i} | " + " | ".join(f"{r:.0f}" for r in row) + f" | {ratios} |")
    for j, (name, _) in enumerate(proxies[1:], 1):
        print(f"median ratio {name}: {statistics.median(row[j] / row[0] for row in rows):.3f}")
    for name, p in proxies[1:]:
        assert status(p)["admission"]["limited"] == 0, name
    for _, p in proxies:
        b.stop(p)


LUA = """
local n = 0
local id = 0
local counter = 0
function setup(thread) counter = counter + 1; thread:set("id", counter) end
function init(args) id = args[1] .. "-" .. wrk.thread:get("id") end
function request()
  n = n + 1
  return wrk.format("GET", "/", { ["X-Key"] = id .. "-" .. n })
end
"""


def memory(b, args):
    script = os.path.join(b.tmp, "keys.lua")
    with open(script, "w") as f:
        f.write(LUA)
    print(f"\n## memory: a new X-Key on every request, until {args.keys} requests")
    print("| limit-keys | requests | keys held | max keys | RSS before (MiB) | RSS after (MiB) | growth per key held (bytes) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for keys in (100_000, args.keys):
        proxy = b.proxy(
            f"memory{keys}",
            f'limit-req = {{ rate = "1/m", burst = 1, key = "header:x-key" }}\nlimit-keys = {keys}',
        )
        wrk_result(wrk(proxy["port"], 50, 1))
        before = rss_kib(proxy["pid"])
        sent, chunk = 0, 0
        while sent < args.keys:
            chunk += 1
            run = wrk(proxy["port"], 50, 5, threads=2, script=script, script_args=[str(chunk)])
            sent += wrk_result(run)[0]
        s = status(proxy)
        lim = s["admission"]["limiters"][0]
        after = rss_kib(proxy["pid"])
        per = (after - before) * 1024 / max(lim["keys"], 1)
        print(f"| {keys} | {sent} | {lim['keys']} | {lim['max_keys']} | {before / 1024:.1f} | {after / 1024:.1f} | {per:.0f} |")
        b.stop(proxy)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--only", default="accuracy,cost,memory")
    args = ap.parse_args()
    for tool in ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"missing: {tool} (apt-get install -y nginx wrk)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} not found: cargo build --release -p switchyard")
    b = Bench()
    try:
        print(f"switchyard: {BIN}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}")
        for part in args.only.split(","):
            {"accuracy": accuracy, "cost": cost, "memory": memory}[part](b, args)
    finally:
        b.close()


if __name__ == "__main__":
    main()
