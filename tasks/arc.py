"""
ARC (AI2 Reasoning Challenge): grade-school science questions with 3 to 5 choices, in two
subsets, ARC-Easy and ARC-Challenge. Categorical: the answer is one letter.

Row format (HF allenai/ai2_arc): {"question", "choices": {"text": [...], "label": [...]},
"answerKey"}. Labels are letters or, for a few items, digits; both are read by position.
Local file: chat_data/arc/<subset>-<split>.jsonl (../shared/data/chat has the test splits).
Online source: https://huggingface.co/datasets/allenai/ai2_arc/resolve/main/<subset>/<split>-00000-of-00001.parquet
"""

from tasks.common import Task, evaluate_mc, mc_conversation, read_records, resolve_data_file

HF_URL = "https://huggingface.co/datasets/allenai/ai2_arc/resolve/main/{subset}/{split}-00000-of-00001.parquet"


class ARC(Task):
    eval_type = "categorical"

    def __init__(self, subset="ARC-Easy", split="test", path=None, **kwargs):
        super().__init__(**kwargs)
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise ValueError(f"ARC subset={subset!r}: expected 'ARC-Easy' or 'ARC-Challenge'")
        if split not in ("train", "validation", "test"):
            raise ValueError(f"ARC split={split!r}: expected train, validation or test")
        path = resolve_data_file(f"arc/{subset}-{split}.jsonl", HF_URL.format(subset=subset, split=split), path)
        self.rows = read_records(path)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        labels = list(row["choices"]["label"])
        return mc_conversation(row["question"], row["choices"]["text"], labels.index(row["answerKey"]))

    def evaluate(self, conversation, completion):
        return evaluate_mc(conversation, completion)
