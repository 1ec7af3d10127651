"""Figures from repetitions: medians, min and max, ratios against the faster ``ssh -R``; JSON, Markdown and PNG.

There are two ``ssh -R`` targets (OpenSSH's default cipher, and AES-GCM). A user picks whichever
serves them best, so shield is held to the better of the two on every metric separately (the
higher median where higher is better, the lower where lower is): ``vs_ssh`` is a target's median
over that baseline's, and ``baselines`` says which ssh it was.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.settings import RR_CLIENTS, RR_SIZES, Settings
from benchmarks.targets import LABELS, SSH_TARGETS

SHIELD_TARGETS = ("shield-tcp", "shield-ws")
#: The metrics where links over a WebSocket (``shield-tcp-wss``) are held to links over TLS
#: (``shield-tcp``), and the least ratio that counts as a small overhead.
WSS_LINK_METRICS = ("rr_c16_s16", "rr_c16_s1024", "rr_c1_s1024", "bulk_up", "bulk_down")
WSS_LINK_GOAL = 0.85


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 1


METRICS = [
    Metric("bulk_up", "bulk, 1 stream, client to backend", "MB/s", True, 0),
    Metric("bulk_down", "bulk, 1 stream, backend to client", "MB/s", True, 0),
    Metric("latency_p50", "1 KiB echo at 1,000/s, p50", "ms", False, 3),
    Metric("latency_p99", "1 KiB echo at 1,000/s, p99", "ms", False, 3),
    Metric("latency_p999", "1 KiB echo at 1,000/s, p99.9", "ms", False, 3),
    Metric("conn_rate", "connections, 16 parallel clients", "per s", True, 0),
    Metric("streams", "100 concurrent streams, aggregate", "MB/s", True, 0),
    Metric("idle_established", "idle clients: established", "clients", True, 0),
    Metric("idle_establish", "idle clients: time to establish all", "s", False, 2),
    Metric("idle_rss_public", "idle: RSS per client, DMZ / sshd", "KiB", False, 1),
    Metric("idle_rss_inner", "idle: RSS per client, connector / ssh", "KiB", False, 1),
    Metric("idle_fds_public", "idle: fds per client, DMZ / sshd", "fds", False, 2),
    Metric("idle_backplane_fds_public", "idle: backplane-side fds per client, DMZ / sshd", "fds", False, 2),
    Metric("idle_fds_inner", "idle: fds per client, connector / ssh", "fds", False, 2),
    Metric("stall_rss_public", "stalled readers: RSS per stalled client, DMZ / sshd", "KiB", False, 0),
    Metric("stall_rss_inner", "stalled readers: RSS per stalled client, connector / ssh", "KiB", False, 0),
    Metric("stall_held_public", "stalled readers: tunnel data held per stalled client, DMZ (shield_buffered_bytes)", "KiB", False, 0),
    Metric("stall_held_inner", "stalled readers: tunnel data held per stalled client, connector (shield_buffered_bytes)", "KiB", False, 0),
    Metric("stall_fresh_ms", "stalled readers: a fresh client's connect and 1 KiB echo", "ms", False, 2),
]


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _rr_metrics() -> list[Metric]:
    """Round trips/s, p50 and p99 for every (clients, size) combination: ``rr_c16_s1024``, ``..._p50``, ``..._p99``."""
    metrics = []
    for clients in RR_CLIENTS:
        for size in RR_SIZES:
            key = f"rr_c{clients}_s{size}"
            what = f"rr, {clients} client{'s' if clients > 1 else ''} x {_size(size)}"
            metrics += [
                Metric(key, f"{what}: round trips", "per s", True, 0),
                Metric(f"{key}_p50", f"{what}: p50", "ms", False, 3),
                Metric(f"{key}_p99", f"{what}: p99", "ms", False, 3),
            ]
    return metrics


RR_METRICS = _rr_metrics()
ALL_METRICS = METRICS + RR_METRICS
BY_KEY = {metric.key: metric for metric in ALL_METRICS}

Summary = dict[str, dict[str, dict[str, object]]]


def summarise(values: list[float | None]) -> dict[str, float | int | None]:
    good = [value for value in values if value is not None]
    if not good:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(good), "min": min(good), "max": max(good), "n": len(good)}


def baseline(metric: Metric, figures: dict[str, dict[str, object]]) -> str | None:
    """The ssh target with the better median on ``metric`` (None if no ssh target has one)."""
    medians = {name: figures[name]["median"] for name in SSH_TARGETS if name in figures and isinstance(figures[name]["median"], (int, float))}
    if not medians:
        return None
    pick = max if metric.higher_is_better else min
    return pick(medians, key=lambda name: medians[name])  # type: ignore[arg-type,return-value]


def summary(runs: dict[str, dict[str, list[float | None]]], targets: list[str]) -> tuple[Summary, dict[str, str]]:
    """metric -> target -> median, min, max, n and ``vs_ssh``; and metric -> the ssh target that is its baseline."""
    result: Summary = {}
    baselines: dict[str, str] = {}
    for metric in ALL_METRICS:
        per_target = runs.get(metric.key, {})
        figures = {target: dict(summarise(per_target[target])) for target in targets if target in per_target}
        if not figures:
            continue
        base_name = baseline(metric, figures)
        base = figures[base_name]["median"] if base_name else None
        for figure in figures.values():
            value = figure["median"]
            usable = isinstance(value, (int, float)) and isinstance(base, (int, float)) and base > 0
            figure["vs_ssh"] = value / base if usable else None  # type: ignore[operator]
        if base_name:
            baselines[metric.key] = base_name
        result[metric.key] = figures
    return result, baselines


# -- goals ----------------------------------------------------------------------------------------

FASTER_SSH = "the faster ssh -R"


def goals(summ: Summary, settings: Settings, idle_established: dict[str, list[int]]) -> list[dict[str, object]]:
    """The issue's targets, each with what was measured and whether it is met (None: not measured)."""

    def ratio(metric: str, target: str) -> float | None:
        value = summ.get(metric, {}).get(target, {}).get("vs_ssh")
        return value if isinstance(value, float) else None

    def median(metric: str, target: str) -> float | None:
        value = summ.get(metric, {}).get(target, {}).get("median")
        return float(value) if isinstance(value, (int, float)) else None

    def against_ssh(metric: str, what: str, at_least: bool) -> list[dict[str, object]]:
        checks = []
        for target in SHIELD_TARGETS:
            value = ratio(metric, target)
            bound = "at least" if at_least else "at most"
            met = None if value is None else value >= 1.0 if at_least else value <= 1.0
            checks.append({"goal": f"{what}, {LABELS[target]}: {bound} 1.0 x {FASTER_SSH}", "measured": _x(value), "met": met})
        return checks

    def rr_group(suffix: str, what: str, at_least: bool) -> list[dict[str, object]]:
        """One goal per target and client count, met when every request size meets it."""
        checks = []
        for target in SHIELD_TARGETS:
            for clients in RR_CLIENTS:
                values = [ratio(f"rr_c{clients}_s{size}{suffix}", target) for size in RR_SIZES]
                bound = "at least" if at_least else "at most"
                sizes = " / ".join(_size(size) for size in RR_SIZES)
                measured = " / ".join(f"{value:.2f}" if value is not None else "—" for value in values)
                met = None if None in values else all(value >= 1.0 if at_least else value <= 1.0 for value in values)  # type: ignore[operator]
                checks.append({
                    "goal": f"{what}, {clients} client{'s' if clients > 1 else ''}, {LABELS[target]}: {bound} 1.0 x {FASTER_SSH} at each size",
                    "measured": f"{measured} x ({sizes})" if any(value is not None for value in values) else "not measured",
                    "met": met,
                })  # fmt: skip
        return checks

    def wss_link_cost() -> list[dict[str, object]]:
        """A wss:// link against a tls:// one, the same public tcp:// client: what the WebSocket costs."""
        checks = []
        for metric in WSS_LINK_METRICS:
            wss, tls = median(metric, "shield-tcp-wss"), median(metric, "shield-tcp")
            value = wss / tls if wss is not None and tls else None
            checks.append({
                "goal": f"{BY_KEY[metric].title}: a wss:// link keeps at least {WSS_LINK_GOAL:.2f} x a tls:// link",
                "measured": _x(value),
                "met": None if value is None else value >= WSS_LINK_GOAL,
            })  # fmt: skip
        return checks

    checks: list[dict[str, object]] = []
    checks += rr_group("", "request/response round trips per second", True)
    checks += rr_group("_p50", "request/response p50 latency", False)
    checks += against_ssh("bulk_up", "bulk throughput client to backend", True)
    checks += against_ssh("bulk_down", "bulk throughput backend to client", True)
    checks += against_ssh("latency_p50", "p50 latency of 1 KiB at 1,000/s", False)
    checks += against_ssh("conn_rate", "connection rate", True)
    checks += against_ssh("streams", "100 concurrent streams, aggregate", True)
    checks += wss_link_cost()
    established = idle_established.get("shield-ws", [])
    lowest = min(established) if established else None
    checks.append({
        "goal": f"{settings.idle_clients:,} idle WebSocket clients established through one DMZ and one connector (default limits)",
        "measured": f"{lowest:,} (fewest in a repetition)" if lowest is not None else "not run",
        "met": None if lowest is None else lowest >= settings.idle_clients,
    })  # fmt: skip
    rss = median("idle_rss_public", "shield-ws")
    checks.append({"goal": "at most 16 KiB RSS per idle WebSocket client at the DMZ", "measured": f"{rss:.1f} KiB" if rss is not None else "not run", "met": None if rss is None else rss <= 16.0})
    backplane = median("idle_backplane_fds_public", "shield-ws")
    checks.append({
        "goal": "no file descriptor per idle client at the DMZ's backplane side",
        "measured": f"{backplane:.3f} fds per client" if backplane is not None else "not run",
        "met": None if backplane is None else backplane < 0.01,
    })  # fmt: skip
    for target in SHIELD_TARGETS:
        for role, where in (("public", "DMZ"), ("inner", "connector")):
            held = median(f"stall_held_{role}", target)
            rss = median(f"stall_rss_{role}", target)
            checks.append({
                "goal": f"at most 256 KiB of buffered tunnel data per stalled reader at the {where}, {LABELS[target]}",
                "measured": (f"{held:,.0f} KiB held (RSS: {rss:,.0f} KiB per client)" if held is not None and rss is not None
                             else "not run"),
                "met": None if held is None else held <= 256.0,
            })  # fmt: skip
    return checks


