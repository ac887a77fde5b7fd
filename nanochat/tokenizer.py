"""
Byte-level BPE tokenizer in the style of GPT-4.

Training uses rustbpe (Rust, parallel); encoding uses tiktoken built from the same merges
(fast, batched, multithreaded). Special tokens are appended after the merges, so ordinary
text can never produce them: they only enter a sequence through `encode_special`.

Conversations render to (ids, mask): mask = 1 on the tokens the model is trained to emit
(assistant text, its python tool calls, <|assistant_end|>), 0 on everything else (BOS, user
turns, <|assistant_start|>, and tool outputs, which come from the interpreter, not the model).
"""

import base64
import json
import os

import torch

from nanochat.errors import MissingInput, UserError

SPECIAL_TOKENS = [
    "<|bos|>",              # starts every document; the only separator between documents
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",    # the assistant calls the python tool
    "<|output_start|>", "<|output_end|>",    # the tool's output, forced into the stream
]

# The chat format, defined once: render_conversation follows it and chat_template() writes the
# same rules as the Jinja template of the Hugging Face export, so the two cannot drift apart.
BOS = "<|bos|>"
TURNS = {"user": ("<|user_start|>", "<|user_end|>"), "assistant": ("<|assistant_start|>", "<|assistant_end|>")}
# an assistant message's parts: (open, close, supervised). The model writes its text and tool
# calls; the interpreter writes the tool's output, so that carries no loss.
PARTS = {"text": ("", "", 1), "python": ("<|python_start|>", "<|python_end|>", 1),
         "python_output": ("<|output_start|>", "<|output_end|>", 0)}
SYSTEM_JOIN = "\n\n"  # a leading system message is folded into the first user message with this
MESSAGE_JOIN = "\n\n"  # and consecutive messages of one role (the OpenAI route, the exported template) with this
SYSTEM_ERROR = "a system message must be followed by a user message"
ROLES_ERROR = "roles must alternate user/assistant starting with user"

# GPT-4's split pattern, except numbers split into runs of at most 2 digits (instead of 3):
# with a 32K vocab we would rather not spend ~1000 tokens on all 3-digit numbers.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

TOKENIZER_FILE = "tokenizer.json"   # data only: loading it never runs code (unlike the old pickle)
OLD_TOKENIZER_FILE = "tokenizer.pkl"
TOKENIZER_FORMAT = "nanochat-bpe-1"
TOKEN_BYTES_FILE = "token_bytes.pt"


