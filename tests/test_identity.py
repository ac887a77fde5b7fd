"""The identity conversations of the SFT mixture: the committed file is what the seeded
generator writes, about 1000 well-formed, varied conversations that say true things about
this model, read by the mixture's default identity part."""

import importlib.util
import json
import os
import re

from tasks.customjson import CustomJSON

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "dev", "identity_conversations.jsonl")


def generator():
    spec = importlib.util.spec_from_file_location("make_identity", os.path.join(ROOT, "dev", "make_identity_conversations.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the templates; the writing is under __main__
    return module


def test_committed_file_is_the_seeded_generators_output():
    gen = generator()
    rows = gen.generate(1000, seed=0)
    with open(PATH, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == rows
    assert gen.generate(1000, seed=0) == rows and gen.generate(1000, seed=1) != rows
    with open(gen.HANDWRITTEN, encoding="utf-8") as f:
        handwritten = [json.loads(line) for line in f]
    assert rows[:len(handwritten)] == handwritten  # the hand-written ones come first, as they are


def test_size_form_and_variety():
    task = CustomJSON(PATH)  # every line checked: user/assistant alternate, the assistant answers last
    convs = [task.get_example(i)["messages"] for i in range(len(task))]
    assert len(convs) == 1000
    assert len({json.dumps(c) for c in convs}) == 1000
    assert len({c[0]["content"] for c in convs}) >= 600
    assert len({m["content"] for c in convs for m in c if m["role"] == "assistant"}) >= 900
    multi = sum(len(c) >= 4 for c in convs)
    assert 200 <= multi <= 600, multi
    assert sum(c[0]["content"] == c[0]["content"].lower() for c in convs) >= 100  # people type in lower case too


def test_what_it_says_is_true():
    with open(PATH, encoding="utf-8") as f:
        convs = [json.loads(line)["messages"] for line in f]
    replies = [m["content"] for c in convs for m in c if m["role"] == "assistant"]
    text = " ".join(replies)
    assert text.count("looped nanochat") >= 250
    for topic in ("Huginn", "prelude", "recurrent block", "Poisson log-normal", "last 4 iterations", "adaptive exit",
                  "MIT license", "Python tool", "SmolTalk", "GSM8K", "####"):
        assert topic in text, topic
    assert "%" not in text  # no benchmark figures: the scores depend on a checkpoint the model cannot see
    assert not re.search(r"\bI(?:'m| am) (?:ChatGPT|GPT-4|Claude|Gemini|Llama|Mistral)\b", text)
    for conv in convs:  # "Are you ChatGPT?" is always answered no, naming that model
        for ask, reply in zip(conv[::2], conv[1::2]):
            m = re.search(r"(?:are you|is this|you're) (?:based on |the same as |just )?(ChatGPT|GPT-4|Claude|Gemini|Llama|Mistral)",
                          ask["content"], re.I)
            if m:
                assert f"not {m.group(1)}".lower() in reply["content"].lower(), (ask, reply)
    # the layout is stated one way only: 2 prelude blocks, 4 recurrent blocks, 2 coda blocks
    assert not re.search(r"prelude of (?!2\b|two\b|layers\b)\w+", text) and not re.search(r"coda of (?!2\b|two\b)\w+", text)


def test_default_sft_mixture_reads_it_twice():
    with open(os.path.join(ROOT, "scripts", "chat_sft.py")) as f:
        source = f.read()
    assert 'IDENTITY = os.path.join(REPO, "dev", "identity_conversations.jsonl")' in source
    assert re.search(r'"identity": \(-1, 2\)', source)  # MIXTURE: all of them, two passes