def _x(value: float | None) -> str:
    return f"{value:.2f} x" if value is not None else "not measured"


# -- Markdown -------------------------------------------------------------------------------------


def _number(value: object, digits: int) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if digits == 0 and abs(value) < 10:
        digits = 1
    return f"{value:,.{digits}f}"


def _cell(figure: dict[str, object] | None, digits: int) -> str:
    if not figure or figure.get("median") is None:
        return "—"
    median = _number(figure["median"], digits)
    if figure["n"] and figure["n"] > 1:  # type: ignore[operator]
        return f"{median} ({_number(figure['min'], digits)}–{_number(figure['max'], digits)})"
    return median


def table(metrics: list[Metric], summ: Summary, baselines: dict[str, str], targets: list[str], title: Any = None) -> list[str]:
    """Medians (min–max) per target, each non-ssh target's ratio to the faster ssh, and which ssh that was."""
    ratio_targets = [target for target in targets if target not in SSH_TARGETS]
    has_ssh = any(target in SSH_TARGETS for target in targets)
    heads = [LABELS[target] for target in targets] + [f"{LABELS[target].replace('shield ', '')} vs ssh" for target in ratio_targets]
    lines = [
        "| metric | unit | " + " | ".join(heads) + (" | faster ssh |" if has_ssh else " |"),
        "|---|---|" + "---:|" * len(heads) + ("---|" if has_ssh else ""),
    ]
    for metric in metrics:
        figures = summ.get(metric.key)
        if not figures:
            continue
        cells = [_cell(figures.get(target), metric.digits) for target in targets]
        for target in ratio_targets:
            value = (figures.get(target) or {}).get("vs_ssh")
            cells.append(f"{value:.2f}" if isinstance(value, float) else "—")
        if has_ssh:
            cells.append(LABELS[baselines[metric.key]] if metric.key in baselines else "—")
        name = title(metric) if title else metric.title
        lines.append(f"| {name} | {metric.unit} | " + " | ".join(cells) + " |")
    return lines


