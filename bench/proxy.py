"""Benchmark: program N services x B backends into the real kernel, nftables and iptables.

    sudo python bench/proxy.py [--services 1000] [--backends 3] [--mode both|nft|iptables]
                               [--naive-services 100] [--compare-layouts]

nft (`NftablesProxy`, one table, one transaction per sync): install, the first (full) sync
first of all, as an agent's is (its layout through nft, its elements in one netlink batch
of the proxy's own), the same written in one nft transaction, render alone, an unchanged
sync (the table's layout read and compared), one within the recheck time, one endpoint
removed from one service, one service losing all but one backend, a full rewrite of the
existing table, cleanup; with libnftables in this process and with one `nft -f -` process
per transaction. Then the agent's side (`gitops.agents.agent.ServiceMemo`): the same
Services as the JSON a sync reply carries, decoded and turned into rules, then one endpoint
fewer in a reply that is all new JSON (as the server sends it), through the memo and the
proxy, and as the agent did it before (every Service decoded and every rule built anew).
CPU seconds are shown beside wall time (this machine is shared: wall time grows with its
load, CPU time much less).
`--compare-layouts` also times the endpoint selection of the layouts we did not choose
(kube-proxy's chain and anonymous map per service, a named map per service, one map for
every endpoint used by a chain per service) on the same services.

iptables (`IptablesProxy`, `render` + one `iptables-restore --noflush`): first sync, an
unchanged sync (skipped), and a sync after one backend changed. Its naive baseline creates
the very chains and rules `render` writes, one `iptables` process per chain or rule; it
runs on `--naive-services` and is scaled linearly to the full count (which flatters it:
each call re-reads a ruleset that keeps growing).

Each part uses its own prefix and a service CIDR no traffic is sent to; everything is
removed at the end, also on failure. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import ipaddress
import json
import logging
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.agents import nftables
from gitops.agents.agent import ServiceMemo, service_rules
from gitops.agents.iptables import IptablesProxy, ServiceRule, render
from gitops.agents.nftables import LibraryNft, NftablesProxy
from gitops.codec import decode_as, encode
from gitops.model import Endpoint, NodeName, PodId, ServiceEndpoints, ServicePort, ServiceType

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


def make_services(services: int, backends: int) -> list[ServiceEndpoints]:
    """`make_rules`' Services as the control plane hands them to an agent."""
    base = int(ipaddress.IPv4Address("10.251.0.1"))
    out = []
    for i in range(services):
        port = ServicePort(80, 8000, "TCP", "http", 30000 + i if i % 10 == 0 else 0)
        endpoints = tuple(
            Endpoint(
                PodId(f"bench/svc{i}-{b}"),
                NodeName(f"node{b % 3}"),
                f"198.51.100.{1 + (i * backends + b) % 250}",
                8000 + b,
                f"192.0.2.{b % 3}",
                0,
            )
            for b in range(backends)
        )
        kind: ServiceType = "NodePort" if i % 10 == 0 else "ClusterIP"
        vip = str(ipaddress.IPv4Address(base + i))
        out.append(ServiceEndpoints("bench", f"svc{i}", vip, (port,), ((port, endpoints),), type=kind))
    return out


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
    started, cpu = time.perf_counter(), time.process_time()
    action()
    took, used = time.perf_counter() - started, time.process_time() - cpu
    print(f"  {label:<52} {took * 1000:10.1f} ms  ({used * 1000:8.1f} ms CPU here)")
    return took


def one_endpoint_less(rules: list[ServiceRule]) -> list[ServiceRule]:
    return [*rules[:-1], dataclasses.replace(rules[-1], backends=rules[-1].backends[:-1])]


