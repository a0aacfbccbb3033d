#!/usr/bin/env python3
"""Pools the rounds of several compare.sh runs into one summary.

    examples/bench/pool.py examples/bench/results/compare-A.csv compare-B.csv ...

compare.sh prints the medians of one run. The README's tables pool the
rounds of several runs of the same build (run alternately with another
build): this prints, per concurrency, over all the rounds of the CSVs given,

  * the per-column medians: rps, p50 / p99 ms and CPU µs per request (user +
    system) of nginx and Switchyard, and Switchyard native's rps, as
    Markdown table rows;
  * the medians of the per-round ratios: Switchyard / nginx (with the lowest
    and highest round), Wasm / native, p99 over nginx's, user time per
    request over nginx's, and how many rounds Switchyard served more.

Only the standard library is used.
"""
import csv
import statistics
import sys


def main(paths):
    if not paths:
        sys.exit(__doc__.strip())
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    if not rows:
        sys.exit("no rounds in " + ", ".join(paths))

    def num(row, key):
        try:
            return float(row[key])
        except (KeyError, ValueError) as e:
            sys.exit(f"bad or missing column {key!r} in a row of round {row.get('round')}: {e}")

    def thin(x, fmt):
        return format(x, fmt).replace(",", " ")

    by_conns = {}
    for r in rows:
        by_conns.setdefault(int(r["conns"]), []).append(r)
    print("| connections | nginx rps | Switchyard (Wasm RR) rps | Switchyard native rps"
          " | p50 / p99 ms nginx | p50 / p99 ms Switchyard"
          " | CPU µs / request nginx (user + sys) | CPU µs / request Switchyard (user + sys) |")
    print("| ---: | ---: | ---: | ---: | --- | --- | --- | --- |")
    for c, rs in sorted(by_conns.items()):

        def med(key):
            return statistics.median(num(r, key) for r in rs)

        print(f"| {c} | {thin(med('nginx_rps'), ',.0f')} | {thin(med('switchyard_rps'), ',.0f')}"
              f" | {thin(med('switchyard-native_rps'), ',.0f')}"
              f" | {med('nginx_p50_ms'):.3f} / {med('nginx_p99_ms'):.2f}"
              f" | {med('switchyard_p50_ms'):.3f} / {med('switchyard_p99_ms'):.2f}"
              f" | {med('nginx_user_us'):.1f} + {med('nginx_sys_us'):.1f}"
              f" | {med('switchyard_user_us'):.1f} + {med('switchyard_sys_us'):.1f} |")
    print()
    for c, rs in sorted(by_conns.items()):

        def ratios(a, b):
            return [num(r, a) / num(r, b) for r in rs if num(r, b) > 0]

        vs_nginx = ratios("switchyard_rps", "nginx_rps")
        print(f"-c{c}: {len(rs)} rounds;"
              f" Switchyard / nginx {statistics.median(vs_nginx):.2f}"
              f" (lowest {min(vs_nginx):.2f}, highest {max(vs_nginx):.2f});"
              f" Wasm / native {statistics.median(ratios('switchyard_rps', 'switchyard-native_rps')):.2f};"
              f" p99 over nginx's {statistics.median(ratios('switchyard_p99_ms', 'nginx_p99_ms')):.2f};"
              f" user time over nginx's {statistics.median(ratios('switchyard_user_us', 'nginx_user_us')):.2f};"
              f" Switchyard served more in {sum(x > 1 for x in vs_nginx)}")


if __name__ == "__main__":
    main(sys.argv[1:])
