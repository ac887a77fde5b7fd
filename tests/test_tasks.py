"""Chat tasks against the shared data files (../shared/data/chat beside the repo): sizes,
hand-checked first rows, graders on right and wrong completions, mixtures, slicing, errors
for missing or malformed files, and rendering of every conversation."""

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.execution import sandbox_mode
from tasks.arc import ARC
from tasks.common import (Task, TaskMixture, TaskSequence, check_messages, evaluate_mc, mc_conversation,
                          render_mc, resolve_data_file)
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K, extract_answer, solution_parts
from tasks.humaneval import HumanEval, build_program, extract_code
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee, load_words
from tests.conftest import FakeResponse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "chat")
IDENTITY = os.path.join(ROOT, "dev", "identity_conversations.jsonl")
ORIGINAL_IDENTITY = os.path.join(SHARED, "sft", "original", "nanochat_identity_conversations.jsonl")
WORDS = os.path.join(SHARED, "words", "words_alpha.txt")


def shared(*parts):
    return os.path.join(SHARED, *parts)


@pytest.fixture(scope="module")
def tasks():
    """One instance of every task on the shared files (SpellingBee tasks: a few hundred examples)."""
    return {
        "arc_easy": ARC("ARC-Easy", "test", path=shared("arc", "ARC-Easy-test.jsonl")),
        "arc_challenge": ARC("ARC-Challenge", "test", path=shared("arc", "ARC-Challenge-test.jsonl")),
        "mmlu_test": MMLU("test", path=shared("mmlu", "test.jsonl")),
        "mmlu_dev": MMLU("dev", path=shared("mmlu", "dev.jsonl")),
        "gsm8k_train": GSM8K("train", path=shared("gsm8k", "train.jsonl")),
        "gsm8k_test": GSM8K("test", path=shared("gsm8k", "test.jsonl")),
        "humaneval": HumanEval(path=shared("humaneval", "HumanEval.jsonl.gz")),
        "smoltalk_train": SmolTalk("train", path=shared("sft", "sft_conversations.jsonl")),
        "smoltalk_test": SmolTalk("test", path=shared("sft", "sft_conversations.jsonl")),
        "identity_original": CustomJSON(ORIGINAL_IDENTITY),
        "identity": CustomJSON(IDENTITY),
        "spellingbee": SpellingBee(300, "train", path=WORDS),
        "simplespelling": SimpleSpelling(300, "train", path=WORDS),
    }


# -----------------------------------------------------------------------------
# sizes and hand-checked rows

def test_sizes(tasks):
    expected = {"arc_easy": 2376, "arc_challenge": 1172, "mmlu_test": 14042, "mmlu_dev": 285,
                "gsm8k_train": 7473, "gsm8k_test": 1319, "humaneval": 164, "smoltalk_test": 747,
                "smoltalk_train": 14928 - 747, "identity_original": 997, "spellingbee": 300, "simplespelling": 300}
    assert {name: len(tasks[name]) for name in expected} == expected
    assert len(tasks["identity"]) == 1000  # dev/make_identity_conversations.py


def test_arc_first_rows(tasks):
    conv = tasks["arc_easy"].get_example(0)  # the file's first row (task order is shuffled)
    assert conv["messages"][0] == {"role": "user", "content": (
        "Which statement best explains why photosynthesis is the foundation of most food webs?\n\n"
        "A. Sunlight is the source of energy for nearly all ecosystems.\n"
        "B. Most ecosystems are found on land instead of in water.\n"
        "C. Carbon dioxide is more available than other gases.\n"
        "D. The producers in all ecosystems are plants.\n\n"
        "Answer with the letter of the correct choice.")}
    assert conv["messages"][1] == {"role": "assistant", "content": "A"}
    assert conv["letters"] == ["A", "B", "C", "D"]
    conv = tasks["arc_challenge"].get_example(0)
    assert conv["messages"][0]["content"].startswith("An astronomer observes that a planet rotates faster")
    assert "\nC. Planetary days will become shorter.\n" in conv["messages"][0]["content"]
    assert conv["messages"][1]["content"] == "C"
    assert tasks["arc_easy"].eval_type == "categorical"


