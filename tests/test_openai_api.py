"""The OpenAI-compatible API end to end with the official `openai` client: `python -m
scripts.chat_web` on 127.0.0.1 serving a tiny random checkpoint made here (and, for the API key
and a failing generation, the app in an in-process uvicorn). Streamed == whole at temperature 0,
n, stop, seed, the recurrence extension fields, and each bad request as the client's typed error."""

import os

import openai
import pytest
import torch
import torch.nn.functional as F

from nanochat.chat_api import Worker
from nanochat.checkpoint_manager import build_model
from scripts.chat_web import create_app
from tests.test_reply import tool_model
from tests.test_web import HELLO, chat_web_server, in_process_server, save_tiny_checkpoint

MODEL = "nanochat-sft-tiny-7"  # source, tag and step of save_tiny_checkpoint's checkpoint


@pytest.fixture(scope="module")
def served(tokenizer, tmp_path_factory):
    """(client, base_dir): the server on the tiny checkpoint saved in base_dir."""
    base_dir = save_tiny_checkpoint(tokenizer, tmp_path_factory.mktemp("openai"))
    with chat_web_server(base_dir, "--max-new-tokens", "16", "--recur", "2") as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60), base_dir


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def chat(client, **kw):
    return client.chat.completions.create(**{"model": MODEL, "messages": HELLO, **kw})


def streamed(client, **kw):
    """(texts, depths, finish_reasons, usage) per choice index, joined from the chunks."""
    texts, depths, reasons, usage = {}, {}, {}, None
    for chunk in chat(client, stream=True, stream_options={"include_usage": True}, **kw):
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            depths[c.index] = depths.get(c.index, []) + c.depths
            reasons[c.index] = c.finish_reason or reasons.get(c.index)
    return texts, depths, reasons, usage


def test_models_and_streamed_equals_whole_at_temperature_0(client):
    assert [m.id for m in client.models.list()] == [MODEL] and client.models.retrieve(MODEL).id == MODEL
    whole = chat(client, temperature=0, max_tokens=12)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and whole.model == MODEL and whole.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens == len(choice.depths) >= 1 and set(choice.depths) == {2}  # fixed r = --recur
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert whole.recurrence == {"recur": 2, "adaptive": None}
    texts, depths, reasons, usage = streamed(client, temperature=0, max_tokens=12)
    assert texts == {0: choice.message.content} and depths == {0: choice.depths}
    assert reasons == {0: choice.finish_reason} and usage == whole.usage
    # the recurrence settings as extension fields; an adaptive exit reports each token's depth
    adaptive = chat(client, temperature=0, max_tokens=12, extra_body={"recur": 5, "adaptive": 10.0})
    depths = adaptive.choices[0].depths
    assert adaptive.recurrence == {"recur": 5, "adaptive": 10.0} and all(1 <= d <= 5 for d in depths) and min(depths) < 5
    # a system message (greedy: a sampled reply from a random model may end at its first token),
    # and a top_k (extension) that makes sampling greedy
    system = [{"role": "system", "content": "Be brief."}] + HELLO
    assert client.chat.completions.create(model=MODEL, messages=system, temperature=0, max_tokens=3).choices[0].message.content
    top1 = chat(client, temperature=1.0, max_tokens=12, seed=1, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == choice.message.content


def test_n_seed_and_stop(client):
    three = chat(client, n=3, temperature=1.0, seed=5, max_tokens=10)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) > 1  # three different samples
    assert three.usage.completion_tokens == sum(len(c.depths) for c in three.choices)
    assert [c.message.content for c in chat(client, n=3, temperature=1.0, seed=5, max_tokens=10).choices] == texts
    assert [c.message.content for c in chat(client, n=3, temperature=1.0, seed=6, max_tokens=10).choices] != texts
    s_texts, _, s_reasons, _ = streamed(client, n=3, temperature=1.0, seed=5, max_tokens=10)
    assert [s_texts[i] for i in range(3)] == texts  # n streams interleave, each choice by its index
    seed = next(seed for seed in range(100) if len(chat(client, seed=seed, max_tokens=16).choices[0].message.content) > 8)
    sample = chat(client, seed=seed, max_tokens=16).choices[0].message.content  # the random model's reply
    stop = sample[5:8]
    expected = sample[:sample.index(stop)]
    for stops in (stop, [stop, "\x00never"]):
        cut = chat(client, seed=seed, max_tokens=16, stop=stops).choices[0]
        assert cut.message.content == expected and cut.finish_reason == "stop"
    s_texts, _, s_reasons, _ = streamed(client, seed=seed, max_tokens=16, stop=stop)
    assert s_texts == {0: expected} and s_reasons == {0: "stop"}
    assert chat(client, temperature=0, max_tokens=3).choices[0].finish_reason == "length"


