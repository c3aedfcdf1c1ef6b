"""The control plane at scale, against hollow nodes (`bench/scale.py`): the real server
process, the real agent protocol, agents that run nothing.

One run at the size issue 15 asks of the suite (1,000 nodes, 20,000 pods, each of the 200
Deployments behind a Service, and a DaemonSet's pod on every node; about a minute and a
half on this 2-core machine: docs/scale.md): every pod is bound and reported Running (the
bench reports an error otherwise), every pod reaches the witness's agents as an endpoint of
its Service, no agent call fails, a pass with nothing to do writes nothing, and the capture
of the witness's calls on loopback sees them. The figures it prints (and its last line,
JSON) are the bench's; nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scale


@pytest.mark.slow
def test_hollow_nodes_bind_and_run_every_pod_and_a_quiet_pass_writes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = scale.main(
        [
            "--nodes",
            "1000",
            "--pods",
            "20000",
            "--deployments",
            "200",
            "--services",
            "--daemonsets",
            "1",
            "--settle",
            "6",
            "--quiet",
            "6",
            "--capture",
        ]
    )
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)
    assert "error" not in figures, figures
    assert figures["bound"] == 20000 + 1000  # the Deployments' pods, and the DaemonSet's on every node
    assert figures["services"] == 200 and figures["commit_to_endpoints_s"] > 0  # every endpoint held
    assert figures["noop_passes"] >= 1
    assert figures["noop_pass_writes"] == 0
    assert 0 < figures["measured_pods"] <= 21000  # the agents' measurements reached the server
    assert figures["sync_failures"] == 0
    assert figures["running_sync_failures"] == 0
    # The witness (its own process, its own connections) timed each of its calls, none failed.
    assert figures["witness_failures"] == 0 and figures["witness_calls"] >= 50 * 5
    # The same calls on the wire (`--capture`): each one's time from its request's packet to
    # its answer's is part of the witness's time for it, so it is at most that at the median.
    assert abs(figures["witness_server_calls"] - figures["witness_calls"]) <= 0.1 * figures["witness_calls"]
    assert 0 < figures["witness_server_ms_p50"] <= figures["witness_sync_ms_p50"]
    # Each call matched to its exchange: the witness's own part is what is left of its time.
    assert figures["witness_split_calls"] >= 0.9 * figures["witness_calls"]
    assert figures["witness_own_ms_p50"] > 0 and figures["witness_slow_calls"] >= 1
    # Its agents' calls evenly apart (`--witness-phases even`, the default), and the share of
    # them that overlapped another of its calls counted.
    assert figures["witness_phases"] == "even"
    assert 0 <= figures["witness_overlapped_share"] <= 1
    assert 0 <= figures["witness_slow_overlapped_share"] <= 1


def test_the_witness_counts_its_calls_that_overlapped_another_of_its_calls() -> None:
    # (port, began, ended): the first two overlap (the second begins before the first ends);
    # the third begins as the second ends (not an overlap); the fourth lies within a fifth
    # begun earlier, which is slow. The slowest 1% of five: the one at their p99 (the fifth).
    spans = [
        (1, 10.000, 10.003),
        (2, 10.002, 10.004),
        (3, 10.004, 10.005),
        (5, 11.000, 11.020),
        (4, 11.005, 11.006),
    ]
    found = scale.overlapping(spans)
    assert found == {"overlapped_share": 0.8, "slow_overlapped_share": 1.0}
    assert scale.overlapping([(1, 1.0, 1.001), (2, 1.5, 1.502)]) == {
        "overlapped_share": 0.0,
        "slow_overlapped_share": 0.0,
    }
    assert scale.overlapping([]) == {"overlapped_share": None, "slow_overlapped_share": None}
    assert scale.share(None) == "n/a" and scale.share(0.169) == "16.9%"  # (none: the run still reports)


def test_a_witness_call_is_split_at_its_exchanges_on_the_wire() -> None:
    # Two connections' packets: (time, source port, destination port, payload's start); the
    # server listens on 8080. Port 40001's second request has no answer yet; a packet of
    # another connection (40009) is not the witness's.
    packets = [
        (10.0010, 40001, 8080, b"POST /ag"),
        (10.0040, 8080, 40001, b"HTTP/1.1"),
        (10.5002, 40002, 8080, b"POST /ag"),
        (10.5003, 40009, 8080, b"POST /ag"),
        (10.5012, 8080, 40002, b"HTTP/1.1"),
        (10.5013, 8080, 40009, b"HTTP/1.1"),
        (11.0001, 40001, 8080, b"POST /ag"),
    ]
    found = scale.exchanges(packets, {40001, 40002})
    assert found == [(40001, 10.0010, 10.0040), (40002, 10.5002, 10.5012)]
    # The witness's calls: (port, began, ended). The first took 5 ms, 3 of them the server's;
    # the second 1.5 ms, 1 of it the server's; a third matches no exchange and is not counted.
    spans = [(40001, 10.0000, 10.0050), (40002, 10.5000, 10.5015), (40002, 12.0, 12.001)]
    parts = scale.split_calls(spans, found)
    assert parts["calls"] == 2
    assert parts["slow_calls"] == 1  # the slowest 1% of two: the one at their p99
    assert parts["slow_server_ms_p50"] == 3.0 and parts["slow_own_ms_p50"] == 2.0
    assert parts["own_ms_p50"] == 2.0  # (the upper of two, as `percentile` takes it)


def test_a_held_report_sent_again_counts_both_exchanges_as_the_servers() -> None:
    found = [(40001, 1.001, 1.002), (40001, 1.003, 1.005), (40001, 2.001, 2.002)]
    parts = scale.split_calls([(40001, 1.0, 1.006)], found)
    assert parts["calls"] == 1
    assert parts["slow_server_ms_p50"] == 3.0 and parts["slow_own_ms_p50"] == 3.0
