"""
SmolTalk: general chat conversations for SFT (no grader).

Online (the default, path=None): HuggingFaceTB/smol-smoltalk, ~460K train / ~24K test
conversations, downloaded as parquet to chat_data/smoltalk/ from
https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk/resolve/main/data/<file>.parquet
Offline: `path` names one local file of conversations holding both splits (jsonl of
{"messages": [...]} or bare message lists, or a parquet with a "messages" column), e.g. the
stand-in ../shared/data/chat/sft/sft_conversations.jsonl. It is split deterministically: every
TEST_EVERY-th row (index % 20 == 0, 5 %, spread over the whole file) is test, the rest train.
"""

from tasks.common import Task, check_messages, read_records, resolve_data_file

HF_URL = "https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk/resolve/main/data/{name}"
HF_FILES = {"train": [f"train-{i:05d}-of-00004.parquet" for i in range(4)],
            "test": ["test-00000-of-00001.parquet"]}
TEST_EVERY = 20


class SmolTalk(Task):

    def __init__(self, split="train", path=None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"SmolTalk split={split!r}: expected train or test")
        if path is None:
            import pyarrow as pa
            import pyarrow.parquet as pq
            files = [resolve_data_file(f"smoltalk/{name}", HF_URL.format(name=name)) for name in HF_FILES[split]]
            # kept as arrow (compact); a row becomes Python objects only when asked for
            self.conversations = pa.concat_tables([pq.read_table(f, columns=["messages"]) for f in files]).column("messages")
        else:
            rows = read_records(resolve_data_file(None, path=path))
            self.conversations = [row["messages"] if isinstance(row, dict) else row
                                  for i, row in enumerate(rows) if (i % TEST_EVERY == 0) == (split == "test")]

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        messages = self.conversations[index]
        messages = messages if isinstance(messages, list) else messages.as_py()
        try:
            messages = check_messages(messages)
        except ValueError as e:
            raise ValueError(f"SmolTalk row {index}: {e}") from e
        return {"messages": messages}
