"""Figures from repetitions: medians, min and max, ratios against ``ssh -R``; JSON, Markdown and PNG."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.targets import LABELS

BASELINE = "ssh"


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
]
BY_KEY = {metric.key: metric for metric in METRICS}


def summarise(values: list[float | None]) -> dict[str, float | int | None]:
    good = [value for value in values if value is not None]
    if not good:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(good), "min": min(good), "max": max(good), "n": len(good)}


def summary(runs: dict[str, dict[str, list[float | None]]], targets: list[str]) -> dict[str, dict[str, dict[str, object]]]:
    """metric -> target -> median, min, max, n and ``vs_ssh`` (this median over ssh's)."""
    result: dict[str, dict[str, dict[str, object]]] = {}
    for metric in METRICS:
        per_target = runs.get(metric.key, {})
        figures: dict[str, dict[str, object]] = {}
        for target in targets:
            if target in per_target:
                figures[target] = dict(summarise(per_target[target]))
        base = figures.get(BASELINE, {}).get("median")
        for figure in figures.values():
            value = figure["median"]
            figure["vs_ssh"] = value / base if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base else None
        if figures:
            result[metric.key] = figures
    return result


def goals(summ: dict[str, dict[str, dict[str, object]]], settings_idle: int, idle_established: dict[str, list[int]]) -> list[dict[str, object]]:
    """The issue's targets, each with what was measured and whether it is met."""
    checks: list[dict[str, object]] = []

    def ratio(metric: str, target: str) -> float | None:
        value = summ.get(metric, {}).get(target, {}).get("vs_ssh")
        return value if isinstance(value, float) else None

    def median(metric: str, target: str) -> float | None:
        value = summ.get(metric, {}).get(target, {}).get("median")
        return float(value) if isinstance(value, (int, float)) else None

    for target in ("shield-tcp", "shield-ws"):
        for metric, what in (("bulk_up", "bulk throughput client to backend"), ("bulk_down", "bulk throughput backend to client")):
            value = ratio(metric, target)
            checks.append({"goal": f"{what}, {LABELS[target]}: at least 1.0 x ssh -R", "measured": _x(value), "met": None if value is None else value >= 1.0})
    for target in ("shield-tcp", "shield-ws"):
        value = ratio("latency_p50", target)
        checks.append({"goal": f"p50 latency, {LABELS[target]}: at most 1.0 x ssh -R", "measured": _x(value), "met": None if value is None else value <= 1.0})
    for target in ("shield-tcp", "shield-ws"):
        value = ratio("conn_rate", target)
        checks.append({"goal": f"connection rate, {LABELS[target]}: at least 1.0 x ssh -R", "measured": _x(value), "met": None if value is None else value >= 1.0})
    established = idle_established.get("shield-ws", [])
    lowest = min(established) if established else None
    checks.append(
        {
            "goal": f"{settings_idle:,} idle WebSocket clients established through one DMZ and one connector",
            "measured": f"{lowest:,} (fewest in a repetition)" if lowest is not None else "not run",
            "met": None if lowest is None else lowest >= settings_idle,
        }
    )
    rss = median("idle_rss_public", "shield-ws")
    checks.append({"goal": "at most 16 KiB RSS per idle WebSocket client at the DMZ", "measured": f"{rss:.1f} KiB" if rss is not None else "not run", "met": None if rss is None else rss <= 16.0})
    backplane = median("idle_backplane_fds_public", "shield-ws")
    checks.append(
        {
            "goal": "no file descriptor per idle client at the DMZ's backplane side",
            "measured": f"{backplane:.3f} fds per client" if backplane is not None else "not run",
            "met": None if backplane is None else backplane < 0.01,
        }
    )
    return checks


def _x(value: float | None) -> str:
    return f"{value:.2f} x ssh -R" if value is not None else "not measured"


def _number(value: object, digits: int) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if digits == 0 and abs(value) < 10:
        digits = 1
    return f"{value:,.{digits}f}"


def markdown(results: dict[str, object]) -> str:
    """The table of medians with min–max, the ratios against ssh -R, and the goals."""
    summ: dict[str, dict[str, dict[str, object]]] = results["summary"]  # type: ignore[assignment]
    targets: list[str] = results["targets"]  # type: ignore[assignment]
    env: dict[str, object] = results["environment"]  # type: ignore[assignment]
    settings: dict[str, object] = results["settings"]  # type: ignore[assignment]
    ratio_targets = [target for target in targets if target != BASELINE]
    lines = [
        f"Run `{results['name']}`{' (QUICK)' if results['quick'] else ''}: {results['started']}, {results['duration_s']:.0f} s; "
        f"{env['cpus']} CPUs, Python {env['python']}, {env.get('openssh_version', '?')}, "
        f"ssh cipher {env.get('ssh_cipher', '?')}; shield {env.get('shield_commit', '?')}.",
        f"Median of {settings['reps']} repetitions, min–max in brackets (idle clients: {settings['idle_reps']} "
        f"repetitions of {int(settings['idle_clients']):,} clients, fresh processes each). MB = 10^6 bytes.",
        "",
        "| metric | unit | " + " | ".join(LABELS[target] for target in targets) + " | " + " | ".join(f"{LABELS[target].replace('shield ', '')} vs ssh" for target in ratio_targets) + " |",
        "|---|---|" + "---:|" * (len(targets) + len(ratio_targets)),
    ]
    for metric in METRICS:
        figures = summ.get(metric.key)
        if not figures:
            continue
        title = metric.title.replace("idle clients:", f"{int(settings['idle_clients']):,} idle clients:")
        cells = []
        for target in targets:
            figure = figures.get(target)
            if not figure or figure.get("median") is None:
                cells.append("—")
                continue
            median = _number(figure["median"], metric.digits)
            if figure["n"] and figure["n"] > 1:
                cells.append(f"{median} ({_number(figure['min'], metric.digits)}–{_number(figure['max'], metric.digits)})")
            else:
                cells.append(median)
        ratios = []
        for target in ratio_targets:
            figure = figures.get(target) or {}
            value = figure.get("vs_ssh")
            ratios.append(f"{value:.2f}" if isinstance(value, float) else "—")
        lines.append(f"| {title} | {metric.unit} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines += ["", "| goal (from the issue) | measured | met |", "|---|---|---|"]
    for check in results["goals"]:  # type: ignore[union-attr]
        met = "not run" if check["met"] is None else "yes" if check["met"] else "**no**"
        lines.append(f"| {check['goal']} | {check['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, object], path: Path) -> None:
    """Bars of the medians with min–max whiskers, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ: dict[str, dict[str, dict[str, object]]] = results["summary"]  # type: ignore[assignment]
    targets: list[str] = results["targets"]  # type: ignore[assignment]
    keys = [
        "bulk_up", "bulk_down", "streams", "conn_rate",
        "latency_p50", "latency_p99", "latency_p999", "idle_establish",
        "idle_rss_public", "idle_rss_inner", "idle_fds_public", "idle_backplane_fds_public",
    ]
    keys = [key for key in keys if key in summ]
    columns = 4
    rows = max(1, (len(keys) + columns - 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    colours = {"shield-ws": "#1f77b4", "shield-tcp": "#2ca02c", "ssh": "#d62728", "direct": "#7f7f7f"}
    for axis, key in zip(axes.flat, keys):
        metric = BY_KEY[key]
        names, medians, lows, highs, tints = [], [], [], [], []
        for target in targets:
            figure_ = summ[key].get(target)
            if not figure_ or figure_.get("median") is None:
                continue
            names.append(LABELS[target].replace("shield ", ""))
            medians.append(float(figure_["median"]))  # type: ignore[arg-type]
            lows.append(float(figure_["median"]) - float(figure_["min"]))  # type: ignore[arg-type]
            highs.append(float(figure_["max"]) - float(figure_["median"]))  # type: ignore[arg-type]
            tints.append(colours.get(target, "#999999"))
        # The direct target is a reference that can be 10x the others: clip its bar (and say so)
        # rather than flatten every other bar against the axis.
        others = [median + high for name, median, high in zip(names, medians, highs) if name != "direct"]
        top = max(others) * 1.3 if others and max(others) > 0 else None
        if key.startswith("idle_fds") or key.startswith("idle_backplane"):
            top = max(1.25, top or 0)
        shown = [min(value, top) if top else value for value in medians]
        errors = [
            [low if value == shown_ else 0 for low, value, shown_ in zip(lows, medians, shown)],
            [high if value == shown_ else 0 for high, value, shown_ in zip(highs, medians, shown)],
        ]
        axis.bar(names, shown, yerr=errors, color=tints, capsize=4)
        if top:
            axis.set_ylim(0, top * 1.08)
        better = "higher" if metric.higher_is_better else "lower"
        axis.set_title(f"{metric.title}\n({metric.unit}, {better} is better)", fontsize=8)
        axis.tick_params(labelsize=8)
        for index, (value, height, high) in enumerate(zip(medians, shown, errors[1])):
            text = _number(value, metric.digits) + (" (clipped)" if height < value else "")
            axis.annotate(text, (index, height + high), ha="center", va="bottom", fontsize=7)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    quick = " (QUICK)" if results["quick"] else ""
    figure.suptitle(f"shield vs ssh -R vs direct, run {results['name']}{quick}: medians with min–max", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, object], folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "md": folder / f"{name}.md", "png": folder / f"{name}.png"}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    paths["md"].write_text(markdown(results))
    chart(results, paths["png"])
    return paths