BAD = [  # (create() arguments, the client's error class, the param named)
    (dict(temperature=5), openai.BadRequestError, "temperature"),
    (dict(messages=[]), openai.BadRequestError, "messages"),
    (dict(messages=[{"role": "assistant", "content": "hi"}]), openai.BadRequestError, "messages[0].role"),
    (dict(messages=[{"role": "system", "content": "x"}, {"role": "assistant", "content": "hi"}]),
     openai.BadRequestError, "messages[1].role"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     openai.BadRequestError, "messages[0].content"),
    (dict(top_p=0), openai.BadRequestError, "top_p"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), openai.BadRequestError, "tools"),
    (dict(n=9), openai.BadRequestError, "n"),
    (dict(stop=["a", "b", "c", "d", "e"]), openai.BadRequestError, "stop"),
    (dict(max_tokens=0), openai.BadRequestError, "max_tokens"),
    (dict(logprobs="yes"), openai.BadRequestError, "logprobs"),
    (dict(presence_penalty=3), openai.BadRequestError, "presence_penalty"),
    (dict(extra_body={"recur": 0}), openai.BadRequestError, "recur"),
    (dict(extra_body={"beam_width": 4}), openai.BadRequestError, "beam_width"),
    (dict(messages=[{"role": "user", "content": "the loop " * 200}]), openai.BadRequestError, "messages"),
    (dict(model="gpt-4o"), openai.NotFoundError, "model"),
    (dict(messages=[{"role": "user", "content": "x" * 9000}]), openai.APIStatusError, "messages[0].content"),
]


def test_bad_requests_raise_the_clients_typed_errors(client):
    for kwargs, error, param in BAD:
        kwargs = {"model": MODEL, "messages": HELLO, **kwargs}
        with pytest.raises(error) as e:
            client.chat.completions.create(**kwargs)
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error", (kwargs, e.value.body)
        assert param.split("[")[0] in e.value.message
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=[{"role": "user", "content": "the loop " * 200}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=MODEL, input="hi")
    with pytest.raises(openai.APIStatusError) as e:
        client.get("/chat/completions", cast_to=object)
    assert e.value.status_code == 405 and e.value.code == "method_not_allowed"
    assert chat(client, max_tokens=2).choices[0].message.content is not None  # still serving


def test_api_key_failure_and_tool_calls(tokenizer, monkeypatch):
    worker = Worker(tool_model(tokenizer), tokenizer, "cpu")
    app = create_app([worker], dict(temperature=0.0, top_k=50, max_tokens=60, recur=2), api_key="s3cret",
                     model_name="tool")
    with in_process_server(app) as server:
        url = server + "/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        question = [{"role": "user", "content": "6 times 7?"}]
        reply = client.chat.completions.create(model="tool", messages=question).choices[0].message.content
        assert reply == "Let me compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\n So it is 42 码🤖"
        chunks = client.chat.completions.create(model="tool", messages=question, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
        cut = client.chat.completions.create(model="tool", messages=question, stop="```output").choices[0]
        assert cut.message.content == "Let me compute.\n```python\nprint(6 * 7)\n```\n" and cut.finish_reason == "stop"

        def boom(*a, **kw):
            raise RuntimeError("simulated device failure")
        monkeypatch.setattr(worker.model, "forward", boom)
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tool", messages=question)
        assert "simulated device failure" in e.value.message
        with pytest.raises(openai.APIError, match="simulated device failure"):
            list(client.chat.completions.create(model="tool", messages=question, stream=True))


def test_what_clients_send_by_default_is_accepted(client):
    """The fields langchain, litellm and the openai SDK send when they mean "none", and top_p."""
    neutral = dict(tools=[], tool_choice="none", top_logprobs=None, response_format={"type": "text"}, logit_bias={},
                   parallel_tool_calls=False, reasoning_effort=None, seed=-1, frequency_penalty=0)
    reply = chat(client, max_tokens=4, **{k: v for k, v in neutral.items() if k != "reasoning_effort"},
                 extra_body={"reasoning_effort": None})
    assert reply.choices[0].message.role == "assistant"
    nucleus = [chat(client, max_tokens=8, temperature=1.0, top_p=1e-6, seed=s).choices[0].message.content for s in (1, 2)]
    greedy = chat(client, max_tokens=8, temperature=0).choices[0].message.content
    assert nucleus == [greedy, greedy]  # a nucleus this small holds the most likely token only
    penalized = chat(client, max_tokens=8, temperature=0, presence_penalty=2, frequency_penalty=2)
    assert penalized.choices[0].message.role == "assistant"  # the penalties reach the sampler (tests/test_scheduler.py)


def test_message_shapes_of_rag_and_agent_front_ends(client):
    """Two user messages in a row, a system message after the first turn, and an assistant message
    passed back as message.model_dump() (its tool_calls, refusal and annotations null) are read."""
    first = chat(client, max_tokens=4, temperature=0)
    history = [{"role": "user", "content": "context: the loop"}, {"role": "user", "content": "hello there"},
               first.choices[0].message.model_dump(), {"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "and again?"}]
    reply = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4, temperature=0)
    assert reply.choices[0].message.role == "assistant" and reply.usage.prompt_tokens > first.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="messages\\[2\\]"):  # a real tool call is still refused
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=history[:2] + [
            {"role": "assistant", "content": "x", "tool_calls": [{"id": "1", "type": "function"}]}] + history[3:])


