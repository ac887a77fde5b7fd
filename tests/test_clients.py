"""The clients people already use, against a live chat_web (a tiny random checkpoint): LangChain's
ChatOpenAI and LiteLLM, each with one streamed and one whole call, top_p, a RAG-style history (a
system message, two user turns in a row, a reply, a question), and a client's own tools, which the
server refuses by name. (The official openai client: tests/test_openai_api.py.)"""

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before the import: LiteLLM reads its bundled map, no network
langchain_openai = pytest.importorskip("langchain_openai", reason="needs the [dev] extra: pip install -e '.[dev]'")
litellm = pytest.importorskip("litellm", reason="needs the [dev] extra: pip install -e '.[dev]'")

from tests.test_openai_api import MODEL  # noqa: E402
from tests.test_web import chat_web_server, save_tiny_checkpoint  # noqa: E402

HISTORY = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
           {"role": "user", "content": "again"}, {"role": "assistant", "content": "hello"},
           {"role": "user", "content": "why?"}]


@pytest.fixture(scope="module")
def url(tokenizer, tmp_path_factory):
    base_dir = save_tiny_checkpoint(tokenizer, tmp_path_factory.mktemp("clients"))
    with chat_web_server(base_dir, "--max-new-tokens", "8", "--recur", "2") as url:
        yield url + "/v1"


def test_langchain_chat_openai(url):
    import openai
    llm = langchain_openai.ChatOpenAI(base_url=url, api_key="none", model=MODEL, top_p=0.95, temperature=0,
                                      max_tokens=6, max_retries=0)
    whole = llm.invoke(HISTORY)
    assert isinstance(whole.content, str) and whole.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(chunk.content for chunk in llm.stream(HISTORY)) == whole.content  # greedy: the same reply

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with pytest.raises(openai.BadRequestError, match="tools"):
        llm.bind_tools([weather]).invoke(HISTORY)


def test_litellm_chat_and_text_completion(url):
    kw = dict(model=f"openai/{MODEL}", api_base=url, api_key="none", messages=HISTORY, top_p=0.9, temperature=0,
              max_tokens=6)
    whole = litellm.completion(**kw)
    text = whole.choices[0].message.content
    depths = whole.choices[0].provider_specific_fields["depths"]  # where LiteLLM keeps our extension field
    assert len(depths) == whole.usage.completion_tokens and set(depths) == {2}
    assert "".join(c.choices[0].delta.content or "" for c in litellm.completion(**kw, stream=True)) == text
    done = litellm.text_completion(model=f"openai/{MODEL}", api_base=url, api_key="none", prompt="Once upon",
                                   max_tokens=4, temperature=0)
    assert isinstance(done.choices[0].text, str)
    with pytest.raises(litellm.BadRequestError, match="tools"):
        litellm.completion(**kw, tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}])
