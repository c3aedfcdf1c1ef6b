"""Cluster DNS latency: our server's answers for cluster names against the node's resolver.

    python bench/dns.py [--services 5000] [--headless-every 10] [--queries 20000]
                        [--resolver-queries 1000] [--resolver-name localhost.]
                        [--window 16] [--seed 7]

Builds `--services` Services (every `--headless-every`th headless with 3 pods, two of
them with a hostname; the rest ClusterIP; each with a named port) and times `build_zone`
on them. Serves them with `ClusterDns` on 127.0.0.1 (a free port, no upstreams: nothing
leaves loopback) in a separate process, as the agent's server is to the pods that ask
it, and sends `--queries` A queries, one at a time, over a plain UDP socket, for random
Services' full names (the messages are built before the clock starts). A name's first
query since the zone was built is "cold" (its reply is made: parse, look up, render),
later ones "warm" (the reply was memoised); both are reported. The baseline is the
node's own resolver (the first nameserver of /etc/resolv.conf), asked `--resolver-queries`
times by the same loop for one name it answers from its cache (`--resolver-name`,
`localhost.` by default; no other name is sent to it); if it does not answer, the output
says so. A query without a reply within 1 s is counted lost, not timed (5 in a row end
the run: the rest are counted not sent). Last, a pipelined run (`--window` queries in
flight) gives the answers per second our server sustains. Prints p50/p99/max per run,
the ratio of the node resolver's p99 to ours (over all queries, and over warm ones: like
the resolver's, answered from memory), and one JSON line. (Goal: p99 under 1 ms
for a cluster name, at ~10k queries/s.)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import multiprocessing.connection
import random
import socket
import statistics
import sys
import time
from pathlib import Path

# This script shares its name with the dnspython package: take its own folder, which
# Python puts first on the path, off the path before importing that package.
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.message
import dns.rcode
import structlog

from gitops.agents.dns import ClusterDns, build_zone, resolv_conf_nameservers
from gitops.model import Endpoint, NodeName, PodAddress, PodId, ServiceEndpoints, ServicePort

Result = tuple[float, bytes] | None
"""One query's (seconds until its reply, the reply), or None if it was lost."""


def make_services(count: int, headless_every: int) -> list[ServiceEndpoints]:
    http = ServicePort(80, 8080, "TCP", "http")
    services = []
    for i in range(count):
        namespace = f"team{i % 50}"
        if headless_every and i % headless_every == 0:
            pods = tuple(
                PodAddress(
                    PodId(f"{namespace}/db{i}-{k}"),
                    f"10.244.{i // 64}.{i % 64 * 4 + k + 1}",
                    f"db-{k}" if k < 2 else "",
                )
                for k in range(3)
            )
            endpoints = tuple(Endpoint(p.pod, NodeName("node-1"), p.ip, 8080, "", 0) for p in pods)
            services.append(
                ServiceEndpoints(
                    namespace, f"svc{i}", "", (http,), ((http, endpoints),), headless=True, addresses=pods
                )
            )
        else:
            services.append(
                ServiceEndpoints(namespace, f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}", (http,))
            )
    return services