class Tokenizer:
    """A tiktoken Encoding plus the special tokens and chat rendering nanochat needs."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token("<|bos|>")

    # -------------------------------------------------------------------------
    # construction

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size):
        """Train BPE on an iterator of strings; vocab_size counts the special tokens too."""
        import rustbpe
        n_merges_and_bytes = vocab_size - len(SPECIAL_TOKENS)
        if n_merges_and_bytes < 256:
            raise ValueError(f"vocab_size={vocab_size}: must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + specials)")
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(text_iterator, n_merges_and_bytes, pattern=SPLIT_PATTERN)
        ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
        return cls._from_ranks(ranks)

    @classmethod
    def _from_ranks(cls, mergeable_ranks):
        import tiktoken
        offset = len(mergeable_ranks)
        specials = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="nanochat", pat_str=SPLIT_PATTERN,
                                mergeable_ranks=mergeable_ranks, special_tokens=specials)
        return cls(enc)

    def save(self, directory):
        """Write the merges (as JSON: the token bytes in rank order, base64) and the per-token
        byte lengths (for bits per byte)."""
        ranks = self.enc._mergeable_ranks
        assert sorted(ranks.values()) == list(range(len(ranks))), "mergeable ranks must be 0..n-1"
        tokens = [base64.b64encode(t).decode("ascii") for t in sorted(ranks, key=ranks.get)]
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, TOKENIZER_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"format": TOKENIZER_FORMAT, "pattern": SPLIT_PATTERN, "special_tokens": SPECIAL_TOKENS,
                       "mergeable_ranks": tokens}, f)
        os.replace(tmp, os.path.join(directory, TOKENIZER_FILE))  # atomic: never a half-written tokenizer
        torch.save(self.token_bytes(), os.path.join(directory, TOKEN_BYTES_FILE))

    @classmethod
    def load(cls, directory):
        path = os.path.join(directory, TOKENIZER_FILE)
        if not os.path.exists(path):
            if os.path.exists(os.path.join(directory, OLD_TOKENIZER_FILE)):
                raise UserError(f"{os.path.join(directory, OLD_TOKENIZER_FILE)} is a pickle, which we no longer load "
                                 f"(loading one can run code); convert it once with "
                                 f"`python -m nanochat.checkpoint_manager --convert {directory}`")
            raise MissingInput(f"no tokenizer at {path}: train one with `python -m scripts.tok_train`, or set "
                               f"NANOCHAT_BASE_DIR to the folder that holds tokenizer/")
        try:
            with open(path) as f:
                data = json.load(f)
            assert isinstance(data, dict) and data.get("format") == TOKENIZER_FORMAT, "not a nanochat tokenizer"
            tokens = data["mergeable_ranks"]
            assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens), "bad mergeable_ranks"
            ranks = {base64.b64decode(t, validate=True): i for i, t in enumerate(tokens)}
            assert len(ranks) == len(tokens), "duplicate tokens"
        except (ValueError, KeyError, AssertionError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not a valid tokenizer file: {e}; retrain it (python -m scripts.tok_train)") from None
        if data["pattern"] != SPLIT_PATTERN or data["special_tokens"] != SPECIAL_TOKENS:
            raise UserError(f"{path} was trained with another split pattern or special tokens; retrain it")
        return cls._from_ranks(ranks)

    # -------------------------------------------------------------------------
    # encoding

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode_special(self, name):
        return self.enc.encode_single_token(name)

    def encode(self, text, prepend=None, num_threads=8):
        """Encode a string (-> list[int]) or a list of strings (-> list[list[int]]).
        Special-token text in the input is encoded as ordinary text, never as a special token.
        prepend: a token id (e.g. BOS) put in front of each sequence."""
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        if isinstance(text, list):
            return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise ValueError(f"encode expects str or list[str], got {type(text).__name__}")

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_raw(self, token_id):
        """One token's bytes."""
        return self.enc.decode_single_token_bytes(token_id)

    def token_text(self, token_id):
        """One token as text: its UTF-8, or (a piece of a character) "bytes:" and its bytes escaped,
        as OpenAI names such tokens, so two tokens never share a name."""
        raw = self.enc.decode_single_token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def token_offsets(self, ids):
        """The character offset at which each token starts in decode(ids): characters are counted as
        the bytes that do not continue a UTF-8 sequence."""
        offsets, at = [], 0
        for t in ids:
            offsets.append(at)
            at += sum((b & 0xC0) != 0x80 for b in self.enc.decode_single_token_bytes(t))
        return offsets

    def token_bytes(self):
        """(vocab,) int32: UTF-8 byte length of each token; 0 for special tokens, so they
        are left out of bits-per-byte."""
        lengths = [0] * self.enc.n_vocab
        specials = set(self.enc.special_tokens_set)
        for i in range(self.enc.n_vocab):
            tok = self.enc.decode_single_token_bytes(i)
            lengths[i] = 0 if tok.decode("utf-8", errors="replace") in specials else len(tok)
        return torch.tensor(lengths, dtype=torch.int32)

    # -------------------------------------------------------------------------
    # chat

    def render_conversation(self, conversation, max_tokens=2048):
        """Render {"messages": [...]} to (ids, mask), both lists of ints, cropped to max_tokens.
        A message is {"role": "system"|"user"|"assistant", "content": str or list of parts};
        an assistant part is {"type": "text"|"python"|"python_output", "text": str}.
        A leading system message is folded into the first user message."""
        messages = _fold_system(conversation["messages"])
        ids, mask = [], []

        def add(tokens, m):
            tokens = [tokens] if isinstance(tokens, int) else tokens
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        add(self.bos_token_id, 0)
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(f"message {i} has role {role!r}; {ROLES_ERROR}")
            start, end = (self.encode_special(t) for t in TURNS[role])
            if role == "user":
                if not isinstance(content, str):
                    raise ValueError(f"message {i}: user content must be a string")
                add([start, *self.encode(content), end], 0)
                continue
            add(start, 0)
            for part in _parts(content, i):
                if part["type"] not in PARTS:
                    raise ValueError(f"message {i}: unknown part type {part['type']!r} ({', '.join(PARTS)})")
                open_, close, supervised = PARTS[part["type"]]
                add([self.encode_special(open_)] if open_ else [], supervised)
                add(self.encode(part["text"]), supervised)
                add([self.encode_special(close)] if close else [], supervised)
            add(end, 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation):
        """Ids of a conversation whose last (assistant) message is removed and replaced by
        <|assistant_start|>, so the model writes the reply (RL and generative evals)."""
        messages = list(conversation["messages"])
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("render_for_completion expects a conversation ending with an assistant message")
        ids, _ = self.render_conversation({"messages": messages[:-1]}, max_tokens=10**9)
        return ids + [self.encode_special(TURNS["assistant"][0])]


def _fold_system(messages):
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError(SYSTEM_ERROR)
        merged = {"role": "user", "content": messages[0]["content"] + SYSTEM_JOIN + messages[1]["content"]}
        return [merged] + list(messages[2:])
    return messages


