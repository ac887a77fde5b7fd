"""Replies shown as what they are: the decoder types a tool call and its output, the terminal
prints them as [python] / [output] blocks, the page's stream carries the types, and a reply sent
back as typed parts renders to exactly the tokens the model wrote."""

import os
import re

import pytest
import torch
from fastapi.testclient import TestClient

from nanochat.chat_api import Worker
from nanochat.engine import Engine
from nanochat.reply import ReplyDecoder, TerminalReply
from scripts.chat_web import create_app
from tests.test_engine import ScriptedModel
from tests.test_gpt import tiny
from tests.test_web import CHROMIUM, events, in_process_server

QUESTION = [{"role": "user", "content": "6 times 7?"}]
EXPECTED_PARTS = [{"type": "text", "text": "Let me compute."}, {"type": "python", "text": "print(6 * 7)"},
                  {"type": "python_output", "text": "42"}, {"type": "text", "text": " So it is 42 码🤖"}]


class ToolModel(ScriptedModel):
    """ScriptedModel that starts its script again at each prefill, so it can serve several requests."""
    def forward(self, idx, r=None, bptt_k=None, generator=None, kv_cache=None, logits_at=None):
        if idx.size(1) > 1:
            self.history = []
            del self.prompt_len
        return super().forward(idx, r, bptt_k, generator, kv_cache, logits_at)


def tool_model(tokenizer):
    special = tokenizer.encode_special
    with torch.device("meta"):
        model = ToolModel(tiny(vocab_size=512))
    model.to_empty(device="cpu")
    model.init_weights()
    model.prompt_len = 0
    model.script = [*tokenizer.encode("Let me compute."), special("<|python_start|>"), *tokenizer.encode("print(6 * 7)"),
                    special("<|python_end|>")]
    model.output_end = special("<|output_end|>")
    model.ending = [*tokenizer.encode(" So it is 42 码🤖"), special("<|assistant_end|>")]
    return model


def test_decoder_types_pieces_and_parts_round_trip(tokenizer):
    assert len(tokenizer.encode("🤖")) > 1  # the emoji spans tokens: the decoder must hold its first bytes back
    model = tool_model(tokenizer)
    prompt = tokenizer.render_for_completion({"messages": QUESTION + [{"role": "assistant", "content": ""}]})
    engine = Engine(model, tokenizer, r=2, tool=lambda code: "42")
    reply = [s.tokens[0] for s in engine.generate(prompt, max_tokens=60, temperature=0) if not s.done[0]]
    decoder = ReplyDecoder(tokenizer)
    pieces = [piece for token in reply for piece in decoder.feed(token)] + decoder.finish()
    assert decoder.parts == EXPECTED_PARTS
    assert all("\ufffd" not in text and "<|" not in text for _, text, _ in pieces)
    assert ["".join(t for _, t, p in pieces if p == i) for i in range(4)] == [p["text"] for p in EXPECTED_PARTS]
    by_kind = {}
    for kind, text, _ in pieces:
        by_kind[kind] = by_kind.get(kind, "") + text
    assert by_kind == {"text": "Let me compute. So it is 42 码🤖", "python": "print(6 * 7)", "python_output": "42"}
    # the parts, sent back as the assistant's content, are the very tokens the model wrote
    ids, _ = tokenizer.render_conversation({"messages": QUESTION + [
        {"role": "assistant", "content": decoder.parts}]}, max_tokens=10**6)
    assert ids == prompt + reply + [tokenizer.encode_special("<|assistant_end|>")]
    # a reply cut off inside a character gives it back, replaced, at the end
    cut = ReplyDecoder(tokenizer)
    assert cut.feed(tokenizer.encode("🤖")[0]) == [] and cut.finish()[0][1].endswith("\ufffd")
    # text held back when a tool call starts still belongs to the text part before it
    split = ReplyDecoder(tokenizer)
    emoji = tokenizer.encode("🤖")
    for token in emoji[:-1]:
        assert split.feed(token) == []
    assert split.feed(emoji[-1]) == [("text", "🤖", 0)]
    split.feed(emoji[0])
    assert split.feed(tokenizer.encode_special("<|python_start|>")) == [("text", "\ufffd", 0)]
    assert split.feed(tokenizer.encode("1")[0]) == [("python", "1", 1)]