def serve(services: int, headless_every: int, conn: multiprocessing.connection.Connection) -> None:
    """The server's process: build, serve, say the port, serve until told to stop."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = ClusterDns("127.0.0.1", 0, upstreams=[])
    server.update(make_services(services, headless_every))
    server.start()
    conn.send(server.bound_port)
    conn.recv()
    conn.send(server.stats)
    server.stop()


def sequential(
    address: tuple[str, int], wires: list[bytes], timeout: float = 1.0, max_lost: int = 5
) -> list[Result]:
    """Each query sent once the last one's reply came, or `timeout` passed (then it is
    lost); after `max_lost` losses in a row the rest are not sent (the list is shorter)."""
    results: list[Result] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.settimeout(timeout)
        for wire in wires:
            if lost >= max_lost:
                break
            started = time.perf_counter()
            s.send(wire)
            try:
                reply = s.recv(65535)
                while reply[:2] != wire[:2]:  # a late reply to a query given up on
                    reply = s.recv(65535)
            except TimeoutError:
                lost += 1
                results.append(None)
                continue
            results.append((time.perf_counter() - started, reply))
            lost = 0
    return results


def pipelined(address: tuple[str, int], wires: list[bytes], window: int) -> tuple[float, int]:
    """Up to `window` queries in flight: (answers per second, replies lost)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.settimeout(0.5)
        sent = received = 0
        started = time.perf_counter()
        while received < len(wires):
            while sent < len(wires) and sent - received < window:
                s.send(wires[sent])
                sent += 1
            try:
                s.recv(65535)
            except TimeoutError:
                break  # the rest were dropped
            received += 1
        elapsed = time.perf_counter() - started
    return received / elapsed, len(wires) - received


def percentiles(times: list[float]) -> dict[str, float | None]:
    if not times:
        return {"p50_us": None, "p99_us": None, "max_us": None}
    ordered = sorted(times)
    return {
        "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
        "max_us": round(ordered[-1] * 1e6, 1),
    }


def wrong_replies(wires: list[bytes], results: list[Result]) -> int:
    """How many replies are not a NOERROR answer to their own question (checked after timing)."""
    wrong = 0
    for wire, result in zip(wires, results, strict=False):  # results stop early if many are lost
        if result is None:
            continue
        asked, reply = dns.message.from_wire(wire), dns.message.from_wire(result[1])
        answered = reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)
        wrong += not (answered and reply.id == asked.id and reply.question == asked.question)
    return wrong


def node_resolver(name: str, queries: int) -> tuple[str | None, str, list[Result]]:
    """(the resolver, its rcode for `name` or why it was not asked, the results)."""
    servers = resolv_conf_nameservers()
    if not servers:
        return None, "no nameserver in /etc/resolv.conf", []
    address = (servers[0], 53)
    try:
        (first,) = sequential(address, [dns.message.make_query(name, "A").to_wire()], timeout=2.0)
    except OSError as error:
        return servers[0], f"unreachable ({error})", []
    if first is None:
        return servers[0], "unreachable (no answer within 2 s)", []
    rcode = dns.rcode.to_text(dns.message.from_wire(first[1]).rcode())  # and now it is in its cache
    wires = [dns.message.make_query(name, "A").to_wire() for _ in range(queries)]
    return servers[0], rcode, sequential(address, wires)


