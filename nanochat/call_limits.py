"""
Limits per sandboxed call, not per process or per uid (nanochat/execution.py).

rlimits bound one process: RLIMIT_AS lets 8 forked children of 200 MB use 1.6 GB in one call,
and RLIMIT_NPROC counts every process of a uid, so one call's fork flood would starve a
concurrent call of the same uid. So every call holds a slot while it runs:

    with CallSlot(memory_bytes, max_procs) as slot:
        slot.uids          # (program, supervisor): as root, uids of this slot alone, so RLIMIT_NPROC
                           # counts this call's processes only; None in a user namespace (bwrap maps one uid)
        slot.launcher      # argv prefix that starts the call inside the slot's cgroup ([] without one)
        slot.out_of_memory()  # did the kernel's OOM killer act inside this call's cgroup?

Slots are lock files (flock), so concurrent calls in one process or in several never share
one. Where the machine lets us (root, and a writable cgroup v1 memory hierarchy or a cgroup v2
tree with the memory and pids controllers), each slot is also a cgroup whose memory.max (v1:
memory.limit_in_bytes) bounds the memory of all of the call's processes together, tmpfs
included, and (v2) whose pids.max bounds their number; under v1 the slot's own uid bounds it
(RLIMIT_NPROC). Elsewhere the call keeps its rlimits and, as root, its own uids: `describe()`
says which in one line.
"""

import fcntl
import functools
import os
import sys
import tempfile

SLOTS = 64                      # concurrent calls at most (a 65th waits for a free slot)
UID_BASE = 200_000              # slot s runs its program as UID_BASE + 2s and its supervisor as UID_BASE + 2s + 1
GROUP = "nanochat-sandbox"      # the cgroup folder that holds slot_0 .. slot_63
SLOT_DIR = os.path.join(tempfile.gettempdir(), "nanochat-sandbox-slots")
CGROUP_ROOT = "/sys/fs/cgroup"


def _own_cgroup(controller):
    """This process's cgroup path in the v1 hierarchy of `controller`, or in the v2 tree ("")."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers.split(",") == [controller] or (controller == "" and controllers == ""):
                return path
    return None


class Cgroups:
    """The slot cgroups of one machine: v1 (a folder per slot in the memory hierarchy) or v2 (a
    folder per slot with the memory and pids controllers). folders: {"memory": parent folder,
    and for v2 "pids": the same folder}."""

    def __init__(self, version, folders):
        self.version, self.folders = version, folders

    def slot(self, number):
        return {kind: os.path.join(parent, f"slot_{number}") for kind, parent in self.folders.items()}

    def prepare(self, number, memory_bytes, max_procs):
        """Create slot `number` (once) and set its budget; the oom-kill count before the call."""
        folders = self.slot(number)
        for folder in set(folders.values()):
            os.makedirs(folder, exist_ok=True)
        if self.version == 1:
            # memory + swap may not be set below memory alone: raise the pair in one order, lower it in the other
            names = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            names = [n for n in names if os.path.exists(os.path.join(folders["memory"], n))]
            try:
                for name in names:
                    _write(os.path.join(folders["memory"], name), memory_bytes)
            except OSError:
                for name in reversed(names):
                    _write(os.path.join(folders["memory"], name), memory_bytes)
        else:
            _write(os.path.join(folders["memory"], "memory.max"), memory_bytes)
            swap = os.path.join(folders["memory"], "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, 0)
        if "pids" in folders:
            _write(os.path.join(folders["pids"], "pids.max"), max_procs)
        return self.oom_kills(number)

    def oom_kills(self, number):
        folder = self.slot(number)["memory"]
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with open(os.path.join(folder, name)) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def procs_files(self, number):
        return sorted({os.path.join(folder, "cgroup.procs") for folder in self.slot(number).values()})


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


@functools.lru_cache(maxsize=1)
def cgroups():
    """(Cgroups or None, why): the slot cgroups this machine allows, probed once by creating slot 0."""
    if os.geteuid() != 0:
        return None, "not root"
    found = None
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):  # v2 mounted at the root
        own = _own_cgroup("")
        if own is not None:
            parent = os.path.join(CGROUP_ROOT, own.lstrip("/"), GROUP)
            found = Cgroups(2, {"memory": parent, "pids": parent})
    elif os.path.isdir(os.path.join(CGROUP_ROOT, "memory")):
        # v1: the memory hierarchy only. Moving a process into a v1 group waits for an RCU grace
        # period (~10 ms a hierarchy); the process count is bounded per call by the slot's own uid
        own = _own_cgroup("memory")
        if own is not None:
            found = Cgroups(1, {"memory": os.path.join(CGROUP_ROOT, "memory", own.lstrip("/"), GROUP)})
    if found is None:
        return None, "no cgroup memory controller found"
    try:
        if found.version == 2:  # both controllers must reach the slots: enable them for GROUP's children
            os.makedirs(found.folders["memory"], exist_ok=True)
            _write(os.path.join(found.folders["memory"], "cgroup.subtree_control"), "+memory +pids")
        found.prepare(0, 1 << 30, 64)
    except OSError as e:
        return None, f"cannot create a cgroup ({e.strerror}: {e.filename})"
    return found, f"cgroup v{found.version}"


def describe():
    """One line: what bounds a call's memory and processes here."""
    groups, why = cgroups()
    if groups is not None and groups.version == 1:
        return f"per-call cgroup ({why}: memory of all its processes together) and uid (their process count)"
    if groups is not None:
        return f"per-call cgroup ({why}: memory and process count of all its processes together)"
    if os.geteuid() == 0:
        return f"per-call uid (process count per call) and per-process memory rlimits; no per-call cgroup ({why})"
    return f"per-process rlimits only: no per-call uid or cgroup ({why})"


