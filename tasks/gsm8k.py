"""
GSM8K: grade-school math word problems with worked solutions. Generative: the completion's
final number is compared with the reference's.

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
NUMBER_RE = re.compile(r"-?\$?-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def extract_answer(text):
    """The answer number of a solution as a canonical string ("1,234.50" -> "1234.5",
    "-$5" -> "-5", "7.0" -> "7"), or None. The first number after the last "####" when there is
    one, else the last number in the text."""
    head, marker, tail = text.rpartition("####")
    segment = tail if marker else text
    matches = list(NUMBER_RE.finditer(segment))
    if not matches:
        return None
    m = matches[0] if marker else matches[-1]
    raw = m.group()
    if raw.startswith("-") and m.start() > 0 and segment[m.start() - 1].isalnum():
        raw = raw[1:]  # "3-4" is a range or a subtraction, not a negative number
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
