"""dev/token_depths.py: per-token iterations under adaptive exit, fed token by token as decoding
does (so a position's depth does not depend on what follows it), and the figure."""

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
