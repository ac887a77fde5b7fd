"""
Tasks: a dataset of conversations together with its grader, so that chat evaluation and RL
score a completion the same way.

A conversation is what `Tokenizer.render_conversation` takes: {"messages": [...]} where a
message is {"role": "user"|"assistant"|"system", "content": str or list of parts} and an
assistant part is {"type": "text"|"python"|"python_output", "text": str}. Tasks may add keys
a grader needs (categorical tasks: "letters", the answer letters whose logits an evaluator
compares; HumanEval: "entry_point", "test").

    task[i]                       -> conversation (the last message is the reference answer)
    len(task), iter(task)         -> over the examples in a seeded shuffled order (below)
    task.evaluate(conv, text)     -> bool, is the completion `text` right?
    task.reward(conv, text)       -> float, the RL reward (by default float(evaluate))
    task.eval_type                -> "categorical" | "generative" | None (no grader)

Order: a task yields its examples in one fixed shuffle of the underlying data (seed
SHUFFLE_SEED = 42, as nanochat shuffles every task), so any prefix is a representative subset:
`--max-problems 200` of MMLU covers most of its 57 subjects, not abstract_algebra and anatomy
(the test file is sorted by subject). seed=None keeps the stored order. A slice
Task(start, stop, step) applies to the shuffled order.

Data files are looked up locally first: an explicit `path`, else
$NANOCHAT_BASE_DIR/chat_data/<task>/<file> (the layout of ../shared/data/chat, so a copy or a
symlink of that folder works), else they are downloaded there from the public URL each task
names, when online.
"""

import gzip
import json
import os

import numpy as np

from nanochat.common import Progress, get_base_dir, mib

LETTERS = "ABCDEFGHIJ"
SHUFFLE_SEED = 42  # every task's example order (nanochat's)


class Task:
    """A list of conversations in a seeded shuffled order (seed=None: the stored order),
    optionally viewed through a slice: Task(start, stop, step) behaves like
    `shuffled_examples[start:stop:step]` (Python slicing rules, so stop past the end is
    clipped)."""

    eval_type = None  # "categorical" (compare the logits of conversation["letters"]) | "generative"

    def __init__(self, start=0, stop=None, step=1, seed=SHUFFLE_SEED):
        if step is not None and step < 1:
            raise ValueError(f"step={step}: expected a positive integer")
        self._slice, self.seed, self._order = slice(start, stop, step), seed, None

    def num_examples(self):
        """Size of the underlying dataset, before slicing."""
        raise NotImplementedError

    def get_example(self, index):
        """Conversation at `index` of the underlying dataset, before slicing."""
        raise NotImplementedError

    def _view(self):
        """Underlying indices of the examples, in task order."""
        n = self.num_examples()
        if self.seed is None:
            return range(n)[self._slice]
        if self._order is None or len(self._order) != n:  # built once: the data does not change
            self._order = np.random.default_rng(self.seed).permutation(n)
        return self._order[self._slice]

    def __len__(self):
        return len(self._view())

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise TypeError(f"task index must be an int, got {type(index).__name__}")
        return self.get_example(int(self._view()[index]))  # IndexError past the end

    def __iter__(self):
        for index in self._view():
            yield self.get_example(int(index))

    def evaluate(self, conversation, completion):
        raise NotImplementedError(f"{type(self).__name__} has no grader (eval_type={self.eval_type})")

    def reward(self, conversation, completion):
        return float(self.evaluate(conversation, completion))


class TaskMixture(Task):
    """All examples of all tasks in one deterministic shuffle (fixed seed), so every stretch of
    training sees every task. A task listed twice appears twice: two epochs of it."""

    def __init__(self, tasks, seed=SHUFFLE_SEED, **kwargs):
        super().__init__(seed=None, **kwargs)  # the shuffle is the mixture's own (across tasks)
        self.tasks = list(tasks)
        lengths = [len(task) for task in self.tasks]
        task_ids = np.repeat(np.arange(len(lengths)), lengths)
        local_ids = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0, dtype=np.int64)
        order = np.random.default_rng(seed).permutation(len(task_ids))
        self.task_ids, self.local_ids = task_ids[order], local_ids[order]

    def num_examples(self):
        return len(self.task_ids)

    def get_example(self, index):
        return self.tasks[int(self.task_ids[index])][int(self.local_ids[index])]


class TaskSequence(Task):
    """The tasks one after another, in the order given (a curriculum)."""

    def __init__(self, tasks, **kwargs):
        super().__init__(seed=None, **kwargs)
        self.tasks = list(tasks)
        self.offsets = np.cumsum([0] + [len(task) for task in self.tasks])

    def num_examples(self):
        return int(self.offsets[-1])

    def get_example(self, index):
        t = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.tasks[t][index - int(self.offsets[t])]


