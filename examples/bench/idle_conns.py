#!/usr/bin/env python3
"""Memory per idle keep-alive client connection.

Starts one example backend (target/release/switchyard-backend) and the proxy
(target/release/switchyard), opens N client connections to the proxy, sends
one request on each (so every connection has been through a full exchange
and sits idle in keep-alive), and reads the proxy's resident memory (VmRSS
from /proc) before and after. Prints the RSS growth per connection.

    examples/bench/idle_conns.py [-n 10000] [--bin target/release]

Needs a file-descriptor limit above N (the script raises its own soft limit
to the hard limit and sets the proxy's with `prlimit` semantics via
resource.setrlimit in the child).
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def is_open(conn):
    """Whether the proxy has kept `conn` open (nothing, not even an end of
    stream, is waiting on it)."""
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10000, help="client connections")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--bin", default=os.path.join(root, "target", "release"))
    args = ap.parse_args()

    limit = raise_nofile(args.n)
    if limit < args.n + 100:
        sys.exit(f"file-descriptor limit {limit} is below {args.n}; raise the hard limit (ulimit -Hn)")

    tmp = tempfile.mkdtemp(prefix="switchyard-idle.")
    procs = []
    try:
        backend_port = free_port()
        procs.append(subprocess.Popen(
            [os.path.join(args.bin, "switchyard-backend"), "--name", "1", "--listen", f"127.0.0.1:{backend_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: raise_nofile(args.n)))
        wait_port(backend_port)
        proxy_port = free_port()
        config = os.path.join(tmp, "switchyard.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:{proxy_port}"\nadmin = "off"\nplugins = "{os.path.join(root, "plugins")}"\n'
                    f'[[upstream]]\nname = "app"\nservers = ["127.0.0.1:{backend_port}"]\n')
        proxy = subprocess.Popen(
            [os.path.join(args.bin, "switchyard"), "run", "--config", config, "--no-watch"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"},
            preexec_fn=lambda: raise_nofile(args.n))
        procs.append(proxy)
        wait_port(proxy_port)

        # Warm up: a few requests so that lazily built state (plugin
        # instances per worker, the backend pool) exists before the baseline.
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", proxy_port))
            s.sendall(request)
            s.recv(4096)
            s.close()
        time.sleep(0.5)
        before = rss_kib(proxy.pid)
        fds_before = len(os.listdir(f"/proc/{proxy.pid}/fd"))

        conns = []
        start = time.time()
        for i in range(args.n):
            s = socket.create_connection(("127.0.0.1", proxy_port))
            s.sendall(request)
            conns.append(s)
            # Read the answers in batches so the accept queue keeps moving.
            if len(conns) % 500 == 0 or i == args.n - 1:
                for c in conns[-500:]:
                    c.setblocking(True)
                    data = c.recv(4096)
                    if not data.startswith(b"HTTP/1.1 200"):
                        sys.exit(f"unexpected answer: {data[:80]!r}")
        took = time.time() - start
        time.sleep(1.0)
        after = rss_kib(proxy.pid)
        # Client connections still open (the proxy closes keep-alive
        # connections idle for longer than its keep-alive timeout, so a slow
        # run loses its first ones): count them, do not assume N. The
        # proxy's other new descriptors are backend connections it keeps
        # for reuse; their memory is counted against the clients.
        live = sum(1 for c in conns if is_open(c))
        fds = len(os.listdir(f"/proc/{proxy.pid}/fd")) - fds_before
        per = (after - before) * 1024 / max(live, 1)
        print(f"{args.n} keep-alive connections opened (each after one request) in {took:.1f} s; "
              f"{live} still open; {fds - live} backend connections kept")
        print(f"proxy RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after: "
              f"{per / 1024:.2f} KiB per open client connection")
        for c in conns:
            c.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