def environment(results: dict[str, Any]) -> list[str]:
    """What the figures depend on: the machine, the versions, and the cipher each tunnel used."""
    env: dict[str, Any] = results["environment"]

    def ssh(prefix: str) -> str:
        if f"{prefix}cipher" not in env:
            return "not run"
        return f"cipher {env[f'{prefix}cipher']} (MAC {env.get(f'{prefix}mac', '?')}), key exchange {env.get(f'{prefix}kex', '?')}, compression {env.get(f'{prefix}compression', '?')}"

    load_start = ", ".join(f"{value:.2f}" for value in env.get("loadavg_start", ()))
    load_end = ", ".join(f"{value:.2f}" for value in env.get("loadavg_end", ()))
    rows = [
        ("machine", f"{env.get('cpus')} CPUs ({env.get('cpu_model')}), {env.get('memory_gib')} GiB, {env.get('platform')}"),
        ("Python", f"{env.get('python')}; Twisted {env.get('twisted')}, Autobahn {env.get('autobahn')}, pyOpenSSL {env.get('pyopenssl')}; client: websockets {env.get('websockets')}"),
        ("OpenSSH", str(env.get("openssh_version", "not run"))),
        ("ssh -R (default negotiation)", ssh("ssh_")),
        ("ssh -R aes-gcm (`-c aes128-gcm@openssh.com`)", ssh("ssh_aes_")),
        ("shield backplane TLS", str(env.get("shield_tls", "not run"))),
        ("shield", f"commit {env.get('shield_commit', '?')}, default settings"),
        ("open-files limit", f"{env.get('open_files_limit', '?'):,}" if isinstance(env.get("open_files_limit"), int) else "?"),
        ("load average", f"{load_start} at the start, {load_end} at the end"),
    ]
    for name, reason in (env.get("skipped_targets") or {}).items():
        rows.append((f"skipped: {LABELS.get(name, name)}", reason))
    return ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]