def first_sync_in_one_transaction(rules: list[ServiceRule], backend: str) -> float:
    """The first sync written as one nft transaction (`netlink=False`), in s."""
    proxy = NftablesProxy(
        CIDR, prefix=f"GOB{secrets.token_hex(2)}", route_localnet=False, backend=backend, netlink=False
    )
    try:
        proxy.install()
        return timed("the same in one nft transaction (netlink=False)", lambda: proxy.sync(rules))
    finally:
        proxy.cleanup()


def bench_nft(rules: list[ServiceRule], backend: str) -> dict[str, float]:
    """The nftables proxy's figures, in ms."""
    proxy = NftablesProxy(CIDR, prefix=f"GOB{secrets.token_hex(2)}", route_localnet=False, backend=backend)
    out: dict[str, float] = {}
    try:
        print(f"nftables through {proxy.nft.description} (table {proxy.table}):")
        timed("install (the table, its frame, the CIDR reject)", proxy.install)
        cpu = time.process_time()
        # First, as an agent's first sync is: nothing read or cached yet in this process.
        out["full_sync_ms"] = timed(f"first sync, {len(rules)} services", lambda: proxy.sync(rules))
        out["full_sync_cpu_ms"] = time.process_time() - cpu
        if not proxy.netlink:
            print("  (the netlink batch was refused: written in one nft transaction)")
        out["full_sync_one_transaction_ms"] = first_sync_in_one_transaction(rules, backend)
        if backend == "library":
            out["render_ms"] = timed("render only", lambda: nftables.render(rules, service_cidr=CIDR))
        out["unchanged_checked_ms"] = timed(
            "unchanged sync, layout read and compared", lambda: proxy.sync(rules)
        )
        proxy.recheck_seconds = 10.0  # as the agent runs it: the kernel is read every 10 s
        proxy.sync(rules)
        out["unchanged_within_recheck_ms"] = timed(
            "unchanged sync within the agent's 10 s recheck", lambda: proxy.sync(rules)
        )
        proxy.recheck_seconds = 0.0
        out["one_endpoint_ms"] = timed(
            "one endpoint removed from one service", lambda: proxy.sync(one_endpoint_less(rules))
        )
        timed("back again", lambda: proxy.sync(rules))
        # The agent builds every rule anew each tick: equal values, other objects.
        fresh = [dataclasses.replace(r) for r in one_endpoint_less(rules)]
        out["one_endpoint_new_objects_ms"] = timed(
            "the same, every rule a new object (as the agent gives them)", lambda: proxy.sync(fresh)
        )
        timed("back again", lambda: proxy.sync(rules))
        changed = [*rules[:-1], dataclasses.replace(rules[-1], backends=rules[-1].backends[:1])]
        out["one_service_lost_backends_ms"] = timed(
            "sync after one service lost backends", lambda: proxy.sync(changed)
        )
        proxy.resync_seconds = 0.0
        out["full_rewrite_ms"] = timed("full rewrite of the existing table", lambda: proxy.sync(rules))
        out["cleanup_ms"] = timed("cleanup", proxy.cleanup)
    finally:
        proxy.cleanup()
    return {k: round(v * 1000, 1) for k, v in out.items()}