# -----------------------------------------------------------------------------
# multiple choice

def render_mc(question, choices):
    """The one multiple-choice prompt format of the chat tasks. Each letter starts a line, so
    it is the same token as the bare letter the assistant answers with."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{len(choices)} choices: expected 2 to {len(LETTERS)}")
    lines = [question.strip(), ""]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)]
    lines += ["", "Answer with the letter of the correct choice."]
    return "\n".join(lines)


def mc_conversation(question, choices, answer, **extra):
    """Conversation for a multiple-choice item: the prompt of `render_mc`, the answer letter of
    choice index `answer` as the assistant message, and "letters" for the evaluator."""
    letters = list(LETTERS[:len(choices)])
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} out of range for {len(choices)} choices")
    messages = [{"role": "user", "content": render_mc(question, choices)},
                {"role": "assistant", "content": letters[answer]}]
    return {"messages": messages, "letters": letters, **extra}


def evaluate_mc(conversation, completion):
    """Right when the completion's first non-space character is the answer letter (a trailing
    '.' or ')' is allowed, a word like 'Answer' is not)."""
    text = completion.strip().lstrip("(")
    return bool(text) and text[0] == conversation["messages"][-1]["content"] and \
        (len(text) == 1 or not text[1].isalpha())


# -----------------------------------------------------------------------------
# conversation checks

def check_messages(messages):
    """`messages` checked and tidied: an optional leading system message, then user and
    assistant turns alternating, user first, at least one assistant turn. A trailing user turn
    (nothing answers it) is dropped, so the last message is always the assistant's. Raises
    ValueError naming the offending turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("expected a non-empty list of messages")
    start = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for i, message in enumerate(messages[start:]):
        expected = "user" if i % 2 == 0 else "assistant"
        role = message.get("role") if isinstance(message, dict) else message
        if role != expected:
            raise ValueError(f"message {start + i} has role {role!r}, expected {expected!r} "
                             f"(user and assistant alternate, user first)")
        content = message.get("content")
        if not (isinstance(content, str) or (expected == "assistant" and isinstance(content, list) and
                                             all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content))):
            raise ValueError(f"message {start + i}: content must be a string (or, for the assistant, a list of parts)")
    if messages[-1]["role"] == "user":
        messages = messages[:-1]
    if len(messages) - start < 2:
        raise ValueError("the conversation has no assistant message")
    return messages


# -----------------------------------------------------------------------------
# data files

def chat_data_dir():
    return os.path.join(get_base_dir(), "chat_data")


def resolve_data_file(relpath, url=None, path=None):
    """Local path of a task's data file: `path` when given (it must exist), else
    $NANOCHAT_BASE_DIR/chat_data/<relpath>, downloaded there from `url` when it is missing.
    A .parquet URL saved to a .jsonl name is converted to one JSON object per row."""
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"data file {path} does not exist")
        return path
    dest = os.path.join(chat_data_dir(), relpath)
    if os.path.exists(dest):
        return dest
    hint = f"pass path= to the task, or put the file at {dest} (the folder is $NANOCHAT_BASE_DIR/chat_data)"
    if url is None:
        raise FileNotFoundError(f"no local data file {dest} and no public source to download it from: {hint}")
    try:
        download(url, dest)
    except (OSError, ValueError) as e:  # offline, HTTP error (requests' are OSErrors), bad parquet
        raise FileNotFoundError(f"no local data file {dest}, and downloading {url} failed ({type(e).__name__}: {e}): {hint}") from e
    return dest


def download(url, dest, timeout=60):
    """Fetch url to dest atomically (a temporary name, renamed once complete)."""
    import requests
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    try:
        with requests.get(url, stream=True, timeout=timeout) as resp:
            resp.raise_for_status()
            progress = Progress(int(resp.headers.get("content-length", 0)), f"  {os.path.basename(dest)}", every=5.0,
                                unit=mib)
            with open(tmp, "wb") as f:
                for chunk in resp.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
                    progress.update(len(chunk))
        if url.split("?")[0].endswith(".parquet") and dest.endswith(".jsonl"):
            rows = read_records(tmp, fmt="parquet")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"downloaded {url} -> {dest}")


def read_records(path, fmt=None):
    """Rows of a .jsonl (optionally .gz) or .parquet file as a list of dicts; a malformed
    line raises ValueError naming the file and line."""
    fmt = fmt or ("parquet" if path.endswith(".parquet") else "jsonl")
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return rows