def markdown(results: dict[str, Any]) -> str:
    """The environment, the table of medians with min–max and the ratios against the faster ssh -R, rr's table, the goals."""
    summ: Summary = results["summary"]
    baselines: dict[str, str] = results.get("baselines", {})
    targets: list[str] = results["targets"]
    settings: dict[str, Any] = results["settings"]
    mode = " (SELFCHECK)" if results.get("selfcheck") else " (QUICK)" if results["quick"] else ""
    idle = f"{int(settings['idle_clients']):,}"
    scenarios = settings.get("scenarios", [])
    fresh = []
    if "idle" in scenarios:
        fresh.append(f"idle clients: {settings['idle_reps']} repetitions of {idle} clients from {settings.get('idle_sources', 1)} source addresses")
    if "stall" in scenarios:
        fresh.append(f"stalled readers: {settings['stall_reps']} repetitions of {settings['stall_clients']}")
    lines = [
        f"Run `{results['name']}`{mode}: {results['started']}, {results['duration_s']:.0f} s; scenarios {', '.join(scenarios)}.",
        f"Median of {settings['reps']} repetitions, min–max in brackets"
        + (f" ({'; '.join(fresh)}; fresh processes for each)" if fresh else "")
        + ". MB = 10^6 bytes. Ratios are against the faster of the two ssh -R targets on each row.",
        "",
        *environment(results),
        "",
        *table(METRICS, summ, baselines, targets, lambda metric: metric.title.replace("idle clients:", f"{idle} idle clients:")),
    ]
    if any(metric.key in summ for metric in RR_METRICS):
        lines += [
            "",
            f"Request/response (closed loop: each client sends a request and waits for its whole echo before the next; "
            f"{settings.get('rr_seconds')} s counted after {settings.get('rr_warmup')} s of warm-up per combination):",
            "",
            *table(RR_METRICS, summ, baselines, targets, lambda metric: metric.title.removeprefix("rr, ")),
        ]
    lines += ["", "| goal (from the issue) | measured | met |", "|---|---|---|"]
    for check in results["goals"]:
        met = "not run" if check["met"] is None else "yes" if check["met"] else "**no**"
        lines.append(f"| {check['goal']} | {check['measured']} | {met} |")
    return "\n".join(lines) + "\n"


