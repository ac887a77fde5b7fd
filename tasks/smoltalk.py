"""
SmolTalk: general chat conversations for SFT (no grader).

Online (the default, path=None): HuggingFaceTB/smol-smoltalk, ~460K train / ~24K test
conversations, downloaded as parquet to chat_data/smoltalk/ from
https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk/resolve/main/data/<file>.parquet
Offline: `path` names one local file of conversations holding both splits (jsonl of
{"messages": [...]} or bare message lists, or a parquet with a "messages" column), e.g. the
stand-in ../shared/data/chat/sft/sft_conversations.jsonl. It is split deterministically: every
TEST_EVERY-th row (index % 20 == 0, 5 %, spread over the whole file) is test, the rest train.
`exclude_sources` drops the rows of a local file whose "source" field is listed (after the
split, so a row's split never depends on the filter). The stand-in mixes in sources that must
not reach our SFT mixture as they are: "nanochat_identity" (it says it is nanochat d32, which
this model is not; our identity conversations come from dev/) and "gsm8k_train" (with its raw
<<...>> calculator annotations; GSM8K enters the mixture through tasks/gsm8k.py as tool calls).
"""

from tasks.common import Task, check_messages, read_records, resolve_data_file

HF_URL = "https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk/resolve/main/data/{name}"
HF_FILES = {"train": [f"train-{i:05d}-of-00004.parquet" for i in range(4)],
            "test": ["test-00000-of-00001.parquet"]}
TEST_EVERY = 20


class SmolTalk(Task):

    def __init__(self, split="train", path=None, exclude_sources=(), **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"SmolTalk split={split!r}: expected train or test")
        self.excluded = 0  # rows dropped by exclude_sources
        if path is None:
            import pyarrow as pa
            import pyarrow.parquet as pq
            files = [resolve_data_file(f"smoltalk/{name}", HF_URL.format(name=name)) for name in HF_FILES[split]]
            # kept as arrow (compact); a row becomes Python objects only when asked for
            self.conversations = pa.concat_tables([pq.read_table(f, columns=["messages"]) for f in files]).column("messages")
        else:
            rows = read_records(resolve_data_file(None, path=path))
            rows = [row for i, row in enumerate(rows) if (i % TEST_EVERY == 0) == (split == "test")]
            self.excluded = sum(isinstance(row, dict) and row.get("source") in exclude_sources for row in rows)
            self.conversations = [row["messages"] if isinstance(row, dict) else row for row in rows
                                  if not (isinstance(row, dict) and row.get("source") in exclude_sources)]

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
