"""
GSM8K: grade-school math word problems with worked solutions. Generative: the number after
the completion's "####" is compared with the reference's (extract_answer; no marker, wrong).

The reference solutions mark every calculation as <<expression=result>>, e.g.
"Natalia sold 48/2 = <<48/2=24>>24 clips in May." and end with "#### 72". Rendered as
assistant parts, each annotation becomes a python tool call (the expression) and its output
(the result), so SFT teaches the model to hand arithmetic to the tool:
    text "Natalia sold 48/2 = ", python "48/2", python_output "24", text "24 clips in May. ..."

Local file: chat_data/gsm8k/<split>.jsonl, rows {"question", "answer"}.
Online source (the original release, MIT):
https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/<split>.jsonl
"""

import re
from decimal import Decimal, InvalidOperation

from tasks.common import Task, read_records, resolve_data_file

GITHUB_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
ANSWER_RE = re.compile(r"####[ \t]*(-?\$?-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")  # "#### 1,234.5", "#### -$5"


def extract_answer(text):
    """The answer number of a solution as a canonical string ("1,234.50" -> "1234.5",
    "-$5" -> "-5", "7.0" -> "7"), or None. Only a number right after a "####" marker counts
    (the first marker that has one, as nanochat's grader): a reply without the marker has no
    answer, however many numbers it mentions. So "She makes 18 dollars." is wrong and
    "#### 18" right, and the RL reward (the same grader) pays only for the format SFT taught."""
    m = ANSWER_RE.search(text)
    if m is None:
        return None
    raw = m.group(1)
    negative = "-" in raw
    try:
        value = Decimal(raw.replace("-", "").replace("$", "").replace(",", ""))
    except InvalidOperation:
        return None
    value = -value if negative else value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def solution_parts(answer):
    """Assistant parts of a reference solution: text, then python + python_output for each
    <<expr=result>> annotation."""
    parts = []
    pieces = ANNOTATION_RE.split(answer)  # text, annotation, text, annotation, ..., text
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                parts.append({"type": "text", "text": piece})
        else:
            expr, _, result = piece.rpartition("=") if "=" in piece else (piece, "", "")
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
    return parts


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split="train", path=None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split={split!r}: expected train or test")
        path = resolve_data_file(f"gsm8k/{split}.jsonl", GITHUB_URL.format(split=split), path)
        self.rows = read_records(path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": solution_parts(row["answer"])}]}

    def evaluate(self, conversation, completion):
        reference = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
        predicted = extract_answer(completion)
        return predicted is not None and predicted == reference