def test_mmlu_first_rows(tasks):
    conv = tasks["mmlu_test"].get_example(0)
    assert conv["messages"][0]["content"] == (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n\n"
        "A. 0\nB. 4\nC. 2\nD. 6\n\nAnswer with the letter of the correct choice.")
    assert conv["messages"][1]["content"] == "B"  # answer index 1
    assert conv["letters"] == ["A", "B", "C", "D"] and conv["subject"] == "abstract_algebra"
    conv = tasks["mmlu_dev"].get_example(0)
    assert conv["messages"][0]["content"].startswith("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n\nA. 0\n")
    assert conv["messages"][1]["content"] == "B"


def test_gsm8k_first_row_tool_calls(tasks):
    conv = tasks["gsm8k_train"].get_example(0)
    assert conv["messages"][0]["content"].startswith("Natalia sold clips to 48 of her friends in April")
    assert conv["messages"][1]["content"] == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nNatalia sold 48+24 = "},
        {"type": "python", "text": "48+24"},
        {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 clips altogether in April and May.\n#### 72"},
    ]
    # the parts put back together are the original solution
    parts = solution_parts("a <<2*3=6>>6 b <<10-4=6>>6\n#### 6")
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output", "text"]
    assert tasks["gsm8k_test"].get_example(0)["messages"][1]["content"][-1]["text"].endswith("#### 18")


def test_humaneval_first_row(tasks):
    conv = tasks["humaneval"].get_example(0)
    prompt = conv["messages"][0]["content"]
    assert prompt.startswith("from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:")
    assert conv["messages"][1]["content"].startswith(prompt) and "return False" in conv["messages"][1]["content"]
    assert conv["entry_point"] == "has_close_elements" and conv["task_id"] == "HumanEval/0"
    assert "def check(candidate):" in conv["test"]


def test_smoltalk_local_split(tasks):
    with open(shared("sft", "sft_conversations.jsonl")) as f:
        lines = [json.loads(line)["messages"] for line in f]
    assert tasks["smoltalk_test"].get_example(0)["messages"] == lines[0]
    assert tasks["smoltalk_test"].get_example(1)["messages"] == lines[20]
    assert tasks["smoltalk_train"].get_example(0)["messages"] == lines[1]
    assert tasks["smoltalk_train"].get_example(19)["messages"] == lines[21]
    assert tasks["smoltalk_train"].eval_type is None


def test_customjson_identity(tasks):
    conv = tasks["identity_original"].get_example(0)
    assert conv["messages"][0] == {"role": "user", "content": "hi! what's your story"}
    assert conv["messages"][1]["content"].startswith("Hello there! I am nanochat")
    # line 285 ends with an unanswered user message: dropped, so the assistant has the last word
    assert len(tasks["identity_original"].get_example(284)["messages"]) == 12
    for conv in tasks["identity"]:
        assert conv["messages"][-1]["role"] == "assistant"
    text = " ".join(m["content"] for conv in tasks["identity"] for m in conv["messages"])
    assert text.count("looped nanochat") >= 15


# -----------------------------------------------------------------------------
# graders

