"""dev/token_depths.py and dev/depth_by_kind.py: per-token iterations under adaptive exit, fed token by token as
decoding does (so a position's depth does not depend on what follows it), and the figure; dev/loss_by_position.py."""

import os

from dev.token_depths import encode_segments, plot, token_depths
from nanochat.tokenizer import Tokenizer
from tests.test_gpt import build, tiny


def test_depths_are_causal_and_the_figure_is_drawn(tmp_path):
    model = build(tiny(sequence_len=64), perturb_inject=True).eval()
    tok = Tokenizer.train_from_iterator(iter(["a b c d | q"]), 256 + 9)
    ids, spans = encode_segments(tok, [("text", "The river ran."), ("table", " a b b b"), ("query", " | a")])
    assert [name for name, _, _ in spans] == ["bos", "text", "table", "query"] and spans[-1][2] == len(ids) - 1
    assert ids[0] == tok.get_bos_token_id() and tok.decode(ids[1:]) == "The river ran. a b b b | a"
    depths = token_depths(model, ids, cap=6, criterion="kl", threshold=1e-2)
    assert len(depths) == len(ids) and all(2 <= d <= 6 for d in depths)  # KL compares two iterations at least
    assert len(set(depths)) > 1  # this model's positions stop at different iterations
    assert token_depths(model, ids[:10], cap=6, criterion="kl", threshold=1e-2) == depths[:10]  # causal, as decoding
    assert token_depths(model, ids, cap=6, criterion="kl", threshold=0.0) == [6] * len(ids)  # 0 never stops
    path = tmp_path / "depths.png"
    plot(tok, ids, depths, spans, 6, "tiny", path)
    assert path.stat().st_size > 5000


def test_depths_split_by_kind_text_table_answer(tmp_path):
    """dev/depth_by_kind: validation text rows cropped to one length, and a depth's problems
    decoded together, whose table, answer and accuracy agree with each problem fed alone."""
    import json
    import random
    import shutil

    import pyarrow.parquet as pq

    from dev.depth_by_kind import problem_depths, problems_by_depth, text_rows
    from tasks.pointer_chase import eval_problem, train_document
    from tests.conftest import SAMPLE_DATA_DIR

    rng = random.Random(3)
    text = pq.read_table(os.path.join(SAMPLE_DATA_DIR, "shard_00000.parquet")).column("text").to_pylist()
    tok = Tokenizer.train_from_iterator(iter(text[:200] + [train_document(rng, surface="spaced") for _ in range(300)]), 512)
    shutil.copy(os.path.join(SAMPLE_DATA_DIR, "shard_00001.parquet"), tmp_path / "shard_00001.parquet")
    for depth in (1, 4):
        with open(tmp_path / f"test_d{depth}.jsonl", "w") as f:
            f.writelines(json.dumps(eval_problem(rng, depth, surface="spaced")) + "\n" for _ in range(5))
    rows = text_rows(tok, str(tmp_path), n_docs=3, n_tokens=40)
    assert len(rows) == 3 and all(len(r) == 40 and r[0] == tok.get_bos_token_id() for r in rows)
    model = build(tiny(sequence_len=64, vocab_size=512), perturb_inject=True).eval()
    tests = problems_by_depth(str(tmp_path), limit=4)
    assert list(tests) == [1, 4] and all(len(p) == 4 for p in tests.values())
    table, answer, accuracy = problem_depths(model, tok, tests[4], cap=6, criterion="kl", threshold=1e-2)
    assert len(table) == 4 * 48 and len(answer) == 4 and 0 <= accuracy <= 1  # 24 letters and their parents
    alone = [token_depths(model, tok.encode(p["prompt"], prepend=tok.get_bos_token_id()), 6, "kl", 1e-2) for p in tests[4]]
    assert answer == [d[-1] for d in alone] and table[:48] == alone[0][1:49]
    prefix = "The river rose in the night.\n"  # a problem after text in its row: the table starts after it
    table, answer, _ = problem_depths(model, tok, tests[4], cap=6, criterion="kl", threshold=1e-2, prefix=prefix)
    alone = token_depths(model, tok.encode(prefix + tests[4][0]["prompt"], prepend=tok.get_bos_token_id()), 6, "kl", 1e-2)
    n = len(tok.encode(prefix))
    assert len(table) == 4 * 48 and answer[0] == alone[-1] and table[:48] == alone[1 + n:49 + n]


def test_loss_by_position_averages_to_the_models_loss():
    """dev/loss_by_position: the per-position losses of the rows average to the model's own mean loss."""
    import torch

    from dev.loss_by_position import position_losses
    from tests.test_gpt import tokens
    model = build(tiny(sequence_len=64), perturb_inject=True).eval()
    rows = tokens(3, 17)
    losses = position_losses(model, rows, r=3)
    assert losses.shape == (16,)
    with torch.no_grad():
        torch.testing.assert_close(losses.mean(), model.loss(rows[:, :-1], rows[:, 1:], r=3), rtol=1e-5, atol=1e-5)
