"""
CustomJSON: conversations from a local jsonl file (no grader), e.g. the identity
conversations that tell the model who it is (dev/identity_conversations.jsonl).

Each non-empty line is either {"messages": [...]} or a bare list of messages (the format of
nanochat's identity_conversations.jsonl). Every line is checked when the task is built, and an
error names the file and line. A trailing user message with no answer is dropped.
"""

import json
import os

from tasks.common import Task, check_messages


class CustomJSON(Task):

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        if not os.path.exists(path):
            raise FileNotFoundError(f"conversations file {path} does not exist")
        self.conversations = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    messages = row.get("messages") if isinstance(row, dict) else row
                    self.conversations.append(check_messages(messages))
                except ValueError as e:  # JSONDecodeError is one too
                    raise ValueError(f"{path}:{lineno}: {e}") from e

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return {"messages": self.conversations[index]}