@pytest.mark.parametrize("text, expected", [
    ("#### 72", "72"),
    ("so the total is 1,234.\n#### 1,234", "1234"),
    ("#### $1,234.50", "1234.5"),
    ("#### -5", "-5"),
    ("#### -$5", "-5"),
    ("#### $-5", "-5"),
    ("#### 7.0", "7"),
    ("#### 0.25.", "0.25"),
    ("#### .5", "0.5"),
    ("#### -0", "0"),
    ("#### 1,000,000 dollars", "1000000"),
    ("first 3 then 4 #### 18 and then 99", "18"),          # the first number after the marker
    ("#### 5\n#### 6", "5"),                               # the first marker counts (nanochat)
    ("#### none\n#### 6", "6"),                            # the first marker followed by a number
    ("####18", "18"),
    # no number right after a marker: no answer (nanochat's strict grader)
    ("She makes 18 dollars.", None),
    ("She has 12 apples, so the answer is 15.", None),
    ("The answer is $2,500.", None),
    ("1", None),
    ("It dropped to -3.", None),
    ("no numbers here", None),
    ("#### none", None),
    ("#### the answer is 18", None),
    ("####\n18", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_categorical_graders(tasks):
    for name in ("arc_easy", "arc_challenge", "mmlu_test"):
        task = tasks[name]
        conv = task[0]
        right = conv["messages"][-1]["content"]
        wrong = next(letter for letter in conv["letters"] if letter != right)
        for completion in (right, f" {right}", f"{right}.", f"({right})", f"{right}) because"):
            assert task.evaluate(conv, completion) is True and task.reward(conv, completion) == 1.0, completion
        for completion in (wrong, right.lower(), "", f"Answer: {right}", f"{right}nd"):
            assert task.evaluate(conv, completion) is False and task.reward(conv, completion) == 0.0, completion


def test_mc_helpers():
    conv = mc_conversation("Pick two.", ["one", "two", "three"], 1, subject="numbers")
    assert conv["letters"] == ["A", "B", "C"] and conv["subject"] == "numbers"
    assert conv["messages"][0]["content"] == render_mc("Pick two.", ["one", "two", "three"])
    assert conv["messages"][0]["content"] == "Pick two.\n\nA. one\nB. two\nC. three\n\nAnswer with the letter of the correct choice."
    assert evaluate_mc(conv, "B") and not evaluate_mc(conv, "C")
    with pytest.raises(ValueError, match="answer index 3"):
        mc_conversation("q", ["a", "b", "c"], 3)
    with pytest.raises(ValueError, match="1 choices"):
        render_mc("q", ["only"])


def test_gsm8k_grader(tasks):
    task = tasks["gsm8k_train"]
    conv = task.get_example(0)  # answer 72
    assert task.evaluate(conv, "She sold 24 in May, so 48+24=72 in total.\n#### 72") is True
    assert task.reward(conv, "#### 72.00") == 1.0
    assert task.evaluate(conv, "The answer is 72.") is False  # no marker: no answer
    assert task.evaluate(conv, "#### 71") is False
    assert task.evaluate(conv, "72 clips ... #### 70") is False
    assert task.reward(conv, "I don't know") == 0.0
    # the reference solution is graded right, for every example
    for conv in task:
        reference = "".join(p["text"] for p in conv["messages"][1]["content"])
        assert task.evaluate(conv, reference), reference


def test_strict_graders_on_hand_made_replies(tasks):
    """The lenient cases the grader audit found now fail; nanochat's accepted forms pass."""
    gsm = tasks["gsm8k_test"]
    conv = gsm.get_example(0)  # Janet's ducks: 18 dollars
    assert not gsm.evaluate(conv, "She makes 18 dollars.") and gsm.reward(conv, "She makes 18 dollars.") == 0.0
    assert not gsm.evaluate(conv, "18")
    for reply in ("#### 18", "She makes 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18", "#### $18", "#### 18.00"):
        assert gsm.evaluate(conv, reply) and gsm.reward(conv, reply) == 1.0, reply
    # a constant "1" answerer: about half of SpellingBee's counts are 1, and none of it scores now
    bee = SpellingBee(size=256, split="test", path=WORDS)
    counts = [int(c["messages"][1]["content"][2]["text"]) for c in bee]
    assert counts.count(1) > 100
    assert sum(bee.evaluate(c, "1") for c in bee) == 0
    assert sum(bee.evaluate(c, "#### 1") for c in bee) == counts.count(1)


def test_humaneval_grader_in_sandbox(tasks):
    task = tasks["humaneval"]
    conv = task[0]
    prompt, reference = conv["messages"][0]["content"], conv["messages"][1]["content"]
    body = reference[len(prompt):]
    assert task.evaluate(conv, reference) is True                        # the whole function
    assert task.evaluate(conv, body) is True                             # just the body
    assert task.evaluate(conv, f"Here you go:\n```python\n{reference}\n```\nDone.") is True
    assert task.reward(conv, reference) == 1.0
    assert task.evaluate(conv, "    return False\n") is False            # wrong body
    assert task.evaluate(conv, "def has_close_elements(numbers, threshold):\n    return True\n") is False
    hurried = HumanEval(path=shared("humaneval", "HumanEval.jsonl.gz"), timeout=1.0)
    assert hurried.evaluate(conv, "```python\nwhile True:\n    pass\n```") is False  # hangs: killed at the timeout
    assert task.evaluate(conv, "this is not python") is False
    assert task.reward(conv, "    return None\n") == 0.0


def test_humaneval_program_building():
    assert extract_code("text\n```python\n    x = 1\n```\nmore ```python\ny\n```") == "    x = 1"
    assert extract_code("```py\ndef f():\n    return 1") == "def f():\n    return 1"  # unclosed fence
    assert extract_code("    return 1\n\n") == "    return 1"
    conv = {"messages": [{"role": "user", "content": "import math\n\ndef f(x):\n    \"\"\"doc\"\"\"\n"}],
            "entry_point": "f", "test": "def check(c):\n    assert c(4) == 2\n"}
    program, tests = build_program(conv, "def f(x):\n    return math.isqrt(x)")
    assert program.startswith("import math\n") and tests.startswith("import math\n")
    assert "check(candidate)" in tests and "return math.isqrt" not in tests  # the tests never hold the answer
    namespace = {}
    exec(program, namespace)  # the prompt's imports are in scope for a whole-function completion
    exec(tests, {"candidate": namespace["f"]})
    namespace = {}
    exec(build_program(conv, "    return math.isqrt(x)")[0], namespace)
    exec(tests, {"candidate": namespace["f"]})


@pytest.mark.skipif(sandbox_mode()[0] == "unavailable", reason=sandbox_mode()[1])
def test_every_humaneval_reference_passes_its_tests(tasks):
    """The grader runs the tests apart from the answer (the tests call it through a pipe, with plain
    data): every one of the 164 reference solutions still passes, and an empty body passes none."""
    task = tasks["humaneval"]
    failed = [c["task_id"] for c in task if not task.evaluate(c, c["messages"][1]["content"])]
    assert failed == []
    assert sum(task.evaluate(c, "    return None\n") for c in task) == 0


def test_spelling_graders_and_content(tasks):
    bee, simple = tasks["spellingbee"], tasks["simplespelling"]
    for conv in bee:
        user, parts = conv["messages"][0]["content"], conv["messages"][1]["content"]
        call, output = parts[1], parts[2]
        word, letter = call["text"].split("'")[1], call["text"].split("'")[3]
        assert word in user.lower() and letter in user.lower()
        assert call["type"] == "python" and output["type"] == "python_output"
        assert str(eval(call["text"])) == output["text"] == str(word.count(letter))  # noqa: S307 (our own expression)
        assert parts[0]["text"].startswith(f"Spelling out '{word}': {'-'.join(word)}")
        assert parts[-1]["text"].endswith(f"#### {word.count(letter)}")
        count = word.count(letter)
        assert bee.evaluate(conv, f"blah\n#### {count}") and bee.reward(conv, f"#### {count}") == 1.0
        assert not bee.evaluate(conv, f"It has {count}.") and bee.reward(conv, str(count)) == 0.0  # no marker
        assert not bee.evaluate(conv, f"#### {count + 1}") and bee.reward(conv, "no idea") == 0.0
    assert any(p["text"] == "0" for conv in bee for p in conv["messages"][1]["content"])  # absent letters occur
    for conv in simple:
        word = conv["messages"][0]["content"]
        answer = conv["messages"][1]["content"]
        target = answer.split(":")[0]
        assert answer == f"{target}: {'-'.join(target)}"
        assert simple.evaluate(conv, answer) and simple.evaluate(conv, f"Sure: {'-'.join(target.upper())}.")
        assert simple.reward(conv, answer) == 1.0
        assert not simple.evaluate(conv, f"{target}: {'-'.join(target[:-1])}") and not simple.evaluate(conv, target)
        assert target in word.lower()


def test_spelling_determinism_and_disjoint_splits():
    a, b = SpellingBee(50, "train", path=WORDS), SpellingBee(50, "train", path=WORDS)
    assert [a[i] for i in range(50)] == [b[i] for i in range(50)]
    test = SpellingBee(50, "test", path=WORDS)
    assert [a[i] for i in range(50)] != [test[i] for i in range(50)]
    train_words, test_words = set(load_words(WORDS, "train")), set(load_words(WORDS, "test"))
    assert not train_words & test_words and len(test_words) > 30000 and len(train_words) > 300000
    for i in range(50):
        assert test[i]["messages"][1]["content"][1]["text"].split("'")[1] in test_words
    # SimpleSpelling draws other words than SpellingBee for the same index
    simple = SimpleSpelling(50, "train", path=WORDS)
    assert sum(simple[i]["messages"][1]["content"].split(":")[0] == a[i]["messages"][1]["content"][1]["text"].split("'")[1]
               for i in range(50)) < 5


def test_no_grader_tasks(tasks):
    for name in ("smoltalk_train", "identity"):
        with pytest.raises(NotImplementedError, match="no grader"):
            tasks[name].evaluate(tasks[name][0], "anything")


# -----------------------------------------------------------------------------
# mixtures, sequences, slicing

class Numbers(Task):
    """A tiny in-memory task: example i says its name and index."""
    eval_type = "generative"

    def __init__(self, name, n, seed=None, **kwargs):  # stored order unless asked: the tests read indices
        super().__init__(seed=seed, **kwargs)
        self.name, self.n = name, n

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": self.name}, {"role": "assistant", "content": str(index)}]}


def key(conv):
    return conv["messages"][0]["content"], int(conv["messages"][1]["content"])


def test_mixture_deterministic_and_epochs():
    a, b = Numbers("a", 30), Numbers("b", 500)
    mix = TaskMixture([a, b, a])  # a twice: two epochs of a
    assert len(mix) == 560
    keys = [key(conv) for conv in mix]
    assert keys == [key(conv) for conv in TaskMixture([Numbers("a", 30), Numbers("b", 500), Numbers("a", 30)])]
    assert sorted(keys) == sorted([("a", i) for i in range(30)] * 2 + [("b", i) for i in range(500)])
    assert keys != [key(conv) for conv in TaskMixture([a, b, a], seed=1)]
    # shuffled across tasks: both halves of the mixture hold a fair share of "a"
    first_half = sum(name == "a" for name, _ in keys[:280])
    assert 15 <= first_half <= 45
    assert len(TaskMixture([])) == 0


def test_sequence_order_and_slicing():
    seq = TaskSequence([Numbers("a", 3), Numbers("b", 2), Numbers("c", 0), Numbers("d", 2)])
    assert [key(conv) for conv in seq] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("d", 0), ("d", 1)]
    assert key(seq[-1]) == ("d", 1)
    with pytest.raises(IndexError):
        seq[7]
    for seed in (None, 42):  # a slice applies to the task order, shuffled or not
        full = [key(conv) for conv in Numbers("n", 10, seed=seed)]
        assert sorted(full) == [("n", i) for i in range(10)] and (full == sorted(full)) == (seed is None)
        for start, stop, step in [(0, None, 1), (2, 7, 1), (1, None, 3), (5, 100, 2), (20, None, 1), (3, 3, 1)]:
            sliced = Numbers("n", 10, start=start, stop=stop, step=step, seed=seed)
            assert [key(conv) for conv in sliced] == full[start:stop:step]
            assert len(sliced) == len(full[start:stop:step])
            assert [key(sliced[i]) for i in range(len(sliced))] == full[start:stop:step]
    with pytest.raises(IndexError):
        Numbers("n", 10, start=8)[2]
    with pytest.raises(ValueError, match="step=0"):
        Numbers("n", 10, step=0)
    with pytest.raises(TypeError, match="int"):
        Numbers("n", 10)["0"]
    # slicing a real task and a mixture of slices
    mix = TaskMixture([Numbers("a", 10, stop=4), Numbers("b", 10, start=8)], start=1, step=2)
    assert len(mix) == 3 and {key(conv)[0] for conv in TaskMixture([Numbers("a", 10, stop=4), Numbers("b", 10, start=8)])} == {"a", "b"}


def test_shuffled_order_is_representative_and_fixed(tasks):
    mmlu = tasks["mmlu_test"]
    subjects = [conv["subject"] for conv in (mmlu[i] for i in range(200))]
    assert len(set(subjects)) >= 45  # of 57; the file order gives 2 (abstract_algebra, anatomy)
    in_file_order = MMLU("test", path=shared("mmlu", "test.jsonl"), seed=None)
    assert len({in_file_order[i]["subject"] for i in range(200)}) == 2
    again = MMLU("test", path=shared("mmlu", "test.jsonl"))
    assert [again[i] for i in range(50)] == [mmlu[i] for i in range(50)]  # the order is deterministic
    assert sorted(c["messages"][0]["content"] for c in again) == sorted(c["messages"][0]["content"] for c in in_file_order)
    # a prefix is the prefix of the shuffled order
    assert list(MMLU("test", path=shared("mmlu", "test.jsonl"), stop=24)) == [mmlu[i] for i in range(24)]
    assert MMLU("test", path=shared("mmlu", "test.jsonl"), seed=1)[0] != mmlu[0]
    # every other task is shuffled too
    for name in ("arc_easy", "gsm8k_test", "humaneval", "identity"):
        assert [tasks[name][i] for i in range(5)] != [tasks[name].get_example(i) for i in range(5)], name


def test_real_task_slicing(tasks):
    sliced = GSM8K("test", path=shared("gsm8k", "test.jsonl"), start=10, stop=20, step=5)
    assert len(sliced) == 2
    assert sliced[0] == tasks["gsm8k_test"][10] and sliced[1] == tasks["gsm8k_test"][15]
    mix = TaskMixture([tasks["mmlu_dev"], tasks["identity"], tasks["identity"]])
    assert len(mix) == 285 + 2 * len(tasks["identity"])


# -----------------------------------------------------------------------------
# missing and malformed files

def test_missing_explicit_path(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    for make in (lambda: ARC("ARC-Easy", path=missing), lambda: MMLU("test", path=missing),
                 lambda: GSM8K("test", path=missing), lambda: HumanEval(path=missing),
                 lambda: SmolTalk("train", path=missing), lambda: CustomJSON(missing),
                 lambda: SpellingBee(10, path=missing), lambda: SimpleSpelling(10, path=missing)):
        with pytest.raises(FileNotFoundError, match="nope.jsonl"):
            make()



def test_default_path_offline_error(tmp_path, monkeypatch):
    import requests
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    requested = []

    def offline(url, **kwargs):
        requested.append(url)
        raise requests.ConnectionError("no network")
    monkeypatch.setattr(requests, "get", offline)
    dest = os.path.join(str(tmp_path), "chat_data", "mmlu", "auxiliary_train.jsonl")
    with pytest.raises(FileNotFoundError, match="auxiliary_train.jsonl") as info:
        MMLU("auxiliary_train")
    assert dest in str(info.value) and "path=" in str(info.value) and "NANOCHAT_BASE_DIR" in str(info.value)
    assert requested == ["https://huggingface.co/datasets/cais/mmlu/resolve/main/all/auxiliary_train-00000-of-00001.parquet"]
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    with pytest.raises(FileNotFoundError, match="words_alpha.txt"):
        SpellingBee(10)
    with pytest.raises(FileNotFoundError, match="train-00000-of-00004.parquet"):
        SmolTalk("train")
    with pytest.raises(FileNotFoundError, match="no public source"):
        resolve_data_file("x/y.jsonl")


def test_default_path_download_and_local_copy(tmp_path, monkeypatch):
    """A parquet download is converted to the local jsonl layout; a local copy is used as is."""
    import requests
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    rows = [{"question": "2+2?", "subject": "", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "1+1?", "subject": "", "choices": ["2", "3", "4", "5"], "answer": 0}]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    monkeypatch.setattr(requests, "get", lambda url, **kwargs: FakeResponse(buf.getvalue()))
    task = MMLU("auxiliary_train")
    assert len(task) == 2 and task.get_example(0)["messages"][1]["content"] == "B"
    assert os.path.exists(os.path.join(str(tmp_path), "chat_data", "mmlu", "auxiliary_train.jsonl"))
    # now offline: the local copy is enough
    monkeypatch.setattr(requests, "get", lambda url, **kwargs: pytest.fail("downloaded again"))
    assert len(MMLU("auxiliary_train")) == 2
    os.makedirs(tmp_path / "chat_data" / "gsm8k")
    with open(tmp_path / "chat_data" / "gsm8k" / "test.jsonl", "w") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "<<1+1=2>>2\n#### 2"}) + "\n")
    assert GSM8K("test")[0]["messages"][1]["content"][0] == {"type": "python", "text": "1+1"}
    # SmolTalk's default: the Hub's parquet shards (train in 4), read lazily from arrow
    os.makedirs(tmp_path / "chat_data" / "smoltalk")
    for shard in range(4):
        convs = [[{"role": "user", "content": f"q{shard}.{i}"}, {"role": "assistant", "content": "a"}] for i in range(3)]
        pq.write_table(pa.table({"messages": convs, "source": ["x"] * 3}),
                       tmp_path / "chat_data" / "smoltalk" / f"train-{shard:05d}-of-00004.parquet")
    smol = SmolTalk("train")
    assert len(smol) == 12 and smol.get_example(4)["messages"][0] == {"role": "user", "content": "q1.1"}


