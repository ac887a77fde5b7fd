import random

import pytest

from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer


def test_round_trip_unicode_and_bytes(tokenizer):
    rng = random.Random(0)
    texts = ["", " ", "hello world", "ünïcödé — 码 🤖 \u200b\x00\x7f", "\r\n\t  trailing  ",
             "The State of the Union is strong.", "<|bos|> looks special but is text"]
    # arbitrary code points, including ones never seen in training
    texts += ["".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(50)).encode("utf-8", "replace").decode("utf-8", "replace")
              for _ in range(20)]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    batch = tokenizer.encode(texts, prepend=tokenizer.get_bos_token_id())
    assert [ids[0] for ids in batch] == [tokenizer.get_bos_token_id()] * len(texts)
    assert [tokenizer.decode(ids[1:]) for ids in batch] == texts


def test_special_tokens_never_from_text(tokenizer):
    special_ids = {tokenizer.encode_special(name) for name in SPECIAL_TOKENS}
    assert len(special_ids) == len(SPECIAL_TOKENS)
    assert min(special_ids) == tokenizer.get_vocab_size() - len(SPECIAL_TOKENS)
    text = "".join(SPECIAL_TOKENS) + " <|assistant_end|> <|python_start|>print(1)<|python_end|>"
    ids = tokenizer.encode(text)
    assert not special_ids & set(ids)
    assert tokenizer.decode(ids) == text


def test_vocab_size_and_token_bytes(tokenizer):
    assert tokenizer.get_vocab_size() == 512
    tb = tokenizer.token_bytes()
    assert tb.shape == (512,)
    assert (tb[:256] == 1).all()  # the 256 single bytes
    assert (tb[-len(SPECIAL_TOKENS):] == 0).all()  # specials are excluded from bits per byte
    ids = tokenizer.encode("hello wörld")
    assert int(tb[ids].sum()) == len("hello wörld".encode("utf-8"))


def test_save_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = "Fellow citizens, 1789 — ünïcödé"
    assert loaded.encode(text) == tokenizer.encode(text)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "missing")


def test_render_conversation_mask(tokenizer):
    t = tokenizer
    conv = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute."},
            {"type": "python", "text": "2+2"},
            {"type": "python_output", "text": "4"},
            {"type": "text", "text": "It is 4."}]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome"},
    ]}
    ids, mask = t.render_conversation(conv)
    S = t.encode_special
    expected = (
        [(S("<|bos|>"), 0), (S("<|user_start|>"), 0)]
        + [(i, 0) for i in t.encode("Be brief.\n\n2+2?")]
        + [(S("<|user_end|>"), 0), (S("<|assistant_start|>"), 0)]
        + [(i, 1) for i in t.encode("Let me compute.")]
        + [(S("<|python_start|>"), 1)] + [(i, 1) for i in t.encode("2+2")] + [(S("<|python_end|>"), 1)]
        + [(S("<|output_start|>"), 0)] + [(i, 0) for i in t.encode("4")] + [(S("<|output_end|>"), 0)]
        + [(i, 1) for i in t.encode("It is 4.")] + [(S("<|assistant_end|>"), 1)]
        + [(S("<|user_start|>"), 0)] + [(i, 0) for i in t.encode("Thanks")] + [(S("<|user_end|>"), 0)]
        + [(S("<|assistant_start|>"), 0)] + [(i, 1) for i in t.encode("Welcome")] + [(S("<|assistant_end|>"), 1)]
    )
    assert list(zip(ids, mask)) == expected
    # truncation keeps ids and mask aligned
    ids5, mask5 = t.render_conversation(conv, max_tokens=5)
    assert ids5 == ids[:5] and mask5 == mask[:5]


def test_render_for_completion(tokenizer):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids = tokenizer.render_for_completion(conv)
    full, _ = tokenizer.render_conversation(conv)
    n_prompt = full.index(tokenizer.encode_special("<|assistant_start|>")) + 1
    assert ids == full[:n_prompt]


def test_render_rejects_bad_roles(tokenizer):
    with pytest.raises(ValueError, match="alternate"):
        tokenizer.render_conversation({"messages": [{"role": "assistant", "content": "x"}]})
    with pytest.raises(ValueError, match="part type"):
        tokenizer.render_conversation({"messages": [{"role": "user", "content": "x"},
                                                    {"role": "assistant", "content": [{"type": "img", "text": ""}]}]})