def chat_template():
    """render_conversation as a Jinja chat template (transformers' apply_chat_template), written
    from the same TURNS, PARTS and system rule; tests/test_hf_export.py renders both ways."""
    user, assistant = TURNS["user"], TURNS["assistant"]
    parts = "".join(f"{{%- {'if' if i == 0 else 'elif'} part['type'] == '{kind}' -%}}{o}{{{{ part['text'] }}}}{c}"
                    for i, (kind, (o, c, _)) in enumerate(PARTS.items()))
    join, message_join = SYSTEM_JOIN.replace("\n", "\\n"), MESSAGE_JOIN.replace("\n", "\\n")
    # first the shapes the OpenAI route accepts, read as it reads them (nanochat/openai_api.py):
    # "developer" is "system", a system message after the first is the user's, text parts are
    # joined, a null assistant content is empty, and consecutive messages of one role are one
    # message (strings joined by a blank line, parts lists concatenated around a blank text part)
    normalize = (
        "{%- set ns = namespace(messages=[]) -%}"
        "{%- for m in messages -%}"
        "{%- set role = 'system' if m['role'] == 'developer' else m['role'] -%}"
        "{%- if role == 'system' and not loop.first -%}{%- set role = 'user' -%}{%- endif -%}"
        "{%- set content = m.get('content') -%}"  # transformers drops a null content's key
        "{%- set content = '' if content is none else content -%}"
        "{%- if role != 'assistant' and content is not string -%}"
        "{%- set content = content|map(attribute='text')|join('') -%}{%- endif -%}"
        "{%- if ns.messages and ns.messages[-1]['role'] == role and role != 'system' -%}"
        "{%- set last = ns.messages[-1]['content'] -%}"
        "{%- if last is string and content is string -%}"
        f"{{%- set joined = (last ~ '{message_join}' ~ content) if (last and content) else (last or content) -%}}"
        "{%- else -%}"
        "{%- set joined = ([{'type': 'text', 'text': last}] if last is string else last)"
        f" + [{{'type': 'text', 'text': '{message_join}'}}]"
        " + ([{'type': 'text', 'text': content}] if content is string else content) -%}"
        "{%- endif -%}"
        "{%- set ns.messages = ns.messages[:-1] + [{'role': role, 'content': joined}] -%}"
        "{%- else -%}{%- set ns.messages = ns.messages + [{'role': role, 'content': content}] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = ns.messages -%}"
    )
    return (
        normalize +
        "{%- set ns = namespace(messages=messages) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages|length < 2 or messages[1]['role'] != 'user' -%}"
        f"{{{{- raise_exception('{SYSTEM_ERROR}') -}}}}{{%- endif -%}}"
        f"{{%- set ns.messages = [{{'role': 'user', 'content': messages[0]['content'] + '{join}' + messages[1]['content']}}]"
        " + messages[2:] -%}"
        "{%- endif -%}"
        f"{BOS}"
        "{%- for m in ns.messages -%}"
        "{%- if m['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}"
        f"{{{{- raise_exception('{ROLES_ERROR}') -}}}}{{%- endif -%}}"
        f"{{%- if m['role'] == 'user' -%}}{user[0]}{{{{ m['content'] }}}}{user[1]}"
        f"{{%- else -%}}{assistant[0]}"
        "{%- if m['content'] is string -%}{{ m['content'] }}"
        "{%- else -%}{%- for part in m['content'] -%}"
        f"{parts}"
        "{%- else -%}{{- raise_exception('unknown part type ' + part['type']) -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        f"{assistant[1]}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{assistant[0]}{{%- endif -%}}"
    )


def _parts(content, i):
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise ValueError(f"message {i}: content must be a string or a list of parts")


def get_tokenizer(directory=None):
    """The tokenizer under $NANOCHAT_BASE_DIR/tokenizer (or `directory`)."""
    from nanochat.common import get_base_dir
    return Tokenizer.load(directory or os.path.join(get_base_dir(), "tokenizer"))


def get_token_bytes(directory=None, device="cpu"):
    from nanochat.common import get_base_dir
    path = os.path.join(directory or os.path.join(get_base_dir(), "tokenizer"), TOKEN_BYTES_FILE)
    if not os.path.exists(path):
        raise MissingInput(f"no {TOKEN_BYTES_FILE} at {path}: train the tokenizer first (python -m scripts.tok_train)")
    from nanochat.checkpoint_manager import load_tensors
    return load_tensors(path, device, "tokenizer file", "retrain the tokenizer (python -m scripts.tok_train)")


def convert_pickled_tokenizer(directory):
    """Rewrite an old tokenizer.pkl as tokenizer.json. The pickle is read by an unpickler that
    refuses every global (class or function), so only plain dicts, bytes, ints and strings can
    come out of it: a crafted file is refused, never run."""
    import pickle

    class DataOnly(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refused: it references {module}.{name}, a tokenizer holds only data")

    path = os.path.join(directory, OLD_TOKENIZER_FILE)
    try:
        with open(path, "rb") as f:
            data = DataOnly(f).load()
        ranks, pattern = data["mergeable_ranks"], data["pattern"]
        assert all(isinstance(k, bytes) and isinstance(v, int) for k, v in ranks.items()), "bad mergeable_ranks"
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, AssertionError) as e:
        raise ValueError(f"{path}: {e}") from None
    if pattern != SPLIT_PATTERN:
        raise ValueError(f"{path} was trained with another split pattern; retrain it")
    Tokenizer._from_ranks(ranks).save(directory)
    return os.path.join(directory, TOKENIZER_FILE)
