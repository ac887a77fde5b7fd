"""Adaptive exit in the scoring evaluations: the prefill with per-position exit at threshold 0
equals the fixed-r forward, a real threshold stops positions early and its depths are what the
evaluators report (letter logits of the chat tasks, CORE)."""

import pytest
import torch

from nanochat.core_eval import evaluate_task
from nanochat.eval_bundle import Task as CoreTask
from nanochat.eval_forward import DepthMeter, scoring_forward
from nanochat.task_eval import evaluate_categorical
from tasks.common import mc_conversation
from tests.test_chat import ListTask
from tests.test_engine import chat_model, kl_changes, looped
from tests.test_gpt import build, tiny, tokens

ATOL = 1e-5  # prefill through the cache vs the full forward (tests/test_engine.py)


@torch.no_grad()
def test_threshold_zero_equals_fixed_r():
    model = looped(init_state="randn")
    idx = tokens(3, 20)
    for r in (1, 3):
        fixed, depth = scoring_forward(model, idx, r)
        assert depth is None
        adaptive, depth = scoring_forward(model, idx, r, exit_threshold=0.0)
        assert (adaptive - fixed).abs().max().item() < ATOL
        assert depth.shape == (3, 20) and (depth == r).all()


@torch.no_grad()
def test_a_threshold_stops_positions_and_each_row_alone():
    model = looped()
    r, idx = 6, tokens(3, 16)
    threshold = kl_changes(model, idx, r).median().item()
    logits, depth = scoring_forward(model, idx, r, exit_threshold=threshold)
    assert depth.min() >= 2 and depth.max() <= r and 0 < (depth < r).float().mean() < 1, depth
    # a row's depths and logits do not depend on the other rows of the batch (nor on padding after it)
    for b in range(3):
        one, d = scoring_forward(model, idx[b:b + 1, :12], r, exit_threshold=threshold)
        assert torch.equal(d[0], depth[b, :12])
        assert (one[0] - logits[b, :12]).abs().max().item() < ATOL
    # a huge threshold stops every position at the first check (after two iterations)
    _, depth = scoring_forward(model, idx, r, exit_threshold=1e9)
    assert (depth == 2).all()
    with pytest.raises(ValueError, match="looped"):
        scoring_forward(build(tiny(arch="gpt")), idx, 1, exit_threshold=0.0)


def test_depth_meter():
    meter = DepthMeter(4)
    assert meter.mean() == 4.0  # fixed r: nothing measured
    meter.add(None, [0], [0])
    assert meter.mean() == 4.0
    meter.add(torch.tensor([[1, 2, 3], [4, 4, 2]]), [0, 1, 1], [2, 0, 2])  # 3, 4, 2
    assert meter.mean() == 3.0 and meter.count == 3


@torch.no_grad()
def test_categorical_adaptive(tokenizer):
    model = chat_model()
    questions = [("Which is a fruit?", ["apple", "stone", "car", "cloud"], 0),
                 ("Which is blue?", ["grass", "sky", "coal"], 1),
                 ("Which one swims in the sea, far from the shore?", ["cat", "dog", "fish", "bird"], 2)]
    task = ListTask([mc_conversation(q, c, a) for q, c, a in questions])
    fixed = evaluate_categorical(model, tokenizer, task, "cpu", r=4, batch_size=2)
    assert fixed["mean_depth"] == 4.0
    zero = evaluate_categorical(model, tokenizer, task, "cpu", r=4, batch_size=2, exit_threshold=0.0)
    assert zero == fixed  # same predictions, every scored position ran r = 4
    early = evaluate_categorical(model, tokenizer, task, "cpu", r=4, batch_size=2, exit_threshold=1e9)
    assert early["mean_depth"] == 2.0 and early["total"] == 3
    # the reported depth is the scored (last prompt) position's: compare with a forward of each prompt
    idx = torch.tensor([tokenizer.render_for_completion(task[0])])
    threshold = kl_changes(model, idx, 4)[0, -1, 1:].median().item()
    _, depth = scoring_forward(model, idx, 4, exit_threshold=threshold)
    one = evaluate_categorical(model, tokenizer, ListTask([task[0]]), "cpu", r=4, exit_threshold=threshold)
    assert one["mean_depth"] == depth[0, -1].item()


class CharTokenizer:
    """One token per character (id = code point + 1 below the model's vocab), BOS = 0."""

    def get_bos_token_id(self):
        return 0

    def encode(self, text, prepend=None):
        if isinstance(text, list):
            return [self.encode(t, prepend) for t in text]
        return ([] if prepend is None else [prepend]) + [ord(c) % 200 + 1 for c in text]


@torch.no_grad()
def test_core_adaptive_on_a_tiny_model():
    model = looped()
    rows = [{"query": f"q{i} is", "choices": ["red", "green", "blue"], "gold": i % 3} for i in range(6)]
    task = CoreTask("mc", "multiple_choice", 1, " ", "unused")
    fixed = evaluate_task(model, CharTokenizer(), task, rows, "cpu", r=3)
    zero = evaluate_task(model, CharTokenizer(), task, rows, "cpu", r=3, exit_threshold=0.0)
    assert fixed["mean_depth"] == zero["mean_depth"] == 3.0 and zero["correct"] == fixed["correct"]
    early = evaluate_task(model, CharTokenizer(), task, rows, "cpu", r=3, exit_threshold=1e9)
    assert early["mean_depth"] == 2.0 and early["examples"] == 6
    lm = CoreTask("lm", "language_modeling", 0, " ", "unused")
    lm_rows = [{"context": "the sky is", "continuation": "blue"}]
    assert evaluate_task(model, CharTokenizer(), lm, lm_rows, "cpu", r=3, exit_threshold=1e9)["mean_depth"] == 2.0