def test_terminal_shows_tool_blocks(tokenizer):
    pieces = [("text", "Let me compute."), ("python", "x = 6\nprint(x * 7)"), ("python_output", "42"),
              ("text", " So"), ("text", " 42.")]
    plain = TerminalReply(color=False)
    out = "".join(plain.show(k, t) for k, t in pieces) + plain.end()
    assert out == "Let me compute.\n[python] x = 6\n         print(x * 7)\n[output] 42\n So 42.\n"
    colored = TerminalReply(color=True)
    ansi = "".join(colored.show(k, t) for k, t in pieces) + colored.end()
    assert "\033[36m[python]" in ansi and "\033[32m[output]" in ansi
    assert re.sub(r"\033\[\d+m", "", ansi) == out
    starts_with_code = TerminalReply(color=False)
    assert starts_with_code.show("python", "1+1") == "\n[python] 1+1" and starts_with_code.end() == "\n"
    assert TerminalReply(color=False).end() == "\n"  # an empty reply still ends its line


@pytest.fixture
def tool_app(tokenizer):
    return create_app([Worker(tool_model(tokenizer), tokenizer, "cpu")],
                      dict(temperature=0.0, top_k=50, max_tokens=60, recur=2))


def test_page_stream_types_tool_calls_and_takes_them_back(tool_app):
    with TestClient(tool_app) as client:
        evs = events(client.post("/chat/completions", json={"messages": QUESTION}).text)
        *pieces, done = evs
        assert done["done"] and not any("<|" in e["token"] for e in pieces)
        parts = {}
        for e in pieces:
            parts.setdefault(e["part"], {"type": e["type"], "text": ""})["text"] += e["token"]
        assert [parts[i] for i in sorted(parts)] == EXPECTED_PARTS
        history = QUESTION + [{"role": "assistant", "content": EXPECTED_PARTS}, {"role": "user", "content": "and 6*8?"}]
        assert events(client.post("/chat/completions", json={"messages": history}).text)[-1]["done"]
        for content, field in (([{"type": "shell", "text": "ls"}], "messages[1].content[0]"),
                               ([{"type": "text"}], "messages[1].content[0]"), (7, "messages[1].content")):
            bad = QUESTION + [{"role": "assistant", "content": content}, {"role": "user", "content": "hm"}]
            res = client.post("/chat/completions", json={"messages": bad})
            assert res.status_code == 400 and res.json()["error"].startswith(field + ":"), res.text
        user_parts = client.post("/chat/completions", json={"messages": [{"role": "user", "content": EXPECTED_PARTS}]})
        assert user_parts.status_code == 400 and "messages[0].content: expected a string" in user_parts.json()["error"]
        config = client.get("/config").json()  # the page's header shows the trained context, not the rotary table
        assert config["context"] == 32 and config["positions"] == 320


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not found (apt-get install -y chromium)")
def test_page_shows_tool_blocks_in_headless_chromium(tool_app, tmp_path):
    """The page in a real browser: the code and its output in their own labelled blocks, no raw
    special tokens; the follow-up question sends them back as parts; the header's trained context."""
    from playwright.sync_api import sync_playwright
    with in_process_server(tool_app) as url, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            sent = []
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('context')")
            assert page.inner_text("#model") == "looped, width 64, trained context 32 tokens"
            for turn, question in enumerate(("6 times 7?", "and again?")):
                page.fill("#input", question)
                page.click("#send")
                page.wait_for_selector(f".msg.assistant >> nth={turn} >> .meta:has-text('mean depth')", timeout=60_000)
            reply = page.locator(".msg.assistant").last
            assert reply.locator(".tool.python .label").inner_text().lower() == "python"
            assert reply.locator(".tool.python code").inner_text() == "print(6 * 7)"
            assert reply.locator(".tool.python_output code").inner_text() == "42"
            text = reply.locator(".content").inner_text()
            assert "<|" not in text and text.startswith("Let me compute.") and text.rstrip().endswith("So it is 42 码🤖")
            assert page.locator(".msg").count() == 4 and page.locator(".msg .error").count() == 0
            assert sent[1]["messages"][1] == {"role": "assistant", "content": EXPECTED_PARTS}  # the tool call went back
            assert page.inner_text("#status") == "" and not errors, errors
        finally:
            browser.close()
