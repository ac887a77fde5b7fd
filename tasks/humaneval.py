"""
HumanEval: 164 Python functions to complete from a signature and docstring, graded by running
the dataset's unit tests on the completion in the sandbox (nanochat/execution.py): the tests run
in the sandbox's supervisor and call the completed function in a separate process, so nothing the
completion does (patching builtins, a tracer, exiting early, an answer equal to everything) can
change the verdict. Generative.

The user message is the prompt (imports, helper functions, the signature and docstring); the
reference answer is the prompt plus the canonical body. A completion may be a whole function
(in a ```python fence or not) or just the body that continues the prompt: either way the
program run is prompt + completion, so the prompt's imports and helpers are defined; the tests
run beside the prompt alone (its helpers, say encode_cyclic, are the dataset's, not the model's).

Local file: chat_data/humaneval/HumanEval.jsonl.gz, rows {"task_id", "prompt",
"canonical_solution", "test", "entry_point"}.
Online source (the original release, MIT):
https://raw.githubusercontent.com/openai/human-eval/master/data/HumanEval.jsonl.gz
"""

import re

from nanochat.execution import execute_code
from tasks.common import Task, read_records, resolve_data_file

GITHUB_URL = "https://raw.githubusercontent.com/openai/human-eval/master/data/HumanEval.jsonl.gz"
FENCE_RE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)  # an unclosed fence runs to the end


def extract_code(completion):
    """The first fenced code block of a completion, else the whole completion (indentation
    kept: a bare body must stay indented)."""
    m = FENCE_RE.search(completion)
    return (m.group(1) if m else completion).rstrip()


def build_program(conversation, completion):
    """(program, tests): the prompt with the completion, and the prompt with the dataset's tests
    and the call check(candidate) that grades it."""
    prompt, entry_point = conversation["messages"][0]["content"], conversation["entry_point"]
    code = extract_code(completion)
    if re.search(rf"^def {re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        program = prompt + "\n" + code  # redefines the prompt's stub (a def with only a docstring is valid)
    else:
        program = prompt + code         # a body continuing the prompt's signature
    # some tests also call the function by its name (HumanEval/33): that name is the candidate too
    return program + "\n", f"{prompt}\n\n{conversation['test']}\n\n{entry_point} = candidate\ncheck(candidate)\n"


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, path=None, timeout=5.0, max_memory_bytes=256 * 1024 ** 2, **kwargs):
        super().__init__(**kwargs)
        path = resolve_data_file("humaneval/HumanEval.jsonl.gz", GITHUB_URL, path)
        self.rows = read_records(path)
        self.timeout, self.max_memory_bytes = timeout, max_memory_bytes

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]}],
                "task_id": row["task_id"], "entry_point": row["entry_point"], "test": row["test"]}

    def evaluate(self, conversation, completion):
        program, tests = build_program(conversation, completion)
        result = execute_code(program, timeout=self.timeout, max_memory_bytes=self.max_memory_bytes, tests=tests,
                              entry_point=conversation["entry_point"])
        return result.success