# -- chart ----------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> None:
    """Every metric as how many times better than the faster ssh -R each other target is (log scale).

    One panel holds every metric, whatever its unit: "better" is the ratio where higher is
    better and its inverse where lower is, so a bar right of 1 always means better than ssh.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ: Summary = results["summary"]
    targets = [target for target in results["targets"] if target not in SSH_TARGETS]
    metrics = [metric for metric in ALL_METRICS if metric.key in summ and not metric.key.startswith(("idle_fds", "idle_backplane", "idle_established"))]
    colours = {"shield-ws": "#1f77b4", "shield-tcp": "#2ca02c", "direct": "#7f7f7f"}
    height = 0.8 / max(len(targets), 1)
    figure, axis = plt.subplots(figsize=(10, 1.0 + 0.32 * len(metrics) * max(len(targets), 1) ** 0.5))
    for index, target in enumerate(targets):
        positions, values = [], []
        for row, metric in enumerate(metrics):
            ratio = (summ[metric.key].get(target) or {}).get("vs_ssh")
            if not isinstance(ratio, float) or ratio <= 0:
                continue
            positions.append(row + (index - (len(targets) - 1) / 2) * height)
            values.append(ratio if metric.higher_is_better else 1.0 / ratio)
        axis.barh(positions, values, height=height, color=colours.get(target, "#999999"), label=LABELS[target])
    axis.axvline(1.0, color="#d62728", linewidth=1)
    axis.set_xscale("log")
    axis.set_yticks(range(len(metrics)))
    axis.set_yticklabels([f"{metric.title} ({metric.unit})" for metric in metrics], fontsize=7)
    axis.invert_yaxis()
    axis.tick_params(axis="x", labelsize=8)
    axis.set_xlabel("times better than the faster ssh -R (right of the red line: better)", fontsize=8)
    axis.legend(fontsize=8, loc="lower right")
    mode = " (SELFCHECK)" if results.get("selfcheck") else " (QUICK)" if results["quick"] else ""
    axis.set_title(f"shield and direct against the faster ssh -R, run {results['name']}{mode}: medians", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], folder: Path, name: str) -> dict[str, Path]:
    """JSON, Markdown, and the chart if matplotlib is there (the bench extra; ``make test`` does without)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "md": folder / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    paths["md"].write_text(markdown(results))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("no chart: matplotlib is missing (pip install -e '.[bench]', as make bench does)", flush=True)
        return paths
    paths["png"] = folder / f"{name}.png"
    chart(results, paths["png"])
    return paths
