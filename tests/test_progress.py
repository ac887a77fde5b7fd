"""Progress lines with an ETA (nanochat/common.py Progress) and their use inside a CORE task and a
chat eval task, on a fake clock."""

import pytest

from nanochat import common, core_eval, task_eval
from nanochat.common import Progress, format_duration, mib
from tests.test_chat import ListTask
from tests.test_core_eval import BigramStub, run_task


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(common.time, "time", clock)
    return clock


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 89, 90, 600, 5399, 5400, 7 * 3600)] == \
        ["0s", "42s", "89s", "1.5m", "10.0m", "90.0m", "1.5h", "7.0h"]


def test_progress_prints_at_most_every_interval_with_eta(clock):
    lines = []
    progress = Progress(10, "shards", every=10.0, log=lines.append)
    clock.now += 4
    progress.update(2)  # 4 s after the start: too soon
    assert lines == []
    clock.now += 6
    progress.update(3, extra=" | x")  # 5 of 10 in 10 s: 10 s to go
    assert lines == ["shards 5/10 (50%) | 10s elapsed | eta 10s | x"]
    clock.now += 5
    progress.update()
    assert len(lines) == 1  # 5 s since the last line
    clock.now += 285
    progress.update(4)  # all 10 in 300 s: nothing left
    assert lines[-1] == "shards 10/10 (100%) | 5.0m elapsed | eta 0s"
    bytes_progress = Progress(2**21, "bundle", every=0.0, log=lines.append, unit=mib)
    clock.now += 1
    bytes_progress.update(2**20)
    assert lines[-1] == "bundle 1.0 MiB/2.0 MiB (50%) | 1s elapsed | eta 1s"
    unknown = Progress(0, "file", every=0.0, log=lines.append, unit=mib)  # no content-length: no ETA
    clock.now += 2
    unknown.update(3 * 2**20)
    assert lines[-1] == "file 3.0 MiB | 2s elapsed"


def test_core_task_reports_progress_with_eta(clock, monkeypatch):
    monkeypatch.setattr(core_eval, "PROGRESS_SECONDS", 0.0)
    model = BigramStub({" ": "y", "y": "e", "e": "s"})
    real_forward = model.forward

    def slow_forward(idx, r=None):  # each example takes 2 s on the fake clock
        clock.now += 2
        return real_forward(idx, r)
    model.forward = slow_forward
    rows = [{"query": "Q?", "choices": ["yes", "no"], "gold": g} for g in (0, 1, 0, 0)]
    lines = []
    run_task(model, "multiple_choice", rows, log=lines.append)
    progress = [l for l in lines if "elapsed" in l]
    assert progress[0] == "  t (rank 0's share) 1/4 (25%) | 2s elapsed | eta 6s | acc so far 1.0000"
    assert progress[-1].startswith("  t (rank 0's share) 4/4 (100%) | 8s elapsed | eta 0s | acc so far 0.7500")


def test_chat_eval_task_reports_progress_with_eta(clock, monkeypatch):
    monkeypatch.setattr(task_eval, "PROGRESS_SECONDS", 0.0)
    task = ListTask([{"messages": []}] * 5)

    def fake_generate(engine, prompts, num_samples, max_tokens, temperature, top_k, seed):
        clock.now += 3  # a batch of replies takes 3 s
        return [dict(tokens=[], sampled=[], stop=None, depths=[1]) for _ in range(len(prompts) * num_samples)]
    monkeypatch.setattr(task_eval, "sample_replies", fake_generate)

    class Tok:
        def render_for_completion(self, conversation):
            return [1, 2]

        def decode(self, ids):
            return ""
    task.evaluate = lambda conversation, completion: True
    engine = type("E", (), {"model": None})()
    lines = []
    res = task_eval.evaluate_generative(engine, Tok(), task, "cpu", batch_size=2, log=lines.append)
    assert res["total"] == 5 and res["accuracy"] == 1.0
    assert lines == ["problems (rank 0's share) 2/5 (40%) | 3s elapsed | eta 4s",
                     "problems (rank 0's share) 4/5 (80%) | 6s elapsed | eta 2s",
                     "problems (rank 0's share) 5/5 (100%) | 9s elapsed | eta 0s"]