def bench_agent(services: int, backends: int) -> dict[str, float]:
    """What an agent pays for its Services each tick, through the memo and the proxy
    (libnftables, the 10 s recheck), in ms. The JSON is parsed before the clock starts."""
    node, cluster = NodeName("node0"), "198.51.100.0/24"
    encoded = [encode(s) for s in make_services(services, backends)]
    fewer = copy.deepcopy(encoded)
    fewer[-1]["endpoints"][0][1].pop()  # the last Service's port loses its last endpoint
    replies = [json.loads(json.dumps(encoded)) for _ in range(2)]  # every reply is all new JSON
    fewer = json.loads(json.dumps(fewer))
    proxy = NftablesProxy(CIDR, prefix=f"GOB{secrets.token_hex(2)}", route_localnet=False, recheck_seconds=10)
    memo = ServiceMemo(node)
    out: dict[str, float] = {}

    def tick(reply: list[dict[str, object]]) -> None:
        _, rules = memo.update(reply, cluster)
        proxy.sync(rules)

    def tick_before(reply: list[dict[str, object]]) -> None:
        decoded = [decode_as(ServiceEndpoints, s) for s in reply]
        proxy.sync(service_rules(decoded, node, cluster))

    try:
        print(f"the agent's side, {services} services as sync replies carry them (table {proxy.table}):")
        proxy.install()
        out["agent_first_ms"] = timed("first tick: every service decoded, first sync", lambda: tick(encoded))
        out["agent_unchanged_ms"] = timed("a tick with the same reply (held)", lambda: tick(encoded))
        out["agent_new_json_ms"] = timed("a reply of new but equal JSON", lambda: tick(replies[0]))
        out["agent_one_endpoint_ms"] = timed("a reply with one endpoint fewer", lambda: tick(fewer))
        timed("back again", lambda: tick(replies[1]))
        out["agent_one_endpoint_before_ms"] = timed(
            "the same as the agent did it before (all decoded, all rules new)", lambda: tick_before(fewer)
        )
    finally:
        proxy.cleanup()
    return {k: round(v * 1000, 1) for k, v in out.items()}


def compare_layouts(rules: list[ServiceRule]) -> dict[str, float]:
    """The endpoint selection of every service as other layouts would write it (the service
    verdict map and the frame left out, being the same), one transaction each, in ms."""
    nft = LibraryNft()
    table = f"gobl{secrets.token_hex(2)}"

    def chain(name: str, *rules_: str) -> str:
        return f"\tchain {name} {{\n" + "".join(f"\t\t{r}\n" for r in rules_) + "\t}\n"

    layouts: dict[str, list[str]] = {
        "kube-proxy: chains, anonymous vmap per service": [],
        "named map per service": [],
    }
    one_map = ["\tmap eps { typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport ; }\n"]
    one_map_elements = []
    for i, rule in enumerate(rules):
        n = len(rule.backends)
        seps = [f"ep-{i}-{b}" for b in range(n)]
        choices = ", ".join(f"{b} : goto {sep}" for b, sep in enumerate(seps))
        kube = layouts["kube-proxy: chains, anonymous vmap per service"]
        kube.append(chain(f"svc-{i}", f"numgen random mod {n} vmap {{ {choices} }}"))
        for sep, (ip, port, _) in zip(seps, rule.backends, strict=True):
            kube.append(
                chain(sep, f"ip saddr {ip} jump mark-masq", f"meta l4proto tcp dnat ip to {ip}:{port}")
            )
        data = ", ".join(f"{b} : {ip} . {port}" for b, (ip, port, _) in enumerate(rule.backends))
        typed = "typeof numgen random mod 1 : ip daddr . tcp dport"
        layouts["named map per service"] += [
            f"\tmap m-{i} {{ {typed} ; elements = {{ {data} }} }}\n",
            chain(f"svc-{i}", f"meta l4proto tcp dnat ip to numgen random mod {n} map @m-{i}"),
        ]
        one_map.append(
            chain(
                f"svc-{i}",
                f"meta l4proto tcp dnat ip to ip daddr . tcp dport . numgen random mod {n} map @eps",
            )
        )
        one_map_elements += [
            f"{rule.vip} . {rule.port} . {b} : {ip} . {port}" for b, (ip, port, _) in enumerate(rule.backends)
        ]
    layouts["kube-proxy: chains, anonymous vmap per service"].append(
        chain("mark-masq", "meta mark set meta mark | 0x4000")
    )
    layouts["one map of every endpoint, a chain per service"] = one_map
    out: dict[str, float] = {}
    print("layouts we did not choose (the endpoint selection only, one transaction each):")
    for name, body in layouts.items():
        text = f"table ip {table} {{\n{''.join(body)}}}\n"
        if name.startswith("one map"):
            text += f"add element ip {table} eps {{ {', '.join(one_map_elements)} }}\n"
        try:
            out[name] = round(timed(name, lambda text=text: nft.run(text)) * 1000, 1)
        finally:
            nft.run(f"add table ip {table}\ndelete table ip {table}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--mode", choices=("both", "nft", "iptables"), default="both")
    parser.add_argument("--naive-services", type=int, default=100)
    parser.add_argument("--iptables", default="iptables")
    parser.add_argument("--compare-layouts", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    rules = make_rules(args.services, args.backends)
    addresses = len({b.ip for r in rules for b in r.backends})
    print(f"{args.services} services x {args.backends} backends ({addresses} distinct backend addresses)")
    figures: dict[str, object] = {"services": args.services, "backends": args.backends}
    if args.mode in ("both", "nft"):
        version = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=False).stdout
        print(version.strip())
        figures.update(bench_nft(rules, "library"))
        figures["process"] = bench_nft(rules, "process")
        figures.update(bench_agent(args.services, args.backends))
        if args.compare_layouts:
            figures["layouts_ms"] = compare_layouts(rules)
    if args.mode in ("both", "iptables"):
        figures["iptables"] = bench_iptables(rules, args)
    print(json.dumps(figures))
    return 0


