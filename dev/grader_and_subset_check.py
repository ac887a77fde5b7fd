"""
What the grader audit measured, without a model: how the graders score hand-made replies and how many
MMLU subjects a prefix of the test set covers. Run it from a checkout (any commit) to compare:

    PYTHONPATH=. python dev/grader_and_subset_check.py --chat-data ../shared/data/chat
"""

import argparse
import collections
import os

from tasks.gsm8k import GSM8K
from tasks.mmlu import MMLU
from tasks.spellingbee import SpellingBee

parser = argparse.ArgumentParser(description="Score hand-made replies with the task graders; MMLU subject coverage of prefixes")
parser.add_argument("--chat-data", type=str, default="../shared/data/chat", help="folder laid out like chat_data")
args = parser.parse_args()
data = lambda *p: os.path.join(args.chat_data, *p)

bee = SpellingBee(size=256, split="test", path=data("words", "words_alpha.txt"))
ones = sum(bee.evaluate(conv, "1") for conv in bee)
print(f"constant '1' answerer on SpellingBee test (256): {ones}/256 = {ones / 256:.3f}")
gsm = GSM8K("test", path=data("gsm8k", "test.jsonl"))
janet = next(conv for conv in gsm if conv["messages"][0]["content"].startswith("Janet’s ducks"))
print(f"GSM8K 'She makes 18 dollars.': {gsm.evaluate(janet, 'She makes 18 dollars.')} | '#### 18': {gsm.evaluate(janet, '#### 18')}")
mmlu = MMLU("test", path=data("mmlu", "test.jsonl"))
for n in (24, 200, 5200):
    subjects = collections.Counter(mmlu[i]["subject"] for i in range(n))
    print(f"MMLU test, first {n}: {len(subjects)} of 57 subjects (most: {subjects.most_common(1)[0]})")