# /v1/completions: text in and out, and the scores lm-eval's local-completions reads

def test_completions_echo_logprobs_are_the_models_own(served, tokenizer):
    """echo + logprobs over a prompt of ids: every token's logprob and the top alternatives are the
    log-softmax of one forward of the saved model at the server's recur (what lm-eval sums for a
    loglikelihood), the first token has none, and the generated token comes last."""
    client, base_dir = served
    model, _ = build_model(os.path.join(base_dir, "chatsft_checkpoints", "tiny"))
    ids = tokenizer.encode("the loop runs again and again")
    res = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, echo=True, logprobs=2, temperature=0)
    lp = res.choices[0].logprobs
    assert res.object == "text_completion" and len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        want = F.log_softmax(model(torch.tensor([ids]), r=2)[0].float(), dim=-1)
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - want[i - 1, ids[i]].item()) < 1e-4, i
        assert abs(max(lp.top_logprobs[i].values()) - want[i - 1].max().item()) < 1e-4
    # temperature 0: the last token is the argmax after the prompt, and its logprob is the top one
    assert abs(lp.token_logprobs[-1] - want[-1].max().item()) < 1e-4
    assert res.choices[0].text.startswith(tokenizer.decode(ids)) and lp.text_offset[1] == len(lp.tokens[0])
    assert res.usage.prompt_tokens == len(ids)


def test_completions_text_prompts_batches_and_errors(client):
    res = client.completions.create(model=MODEL, prompt=["Once upon", "The loop"], max_tokens=4, n=2, temperature=1,
                                    seed=5)
    assert [c.index for c in res.choices] == [0, 1, 2, 3] and all(c.finish_reason in ("stop", "length")
                                                                   for c in res.choices)
    assert res.usage.completion_tokens == sum(len(c.depths) for c in res.choices)  # one depth per new token
    again = client.completions.create(model=MODEL, prompt=["Once upon", "The loop"], max_tokens=4, n=2, temperature=1,
                                      seed=5)
    assert [c.text for c in again.choices] == [c.text for c in res.choices]  # seeded
    scored = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=0, echo=True, logprobs=0)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "Once upon a time" and "".join(lp.tokens) == "Once upon a time"
    assert lp.token_logprobs[0] is not None  # a text prompt is read after <|bos|>, which is not shown
    assert all(t == {} for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    for bad, field in ((dict(max_tokens=0), "max_tokens"), (dict(logprobs=6), "logprobs"),
                       (dict(prompt=[[]]), "prompt[0]"), (dict(prompt=[10 ** 9]), "prompt[0]"),
                       (dict(best_of=3), "best_of"), (dict(stream=True), "stream"),
                       (dict(prompt="x " * 400, max_tokens=1), "prompt[0]")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**{"model": MODEL, "prompt": "Once upon", **bad})
        assert field in str(e.value), (bad, str(e.value))


def test_chat_logprobs_are_the_models_own_streamed_and_whole(served, tokenizer):
    """logprobs + top_logprobs on the chat route: each reply token's logprob is the log-softmax of
    one forward of the saved model over prompt + reply at the server's r (before temperature);
    greedy, the token is its position's top one; the stream carries the same entries."""
    client, base_dir = served
    model, _ = build_model(os.path.join(base_dir, "chatsft_checkpoints", "tiny"))
    reply = chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == len(reply.choices[0].depths) and all(len(e.top_logprobs) == 2 for e in entries)
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in entries) == reply.choices[0].message.content
    ids = tokenizer.render_for_completion({"messages": HELLO + [{"role": "assistant", "content": ""}]})
    new = [tokenizer.enc.encode_single_token(bytes(e.bytes)) for e in entries]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids + new[:-1]]), r=2)[0].float(), dim=-1)
    for k, e in enumerate(entries):
        want = logp[len(ids) - 1 + k]
        assert abs(e.logprob - want[new[k]].item()) < 1e-4 and abs(e.logprob - e.top_logprobs[0].logprob) < 1e-6
        assert abs(e.top_logprobs[1].logprob - want.topk(2).values[1].item()) < 1e-4
    streamed = [lp for chunk in chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True)
                for c in chunk.choices if c.logprobs for lp in c.logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in entries]
    assert chat(client, max_tokens=2).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        chat(client, max_tokens=2, top_logprobs=2)