def bench_iptables(rules: list[ServiceRule], args: argparse.Namespace) -> dict[str, float]:
    prefix = f"GOB{secrets.token_hex(2)}"
    version = subprocess.run([args.iptables, "--version"], capture_output=True, text=True, check=True).stdout
    print(f"{version.strip()}; prefix {prefix}")

    # The host's route_localnet is left as it is: the benchmark sends no traffic.
    proxy = IptablesProxy(CIDR, prefix=prefix, iptables=args.iptables, route_localnet=False)
    naive_proxy = IptablesProxy(
        CIDR, prefix=f"GON{secrets.token_hex(2)}", iptables=args.iptables, route_localnet=False
    )
    try:
        print("iptables, batched (render + one iptables-restore --noflush):")
        timed("render only", lambda: render(rules, service_cidr=CIDR, prefix=prefix))
        timed("install (top chains, jumps, CIDR reject)", proxy.install)
        first = timed(f"first sync, {args.services} services", lambda: proxy.sync(rules))
        unchanged = timed("unchanged sync, chains read and checked", lambda: proxy.sync(rules))
        proxy.recheck_seconds = 10.0  # as the agent runs it: the kernel is read every 10 s
        proxy.sync(rules)
        settled = timed("unchanged sync within the agent's 10 s recheck", lambda: proxy.sync(rules))
        proxy.recheck_seconds = 0.0
        one = timed("one endpoint removed from one service", lambda: proxy.sync(one_endpoint_less(rules)))
        changed = [*rules[:-1], dataclasses.replace(rules[-1], backends=rules[-1].backends[:1])]
        timed("sync after one service lost backends", lambda: proxy.sync(changed))
        timed("cleanup", proxy.cleanup)

        n = min(args.naive_services, args.services)
        print(f"iptables, naive (one iptables process per chain/rule), {n} services:")
        started = time.perf_counter()
        processes = naive_apply(rules[:n], naive_proxy.prefix, args.iptables)
        naive = time.perf_counter() - started
        scaled = naive * args.services / n
        print(f"  {processes} processes{'':<38} {naive * 1000:10.1f} ms")
        print(f"  scaled linearly to {args.services} services{'':<24} {scaled * 1000:10.1f} ms")
        print(f"ratio naive/batched for the first sync: {scaled / first:.0f}x")
        return {
            "first_sync_s": round(first, 4),
            "unchanged_checked_s": round(unchanged, 4),
            "unchanged_within_recheck_s": round(settled, 6),
            "one_endpoint_s": round(one, 4),
            "naive_scaled_s": round(scaled, 3),
            "ratio_naive_first": round(scaled / first, 1),
        }
    finally:
        proxy.cleanup()
        naive_proxy.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
