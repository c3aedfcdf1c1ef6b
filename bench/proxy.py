"""Benchmark: program N services x B backends into real iptables, batched vs one process per rule.

    sudo python bench/proxy.py [--services 1000] [--backends 3] [--naive-services 100]

Our layout (`render` + one `iptables-restore --noflush`) is timed for the full count: first
sync, an unchanged sync (skipped), and a sync after one backend changed. The naive
baseline creates the very chains and rules `render` writes, one `iptables` process per chain or rule;
it runs on `--naive-services` and is scaled linearly to the full count (which flatters it:
each call re-reads a ruleset that keeps growing). Uses its own chain prefix and a service
CIDR no traffic is sent to; everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.agents.iptables import IptablesProxy, ServiceRule, render

CIDR = "10.251.0.0/16"


def make_rules(services: int, backends: int) -> list[ServiceRule]:
    base = int(ipaddress.IPv4Address("10.251.0.1"))
    return [
        ServiceRule(
            service=f"bench/svc{i}:http",
            vip=str(ipaddress.IPv4Address(base + i)),
            port=80,
            protocol="TCP",
            backends=tuple((f"198.51.100.{1 + (i * backends + b) % 250}", 8000 + b) for b in range(backends)),
            node_port=30000 + i if i % 10 == 0 else 0,  # one in ten a NodePort Service
        )
        for i in range(services)
    ]


def naive_apply(rules: list[ServiceRule], prefix: str, iptables: str) -> int:
    """Exactly the chains and rules `render` writes (nat and filter), one iptables process
    each; returns the number of processes."""
    calls: list[list[str]] = []
    table = ""
    for line in render(rules, service_cidr=CIDR, prefix=prefix).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            calls.append([table, "-N", line[1:].split()[0]])
        elif line.startswith("-A "):
            calls.append([table, *shlex.split(line)])
    for table, *args in calls:
        subprocess.run([iptables, "-w", "10", "-t", table, *args], check=True, capture_output=True)
    return len(calls)


def timed(label: str, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    took = time.perf_counter() - started
    print(f"  {label:<46} {took * 1000:10.1f} ms")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--naive-services", type=int, default=100)
    parser.add_argument("--iptables", default="iptables")
    args = parser.parse_args()

    rules = make_rules(args.services, args.backends)
    prefix = f"GOB{secrets.token_hex(2)}"
    version = subprocess.run([args.iptables, "--version"], capture_output=True, text=True, check=True).stdout
    print(f"{version.strip()}; {args.services} services x {args.backends} backends; prefix {prefix}")

    # The host's route_localnet is left as it is: the benchmark sends no traffic.
    proxy = IptablesProxy(CIDR, prefix=prefix, iptables=args.iptables, route_localnet=False)
    naive_proxy = IptablesProxy(
        CIDR, prefix=f"GON{secrets.token_hex(2)}", iptables=args.iptables, route_localnet=False
    )
    try:
        print("batched (render + one iptables-restore --noflush):")
        timed("render only", lambda: render(rules, service_cidr=CIDR, prefix=prefix))
        timed("install (top chains, jumps, CIDR reject)", proxy.install)
        first = timed(f"first sync, {args.services} services", lambda: proxy.sync(rules))
        unchanged = timed("unchanged sync, chains read and checked", lambda: proxy.sync(rules))
        proxy.recheck_seconds = 10.0  # as the agent runs it: the kernel is read every 10 s
        proxy.sync(rules)
        settled = timed("unchanged sync within the agent's 10 s recheck", lambda: proxy.sync(rules))
        proxy.recheck_seconds = 0.0
        changed = [*rules[:-1], dataclasses.replace(rules[-1], backends=rules[-1].backends[:1])]
        timed("sync after one service lost backends", lambda: proxy.sync(changed))
        timed("cleanup", proxy.cleanup)

        n = min(args.naive_services, args.services)
        print(f"naive (one iptables process per chain/rule), {n} services:")
        started = time.perf_counter()
        processes = naive_apply(rules[:n], naive_proxy.prefix, args.iptables)
        naive = time.perf_counter() - started
        scaled = naive * args.services / n
        print(f"  {processes} processes{'':<32} {naive * 1000:10.1f} ms")
        print(f"  scaled linearly to {args.services} services{'':<18} {scaled * 1000:10.1f} ms")
        print(f"ratio naive/batched for the first sync: {scaled / first:.0f}x")
        print(
            json.dumps(
                {
                    "services": args.services,
                    "backends": args.backends,
                    "first_sync_s": round(first, 4),
                    "unchanged_checked_s": round(unchanged, 4),
                    "unchanged_within_recheck_s": round(settled, 6),
                    "naive_scaled_s": round(scaled, 3),
                    "ratio_naive_first": round(scaled / first, 1),
                }
            )
        )
    finally:
        proxy.cleanup()
        naive_proxy.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
