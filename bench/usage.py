"""Where an upload's time went: CPU of the machine, the server and the client, and how
busy the disk was, from /proc before and after.

On a 2-core machine these tell a CPU-bound run (cores near 100 % busy) from a disk-bound
one (disk busy near 100 %, cores idle or in iowait).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICK = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_line() -> list[int]:
    # cpu  user nice system idle iowait irq softirq steal ...
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def _process_ticks(pids: Iterable[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def disk_of(path: Path) -> str | None:
    """The /proc/diskstats name of the device that holds `path`."""
    dev = os.stat(path).st_dev
    for line in Path("/proc/diskstats").read_text().splitlines():
        major, minor, name = line.split()[:3]
        if (int(major), int(minor)) == (os.major(dev), os.minor(dev)):
            return name
    return None


def _io_ms(disk: str | None) -> int:
    if disk is None:
        return 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == disk:
            return int(fields[12])  # milliseconds spent doing I/O
    return 0


@dataclass(frozen=True)
class Usage:
    seconds: float
    cores_busy: float  # share of all cores' time not idle nor in iowait
    iowait: float  # share of all cores' time waiting on the disk
    steal: float  # share taken by the hypervisor
    server_cpu: float  # CPU seconds of the server's processes
    process_cpu: dict[int, float]  # the same, per pid
    client_cpu: float  # CPU seconds of this process (the client)
    disk_busy: float  # share of the time the disk had I/O in flight (0 if unknown)


class UsageMeter:
    """`start()` before an upload, `stop()` after: the usage in between."""

    def __init__(self, disk: str | None) -> None:
        self.disk = disk
        self._start: tuple[float, list[int], dict[int, int], float, int] | None = None

    def start(self, server_pids: list[int]) -> None:
        self._start = (
            time.perf_counter(),
            _cpu_line(),
            _process_ticks(server_pids),
            time.process_time(),
            _io_ms(self.disk),
        )

    def stop(self) -> Usage:
        assert self._start is not None, "start() first"
        wall0, cpu0, ticks0, client0, io0 = self._start
        seconds = time.perf_counter() - wall0
        cpu = [b - a for a, b in zip(cpu0, _cpu_line(), strict=True)]
        ticks = _process_ticks(ticks0)
        total = sum(cpu) or 1
        user, nice, system, _idle, iowait, irq, softirq, steal = cpu
        return Usage(
            seconds=seconds,
            cores_busy=(user + nice + system + irq + softirq) / total,
            iowait=iowait / total,
            steal=steal / total,
            server_cpu=sum(ticks[pid] - ticks0[pid] for pid in ticks) * TICK,
            process_cpu={pid: (ticks[pid] - ticks0[pid]) * TICK for pid in ticks},
            client_cpu=time.process_time() - client0,
            disk_busy=(_io_ms(self.disk) - io0) / 1000 / seconds,
        )