@functools.lru_cache(maxsize=None)
def _warn_once(line):
    print(line, file=sys.stderr, flush=True)


class CallSlot:
    """A slot for one call (see the module docstring); waits while all SLOTS are taken."""

    def __init__(self, memory_bytes, max_procs):
        self.memory_bytes, self.max_procs = memory_bytes, max_procs
        self.number, self.uids, self.launcher, self._lock, self._kills = None, None, [], None, 0

    def __enter__(self):
        os.makedirs(SLOT_DIR, mode=0o700, exist_ok=True)
        while self._lock is None:
            for number in range(SLOTS):
                fd = os.open(os.path.join(SLOT_DIR, f"slot_{number}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.number, self._lock = number, fd
                break
            else:  # every slot busy: wait for slot 0 rather than spin
                fd = os.open(os.path.join(SLOT_DIR, "slot_0.lock"), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self.number, self._lock = 0, fd
        if os.geteuid() == 0:
            self.uids = (UID_BASE + 2 * self.number, UID_BASE + 2 * self.number + 1)
        groups, _ = cgroups()
        if groups is not None:
            try:
                self._kills = groups.prepare(self.number, self.memory_bytes, self.max_procs)
                # a shell writes its own pid into the slot's cgroup(s), then becomes bwrap: every
                # process of the call starts inside
                files = groups.procs_files(self.number)
                self.launcher = ["/bin/sh", "-c", 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; '
                                 'shift; done; shift; exec "$@"', "sh", *files, "--"]
            except OSError as e:  # this slot's group is unusable now: rlimits and uids still hold
                self.launcher = []
                _warn_once(f"sandbox: slot {self.number} runs without its cgroup ({e.strerror}: {e.filename})")
        return self

    def out_of_memory(self):
        groups, _ = cgroups()
        if groups is None or not self.launcher:
            return False
        try:
            return groups.oom_kills(self.number) > self._kills
        except OSError:
            return False

    def __exit__(self, *exc):
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        os.close(self._lock)
        self._lock = None
