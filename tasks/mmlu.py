"""
MMLU: 4-choice questions over 57 subjects. Categorical: the answer is one letter.

Row format (HF cais/mmlu): {"subject", "question", "choices": [4 strings], "answer": 0-3}.
Splits: dev (5 per subject, 285), validation, test (14042) and auxiliary_train (~100K
questions from other multiple-choice sets, the SFT mixture's MMLU share).
Local file: chat_data/mmlu/<split>.jsonl (../shared/data/chat has dev and test only;
auxiliary_train needs a download).
Online source: https://huggingface.co/datasets/cais/mmlu/resolve/main/all/<split>-00000-of-00001.parquet
"""

from tasks.common import Task, evaluate_mc, mc_conversation, read_records, resolve_data_file

HF_URL = "https://huggingface.co/datasets/cais/mmlu/resolve/main/all/{split}-00000-of-00001.parquet"
SPLITS = ("auxiliary_train", "dev", "validation", "test")


class MMLU(Task):
    eval_type = "categorical"

    def __init__(self, split="test", path=None, **kwargs):
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise ValueError(f"MMLU split={split!r}: expected one of {SPLITS}")
        path = resolve_data_file(f"mmlu/{split}.jsonl", HF_URL.format(split=split), path)
        # some exports of auxiliary_train nest each row under a "train" key
        self.rows = [row.get("train", row) for row in read_records(path)]

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        # the subject stays out of the prompt: auxiliary_train (what SFT sees) has none
        return mc_conversation(row["question"], row["choices"], row["answer"], subject=row.get("subject", ""))

    def evaluate(self, conversation, completion):
        return evaluate_mc(conversation, completion)
