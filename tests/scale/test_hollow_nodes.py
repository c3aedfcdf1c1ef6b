"""The control plane at scale, against hollow nodes (`bench/scale.py`): the real server
process, the real agent protocol, agents that run nothing.

One run at the size issue 15 asks of the suite (1,000 nodes, 20,000 pods, each of the 200
Deployments behind a Service; about a minute and a half on this 2-core machine:
docs/scale.md): every pod is bound and reported Running (the bench reports an error
otherwise), every pod reaches the witness's agents as an endpoint of its Service, no agent
call fails, a pass with nothing to do writes nothing, and the capture of the witness's calls
on loopback sees them. The figures it prints (and its
last line, JSON) are the bench's; nothing here is timed.
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
    assert figures["bound"] == 20000
    assert figures["services"] == 200 and figures["commit_to_endpoints_s"] > 0  # every endpoint held
    assert figures["noop_passes"] >= 1
    assert figures["noop_pass_writes"] == 0
    assert 0 < figures["measured_pods"] <= 20000  # the agents' measurements reached the server
    assert figures["sync_failures"] == 0
    assert figures["running_sync_failures"] == 0
    # The witness (its own process, its own connections) timed each of its calls, none failed.
    assert figures["witness_failures"] == 0 and figures["witness_calls"] >= 50 * 5
    # The same calls on the wire (`--capture`): each one's time from its request's packet to
    # its answer's is part of the witness's time for it, so it is at most that at the median.
    assert abs(figures["witness_server_calls"] - figures["witness_calls"]) <= 0.1 * figures["witness_calls"]
    assert 0 < figures["witness_server_ms_p50"] <= figures["witness_sync_ms_p50"]
