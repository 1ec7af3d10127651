"""What a gateway process holds, read from /proc: resident memory and its file descriptors by side.

A gateway's sockets are classified by port: each process is given a map ``{port: side}`` and a
socket whose local port is in the map (a listener's accepted sockets share its port) gets that
side, else one whose remote port is (a dialled socket). Everything else is ``other``: files,
pipes, the epoll descriptor, the admin listener.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICK


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads' children lists)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    index = 0
    while index < len(pids):
        try:
            pids += children(pids[index])
        except OSError:
            pass
        index += 1
    return pids


def _socket_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for the TCP sockets of ``pid``'s network namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


@dataclass
class Snapshot:
    """One moment of a gateway (one process or a process tree, summed)."""

    rss_kib: int = 0
    fds: int = 0
    sides: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"rss_kib": self.rss_kib, "fds": self.fds, "fds_by_side": dict(sorted(self.sides.items()))}


def snapshot(pids: list[int], ports: dict[int, str]) -> Snapshot:
    """RSS and descriptors of ``pids`` summed; sockets classified with ``ports`` (listeners as ``listen``)."""
    result = Snapshot()
    table: dict[int, tuple[int, int, str]] | None = None
    for pid in pids:
        try:
            result.rss_kib += rss_kib(pid)
            entries = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # the process went away meanwhile
        if table is None:
            table = _socket_table(pid)
        for entry in entries:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue
            result.fds += 1
            side = "other"
            if target.startswith("socket:["):
                info = table.get(int(target[8:-1]))
                if info is not None:
                    local, remote, state = info
                    if state == "0A":
                        side = "listen"
                    elif local in ports:
                        side = ports[local]
                    elif remote in ports:
                        side = ports[remote]
            result.sides[side] = result.sides.get(side, 0) + 1
    return result
