"""The benchmark harness still runs end to end: ``python -m benchmarks --selfcheck`` (benchmarks/).

The benchmarks are not part of ``make test`` (a full run takes most of an hour), but the harness
is code like any other and breaks like any other: a renamed option, a gateway log line that
changed, a limit that now refuses the idle clients. The self-check runs every scenario once
against every target, tiny (a few MiB, half a second per request/response combination, 300 idle
clients spread over source addresses, a handful of stalled readers), into a temporary folder.
It fails when any measurement errored, fell short of its count or is missing; it never asserts
on speed: figures from a busy 2-core machine in a minute are not worth a verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.run import Bench, rr_key  # noqa: E402
from benchmarks.settings import RR_CLIENTS, RR_SIZES, SELFCHECK  # noqa: E402
from benchmarks.targets import ONLY_IN, measured_in, ssh_unavailable  # noqa: E402

#: The self-check takes about a minute on a busy 2-core machine; this is its bound, not its goal.
SELFCHECK_TIMEOUT = 300


def run_selfcheck(out: Path) -> tuple[int, str]:
    command = [sys.executable, "-m", "benchmarks", "--selfcheck", "--out", str(out), "--name", "selfcheck"]
    env = {key: value for key, value in os.environ.items() if key != "QUICK"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SELFCHECK_TIMEOUT)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(SELFCHECK_TIMEOUT + 60)
def test_selfcheck_runs_every_scenario_against_every_target(tmp_path: Path) -> None:
    status, output = run_selfcheck(tmp_path)
    assert status == 0, f"python -m benchmarks --selfcheck exited {status}:\n{output[-8000:]}"
    results: dict[str, Any] = json.loads((tmp_path / "selfcheck.json").read_text())
    assert (tmp_path / "selfcheck.md").exists()

    skipped: dict[str, str] = results["environment"]["skipped_targets"]
    for name, reason in skipped.items():
        print(f"skipped target {name}: {reason}")
    if ssh_unavailable() is None:
        assert "ssh" in results["targets"], f"ssh -R was skipped although sshd can run here: {skipped}"
    else:
        assert "ssh" in skipped
    targets: list[str] = results["targets"]
    assert {"shield-ws", "shield-tcp", "shield-tcp-wss", "direct"} <= set(targets)

    raw: dict[str, dict[str, list[dict[str, Any]]]] = results["raw"]
    keys = ["bulk_up", "bulk_down", "latency", "conn_rate", "streams", "idle", "stall"]
    keys += [rr_key(count, size) for count in RR_CLIENTS for size in RR_SIZES]
    for key in keys:
        for target in targets:
            reps = raw.get(key, {}).get(target)
            if not measured_in(target, key):
                assert reps is None, f"{key} {target}: measured, though only {ONLY_IN[target]} should be"
                continue
            assert reps, f"{key} {target}: no result"
            for rep in reps:
                assert "error" not in rep and "incomplete" not in rep, f"{key} {target}: {rep}"

    settings = results["settings"]
    assert settings["idle_clients"] > 256, "the self-check must need more than one source address's worth of clients"
    assert set(ONLY_IN["shield-tcp-wss"]) == {"bulk", "rr"}
    wss_goals = [goal for goal in results["goals"] if "a wss:// link keeps" in goal["goal"]]
    assert len(wss_goals) == 5 and all(goal["measured"] != "not measured" for goal in wss_goals), wss_goals
    for target in (name for name in targets if name != "shield-tcp-wss"):
        for rep in raw["idle"][target]:
            assert rep["established"] == settings["idle_clients"], f"idle {target}: {rep['established']} of {settings['idle_clients']}"
        for rep in raw["stall"][target]:
            assert rep["stalled"] == settings["stall_clients"], f"stall {target}: {rep}"
            assert rep["fresh_ms"] is not None
    for target in targets:
        for count in RR_CLIENTS:
            for size in RR_SIZES:
                assert all(rep["round_trips"] > 0 for rep in raw[rr_key(count, size)][target])

    env = results["environment"]
    assert env["shield_tls"].startswith("TLS"), f"the DMZ's backplane TLS suite was not found in its log: {env['shield_tls']!r}"
    if "ssh" in targets:
        assert env["ssh_cipher"] != "?"
    if "ssh-aes" in targets:
        assert env["ssh_aes_cipher"] == "aes128-gcm@openssh.com"
    assert results["goals"] and results["summary"], "no goals or no summary in the results"


def test_failed_incomplete_and_missing_measurements_are_problems(tmp_path: Path) -> None:
    """What makes the exit status 1 (the self-check above relies on it)."""
    bench = Bench(SELFCHECK, False, "unit", tmp_path, ["shield-ws", "direct"], ["conn_rate", "idle"])
    bench.keep("conn_rate", "shield-ws", 0, {"per_s": 100.0})
    bench.keep("conn_rate", "direct", 0, {"error": "timeout after 60 s"})
    bench.keep("idle", "shield-ws", 0, {"established": 256, "incomplete": "256 of 300 established"})
    problems = bench.problems()
    assert len(problems) == 3, problems
    assert any("conn_rate direct" in problem and "error" in problem for problem in problems)
    assert any("idle shield-ws" in problem and "incomplete" in problem for problem in problems)
    assert any(problem == "idle direct: no result" for problem in problems)
    bench.raw.clear()
    for target in ("shield-ws", "direct"):
        bench.keep("conn_rate", target, 0, {"per_s": 100.0})
        bench.keep("idle", target, 0, {"established": 300})
    assert bench.problems() == []