def test_customjson_formats_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) + "\n\n" +
        json.dumps({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a"},
                                 {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]}) + "\n")
    task = CustomJSON(str(good))
    assert len(task) == 2 and task.get_example(1)["messages"][0]["role"] == "system"
    cases = {
        '[{"role": "assistant", "content": "x"}]': "role 'assistant', expected 'user'",
        '[{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]': "role 'user', expected 'assistant'",
        '[{"role": "user", "content": "x"}]': "no assistant message",
        '{"messages": []}': "non-empty list",
        '{"text": "x"}': "non-empty list",
        '[{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]': "content must be a string",
        '{"messages": [': "not valid JSON|Expecting",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps([{"role": "user", "content": "ok"}, {"role": "assistant", "content": "ok"}]) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:2: .*({message})"):
            CustomJSON(str(bad))


def test_check_messages_trims_unanswered_turn():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert check_messages(messages) == messages[:2]


def test_malformed_jsonl_names_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{broken\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: not valid JSON"):
        GSM8K("test", path=str(bad))


# -----------------------------------------------------------------------------
# rendering

def test_every_conversation_renders(tasks, tokenizer):
    for name, task in tasks.items():
        assert len(task) > 0, name
        for i, conv in enumerate(task):
            ids, mask = tokenizer.render_conversation(conv, max_tokens=10 ** 9)
            assert len(ids) == len(mask) and sum(mask) > 0, (name, i)
        prompt = tokenizer.render_for_completion(task[0])
        assert prompt[-1] == tokenizer.encode_special("<|assistant_start|>"), name
