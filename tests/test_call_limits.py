"""Per-call slots of the sandbox (nanochat/call_limits.py): concurrent calls never share a slot,
a freed slot is reused, and the cgroup files each machine kind needs are the ones written. (The
kernel's side, memory and processes bounded per call: tests/test_sandbox_hostile.py.)"""

import threading

import pytest

from nanochat import call_limits
from nanochat.call_limits import CallSlot, Cgroups


@pytest.fixture
def slots(tmp_path, monkeypatch):
    monkeypatch.setattr(call_limits, "SLOT_DIR", str(tmp_path / "slots"))
    monkeypatch.setattr(call_limits, "cgroups", lambda: (None, "none in this test"))


def test_concurrent_calls_get_their_own_slots(slots):
    with CallSlot(1 << 28, 32) as a, CallSlot(1 << 28, 32) as b:
        assert a.number != b.number and a.launcher == b.launcher == []
        if a.uids is not None:  # root: two uids a slot, none shared
            assert len(set(a.uids) | set(b.uids)) == 4
    with CallSlot(1 << 28, 32) as c:
        assert c.number == 0  # freed slots are reused
    numbers, barrier = [], threading.Barrier(6)

    def hold():
        with CallSlot(1 << 28, 32) as s:
            numbers.append(s.number)
            barrier.wait(timeout=10)  # all six hold a slot at once

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(6))


@pytest.mark.parametrize("version", [1, 2])
def test_slot_cgroup_files(tmp_path, version):
    """The budget lands in each kind's files (v1: memory.limit_in_bytes and memsw; v2: memory.max,
    no swap, pids.max in one folder), and the OOM-kill count is read back."""
    folders = ({"memory": str(tmp_path / "memory" / "g")} if version == 1
               else {"memory": str(tmp_path / "g"), "pids": str(tmp_path / "g")})
    groups = Cgroups(version, folders)
    slot = groups.slot(3)
    memory_files = (["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control"] if version == 1
                    else ["memory.max", "memory.swap.max", "memory.events"])
    for folder in set(slot.values()):
        (tmp_path / folder).mkdir(parents=True)
    for name in memory_files:
        (tmp_path / slot["memory"] / name).write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
                                                      if "oom" in name or "events" in name else "max")
    assert groups.prepare(3, 300 << 20, 36) == 2
    read = lambda kind, name: (tmp_path / slot[kind] / name).read_text()
    assert read("memory", memory_files[0]) == str(300 << 20)
    assert version == 1 or read("pids", "pids.max") == "36"  # v1: the slot's uid bounds the processes
    assert read("memory", memory_files[1]) == (str(300 << 20) if version == 1 else "0")
    assert groups.procs_files(3) == sorted({f"{folder}/cgroup.procs" for folder in slot.values()})


def test_the_fallback_is_said_in_one_line(monkeypatch):
    monkeypatch.setattr(call_limits, "cgroups", lambda: (None, "not root"))
    line = call_limits.describe()
    assert "\n" not in line and "not root" in line and "rlimits" in line
