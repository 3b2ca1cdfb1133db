"""CPU quotas for child processes through Linux cgroups: how the demo and the tests run providers that are really
several times slower than this machine (`demo --provider-cpu-percent`, `LocalMarket.start_provider(cpu_percent=)`).

Each quota is a cgroup of its own under the starting process's cgroup, in the cgroup v1 `cpu` hierarchy
(`cpu.cfs_quota_us` / `cpu.cfs_period_us`) or in cgroup v2 with the `cpu` controller (`cpu.max`). The command starts
through `sh`, which writes its own pid into the group's `cgroup.procs` and only then execs it, so not one instruction
of the command runs unthrottled (and it does not run at all when the write fails). `remove()` moves whatever is still
in the group back out and deletes it. Needs root (or a delegated hierarchy); `unavailable_reason()` says why not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import time
from pathlib import Path

PREFIX = "compute-market-"  # compute-market-<pid of the process that made it>-<name>
MIN_QUOTA_US = 1000  # the kernel refuses a smaller quota (cpu.cfs_quota_us and cpu.max alike)
# The period is 10 ms, not the kernel's default 100 ms: a decode step takes a few ms, and with a 100 ms period a
# throttled process runs its steps at full speed until its quota is spent, then waits out the period. The median step
# that a provider's benchmark reports would barely move; with the short period it slows with the quota
# (tests/e2e/test_demo.py checks it for providers held to a fifth of a CPU).
PERIOD_US = 10_000
MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUPS = Path("/proc/self/cgroup")


class CpuQuotaError(RuntimeError):
    """A CPU quota cannot be set here (no cgroup hierarchy with the cpu controller, not writable, ...)."""


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Where quota groups go: this process's own cgroup in the hierarchy that has the cpu controller."""

    base: Path
    version: int  # 1 or 2


def quota_for(percent: float) -> tuple[int, int]:
    """(quota, period) in µs for `percent` % of one CPU, the period stretched when the quota would be under the
    kernel's minimum."""
    if not 0 < percent <= 100:
        raise CpuQuotaError(f"a CPU quota is more than 0 and at most 100 % of one CPU, not {percent}")
    period = max(PERIOD_US, math.ceil(MIN_QUOTA_US * 100 / percent))
    return max(MIN_QUOTA_US, round(period * percent / 100)), period


def find_hierarchy() -> Hierarchy:
    """The cgroup hierarchy with the cpu controller and this process's place in it (v1 first, where cpu is bound
    to v1 it is missing from v2)."""
    own = {}
    for line in OWN_CGROUPS.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split()
        root, mountpoint = fields[3], Path(fields[4])
        fstype, options = fields[-3], fields[-1].split(",")
        if fstype == "cgroup" and "cpu" in options:
            path = next((p for c, p in own.items() if "cpu" in c.split(",")), root)
            return Hierarchy(base=_within(mountpoint, root, path), version=1)
        if fstype == "cgroup2" and "cpu" in _words(mountpoint / "cgroup.controllers"):
            return Hierarchy(base=_within(mountpoint, root, own.get("", root)), version=2)
    raise CpuQuotaError("no cgroup hierarchy with the cpu controller is mounted (v1 `cpu` or v2 with `cpu`)")


def unavailable_reason() -> str | None:
    """None when a quota can be set here (checked by making, limiting and removing a group), else why not."""
    try:
        CpuQuota("probe", 50).remove()
    except (CpuQuotaError, OSError) as exc:
        return f"cannot limit CPU with cgroups on this machine: {exc}"
    return None


class CpuQuota:
    """A cgroup limited to `percent` % of one CPU. `wrap(argv)` is argv started inside it; `remove()` deletes it."""

    def __init__(self, name: str, percent: float, hierarchy: Hierarchy | None = None) -> None:
        self.hierarchy = hierarchy or find_hierarchy()
        self.quota_us, self.period_us = quota_for(percent)
        self.percent = percent
        base = self.hierarchy.base
        _sweep_stale(base)
        if self.hierarchy.version == 2 and "cpu" not in _words(base / "cgroup.subtree_control"):
            try:
                _write(base / "cgroup.subtree_control", "+cpu")
            except OSError as exc:  # v2 enables a controller for children only of a group without processes
                raise CpuQuotaError(f"cannot enable the cpu controller for groups under {base}: {exc}") from None
        self.path = base / f"{PREFIX}{os.getpid()}-{name}"
        try:
            self.path.mkdir()
        except FileExistsError:
            pass  # left by a run of ours that died; the quota below is set again
        except OSError as exc:
            raise CpuQuotaError(f"cannot make a cgroup in {base}: {exc}") from None
        try:
            if self.hierarchy.version == 1:
                _write(self.path / "cpu.cfs_period_us", str(self.period_us))
                _write(self.path / "cpu.cfs_quota_us", str(self.quota_us))
            else:
                _write(self.path / "cpu.max", f"{self.quota_us} {self.period_us}")
        except OSError as exc:
            self.remove()
            raise CpuQuotaError(f"cannot set the CPU quota of {self.path}: {exc}") from None

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run by a shell that first moves itself into this group (the command then execs in its place, with
        the same pid), and that runs nothing when the move fails."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def pids(self) -> list[int]:
        with contextlib.suppress(FileNotFoundError):
            return [int(pid) for pid in _words(self.path / "cgroup.procs")]
        return []

    def remove(self, timeout: float = 5) -> None:
        """Move any process still inside back to the base group, then delete the group (a process that is exiting
        can keep it busy for a moment)."""
        _remove(self.path, self.hierarchy.base, timeout)


def _remove(path: Path, base: Path, timeout: float) -> None:
    until = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            for pid in _words(path / "cgroup.procs"):
                with contextlib.suppress(ProcessLookupError, OSError):  # it exited meanwhile
                    _write(base / "cgroup.procs", pid)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > until:
                raise CpuQuotaError(f"cannot remove the cgroup {path}: {exc}") from None
            time.sleep(0.05)


def _sweep_stale(base: Path) -> None:
    """Delete the groups of processes of ours that died without removing them (SIGKILL), never a live one's."""
    for path in base.glob(f"{PREFIX}*"):
        owner = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(CpuQuotaError):
                _remove(path, base, timeout=0)


def _within(mountpoint: Path, mount_root: str, path: str) -> Path:
    """The directory of cgroup `path` under a mount of the hierarchy's `mount_root` (the mount itself when the path
    is not visible there, as in a container that mounts only its own subtree)."""
    relative = os.path.relpath(path, mount_root)
    candidate = mountpoint if relative.startswith("..") else (mountpoint / relative).resolve()
    return candidate if candidate.is_dir() else mountpoint


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def _write(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
