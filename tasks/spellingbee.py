"""
Spelling and letter counting, generated from a word list: the skills a BPE model lacks
because it sees tokens, not letters.

- SpellingBee: "How many r are in strawberry?" The reference answer spells the word, counts
  by hand position by position, checks with a python tool call ('strawberry'.count('r')) and
  ends with "#### 3". Graded like GSM8K: only the number after "####" counts.
- SimpleSpelling: "Spell strawberry" -> "strawberry: s-t-r-a-w-b-e-r-r-y", the condensed form of
  the hard part of SpellingBee.

Example i of a split is generated from a RNG seeded by (task, split, i): deterministic, and
train and test never share a seed. The word list is split too: a word is a test word iff
crc32(word) % 10 == 0, so test words are never trained on.
Words: chat_data/words/words_alpha.txt (one word a line, ~370K), online from
https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt (Unlicense).
"""

import functools
import random
import re
import string
import zlib

from tasks.common import Task, resolve_data_file
from tasks.gsm8k import extract_answer

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt"
TEST_WORD_EVERY = 10
SPELLED_RE = re.compile(r"\b[a-zA-Z](?:-[a-zA-Z])+\b")

COUNT_TEMPLATES = [
    "How many times does the letter {letter} appear in {word}?",
    "How many {letter}'s are in {word}?",
    "Count the {letter}s in {word}.",
    "In the word {word}, how many times does {letter} occur?",
    "How often does {letter} show up in {word}?",
    "What is the number of {letter} in {word}?",
    "Count how many {letter} letters the word {word} has.",
    "{word}: how many {letter}?",
    "Number of occurrences of {letter} in {word}?",
    "Tell me how many times {letter} is in {word}.",
    "How many {letter} does {word} contain?",
    "¿Cuántas veces aparece la letra {letter} en {word}?",
    "Combien de fois la lettre {letter} apparaît-elle dans {word} ?",
    "Wie oft kommt der Buchstabe {letter} in {word} vor?",
]
SPELL_TEMPLATES = [
    "Spell {word}.",
    "How do you spell {word}?",
    "Spell the word {word} letter by letter.",
    "Can you spell out {word}?",
    "Spell out {word} for me.",
    "What are the letters of {word}?",
]


@functools.lru_cache(maxsize=8)
def load_words(path, split):
    """Sorted words of the list (letters only, two or more) that belong to `split`."""
    with open(path, encoding="utf-8") as f:
        words = {line.strip().lower() for line in f}
    words = sorted(w for w in words if len(w) >= 2 and w.isascii() and w.isalpha())
    is_test = lambda w: zlib.crc32(w.encode()) % TEST_WORD_EVERY == 0
    return tuple(w for w in words if is_test(w) == (split == "test"))


def spell(word):
    return "-".join(word)


def _vary(template, rng, **fields):
    """A user message from a template: random quoting, sometimes lower case, sometimes no
    final punctuation (people type all kinds of ways)."""
    quotes = ["", "'", '"']
    text = template.format(**{k: f"{q}{v}{q}" for (k, v), q in zip(fields.items(), (rng.choice(quotes) for _ in fields))})
    if rng.random() < 0.3:
        text = text.lower()
    if rng.random() < 0.3:
        text = text.rstrip("?. ")
    return text


class _WordTask(Task):
    eval_type = "generative"

    def __init__(self, size=1000, split="train", path=None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"{type(self).__name__} split={split!r}: expected train or test")
        self.size, self.split = size, split
        self.words = load_words(resolve_data_file("words/words_alpha.txt", WORDS_URL, path), split)

    def num_examples(self):
        return self.size

    def _rng(self, index):
        return random.Random(f"{type(self).__name__}/{self.split}/{index}")  # str seeds are stable across runs


class SpellingBee(_WordTask):

    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)  # sometimes absent
        count = word.count(letter)
        user = _vary(rng.choice(COUNT_TEMPLATES), rng, letter=letter, word=word)
        lines, seen = [], 0
        for i, char in enumerate(word, 1):
            if char == letter:
                seen += 1
                lines.append(f"{i} {char} <- {seen}")
            else:
                lines.append(f"{i} {char}")
        by_hand = (f"Spelling out '{word}': {spell(word)}\n\nCounting the letter '{letter}' position by position:\n"
                   + "\n".join(lines) + f"\n\nBy hand I get {count}. Checking with Python:\n\n")
        parts = [{"type": "text", "text": by_hand},
                 {"type": "python", "text": f"'{word}'.count('{letter}')"},
                 {"type": "python_output", "text": str(count)},
                 {"type": "text", "text": f"\n\nBoth agree: the letter '{letter}' appears {count} "
                                          f"time{'' if count == 1 else 's'} in '{word}'.\n\n#### {count}"}]
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation, completion):
        reference = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
        predicted = extract_answer(completion)
        return predicted is not None and predicted == reference


class SimpleSpelling(_WordTask):

    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        user = _vary(rng.choice(SPELL_TEMPLATES), rng, word=word)
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": f"{word}: {spell(word)}"}]}

    def evaluate(self, conversation, completion):
        """Right when the last hyphen-spelled sequence of the completion spells the word."""
        word = conversation["messages"][-1]["content"].split(":")[0]
        spelled = SPELLED_RE.findall(completion)
        return bool(spelled) and spelled[-1].replace("-", "").lower() == word
