"""The README's commands for running the gateways work as shown: both, from one folder."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from harness import REPO, TWISTD, Process, Topology, wait_ready


def readme_twistd_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Running the gateways", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.startswith("twistd ")]
    assert [command[2] for command in commands] == ["shield-dmz", "shield-internal"], commands
    return commands


def test_both_readme_commands_start_from_one_folder(tmp_path: Path) -> None:
    topology = Topology(tmp_path)
    try:
        topology.certs(["internal1"])
        _, backend = topology.start_backend()
        topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
        topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
        (tmp_path / "internal.toml").write_text((tmp_path / "internal1.toml").read_text())
        started = []
        for argv in readme_twistd_commands():
            name = argv[2]
            process = Process(name, [TWISTD, *argv[1:]], tmp_path / f"{name}.log", tmp_path).start()
            topology.processes.append(process)
            started.append(process)
        dmz, connector = started
        wait_ready(topology.url("dmz-admin"), process=dmz)
        wait_ready(topology.url("admin-internal1"), process=connector)
        for process in started:
            assert process.alive(), process.log()[-3000:]
            pid_file = tmp_path / f"{process.name}.pid"
            assert int(pid_file.read_text()) == process.pid
        assert not (tmp_path / "twistd.pid").exists()
        for process in started:
            assert process.stop(30) == 0, process.log()[-3000:]
        assert not list(tmp_path.glob("*.pid")), "twistd removes its pid file on exit"
        assert not re.search(r"Another twistd server is running", dmz.log() + connector.log())
    finally:
        topology.close()