def print_line(label: str, figures: dict[str, object], key: str) -> None:
    p50, p99, worst = (figures[f"{key}_{p}_us"] for p in ("p50", "p99", "max"))
    if p50 is None:
        print(f"    {label:14} no answers")
    else:
        print(f"    {label:14} p50 {p50:7.1f} us   p99 {p99:7.1f} us   max {worst:8.1f} us")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--headless-every", type=int, default=10)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--resolver-queries", type=int, default=1000)
    parser.add_argument("--resolver-name", default="localhost.")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    services = make_services(args.services, args.headless_every)
    builds = []
    for _ in range(5):
        started = time.perf_counter()
        build_zone(services)
        builds.append(time.perf_counter() - started)

    rng = random.Random(args.seed)
    names = [
        f"{s.name}.{s.namespace}.svc.cluster.local."
        for s in (rng.choice(services) for _ in range(args.queries))
    ]
    wires = [dns.message.make_query(name, "A").to_wire() for name in names]
    again = [dns.message.make_query(name, "A").to_wire() for name in names]
    seen: set[str] = set()
    cold = []
    for name in names:
        cold.append(name not in seen)
        seen.add(name)

    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=serve, args=(args.services, args.headless_every, theirs), daemon=True
    )
    process.start()
    try:
        address = ("127.0.0.1", ours.recv())
        results = sequential(address, wires)
        qps, pipelined_lost = pipelined(address, again, args.window)
        ours.send("stop")
        stats = ours.recv()
    finally:
        process.join(timeout=10)
    resolver, resolver_rcode, resolver_results = node_resolver(args.resolver_name, args.resolver_queries)

    def timed(results: list[Result], which: list[bool] | None = None) -> list[float]:
        return [r[0] for i, r in enumerate(results) if r is not None and (which is None or which[i])]

    figures: dict[str, object] = {
        "services": args.services,
        "queries": args.queries,
        "build_zone_median_s": round(statistics.median(builds), 3),
        "build_zone_max_s": round(max(builds), 3),
        **{f"ours_{k}": v for k, v in percentiles(timed(results)).items()},
        **{f"ours_cold_{k}": v for k, v in percentiles(timed(results, cold)).items()},
        **{f"ours_warm_{k}": v for k, v in percentiles(timed(results, [not c for c in cold])).items()},
        "ours_cold_queries": sum(cold),
        "ours_lost": results.count(None),
        "ours_not_sent": len(wires) - len(results),
        "ours_wrong_replies": wrong_replies(wires, results),
        "ours_pipelined_qps": round(qps),
        "ours_pipelined_lost": pipelined_lost,
        "ours_dropped": stats.dropped,
        "resolver": resolver,
        "resolver_name": args.resolver_name,
        "resolver_rcode": resolver_rcode,
        **{f"resolver_{k}": v for k, v in percentiles(timed(resolver_results)).items()},
        "resolver_lost": resolver_results.count(None),
        "resolver_not_sent": args.resolver_queries - len(resolver_results) if resolver_results else None,
    }
    ours_p99, warm_p99, resolver_p99 = (figures[f"{k}_p99_us"] for k in ("ours", "ours_warm", "resolver"))
    ratio = ratio_warm = None
    if isinstance(ours_p99, float) and isinstance(warm_p99, float) and isinstance(resolver_p99, float):
        ratio, ratio_warm = round(resolver_p99 / ours_p99, 2), round(resolver_p99 / warm_p99, 2)
    figures["ratio_p99"] = ratio
    figures["ratio_p99_warm"] = ratio_warm
    figures["goal_met"] = isinstance(ours_p99, float) and ours_p99 < 1000 and qps >= 10_000

    print(f"{args.services:,} Services ({len([s for s in services if s.headless]):,} headless)")
    median, worst = figures["build_zone_median_s"], figures["build_zone_max_s"]
    print(f"  build_zone: median {median:.3f} s, worst {worst:.3f} s (5 runs)")
    print(f"  ours (its own process), {args.queries:,} cluster names one at a time:")
    print_line("all", figures, "ours")
    print_line(f"cold ({sum(cold):,})", figures, "ours_cold")
    print_line("warm", figures, "ours_warm")
    print(
        f"    {figures['ours_lost']} lost, {figures['ours_not_sent']} not sent,"
        f" {figures['ours_wrong_replies']} wrong replies"
    )
    print(f"  ours, {args.window} in flight: {qps:,.0f} answers/s, {pipelined_lost} lost")
    if resolver_results:
        answered = len(timed(resolver_results))
        print(f"  node resolver {resolver}, {args.resolver_name} ({resolver_rcode}), {answered:,} answers:")
        print_line("all", figures, "resolver")
        lost, not_sent = figures["resolver_lost"], figures["resolver_not_sent"]
        print(f"    {lost} lost (no reply within 1 s), {not_sent} not sent (5 lost in a row end the run)")
    else:
        print(f"  node resolver {resolver}: {resolver_rcode}; no comparison")
    if ratio is not None:
        print(
            f"  the node resolver's p99 is {ratio}x ours over all queries,"
            f" {ratio_warm}x ours for names asked before (both answering from memory)"
        )
    print(f"  goal (p99 < 1 ms, >= 10k answers/s): {'met' if figures['goal_met'] else 'NOT met'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
