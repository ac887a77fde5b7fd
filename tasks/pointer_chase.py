"""
Pointer chasing to a fixed point: a reasoning task whose difficulty is the number of
sequential lookups while every problem has the same length, for easy-to-hard (depth)
extrapolation (Schwarzschild et al. 2021, "Can you learn an algorithm?").

A problem is a table over the first N letters, one entry per letter in alphabetical order,
"xy" meaning x points to y. The pointers form a forest: R roots point to themselves, every
other letter points to its parent. A query names a letter; its answer is the letter's root,
reached after exactly `depth` lookups (the letter's depth in its tree). Past the root the
chase stays put, so a model that runs more iterations than a problem needs loses nothing:
no step counter has to be carried or extrapolated (a "k hops" prompt would show the model
numbers it never saw in training).

    ab bb cb da ... xb|qb kb md      the table, "|", queries "<letter><root>"

Difficulty never changes the length: the table always holds N entries and each problem has
the same number of queries. Training documents hold `queries` questions of depth 1..max_depth
(the first query's depth drawn uniformly, so every depth is trained). A test problem holds one
question, at depth d, in a table built the same way except for the one chain of length d that
the question walks; the eval prompt stops after the queried letter ("...|q") and the model
writes the root.

Tokens: byte level (scripts/tok_train.py --vocab-size 265: no merges), so every letter is one
token and the letter a query names is the same token as the key it must find. A lookup is then
the classic induction pattern: a previous-token head marks each value with its key, and the
query attends to the value whose key matches. (A first version made every entry "xy" one
token of a saturated BPE vocabulary; a looped model trained 1500 steps on it stayed at chance
even at depth 1, because each of the N^2 entry tokens has to learn its key on its own, while
the byte-level version solves depth 1 within 500 steps: BENCHMARKS.md.) Every training
document has 3N + 3 x queries - 1 tokens and every test prompt 3N + 1, at every depth.
"""

import collections
import random
import string

SEP = "|"  # between the table and the queries


def make_table(rng, n_symbols, n_roots, depth, max_depth):
    """(parent, query): parent maps each of the first n_symbols letters to its parent (roots to
    themselves); query is a letter at exactly `depth`. One chain of length `depth` hangs from a
    root; every other root first gets one child (a root alone in its tree would give its
    absence away: the answer would be "a root that has children", read off in one lookup), then
    every other letter hangs from a random letter of depth < max_depth in a uniformly chosen
    tree, so apart from the chain no letter is deeper than max_depth and no root is the answer
    by being the most popular."""
    if n_roots < 1 or depth < 1 or 2 * n_roots - 1 + depth > n_symbols or n_symbols > 26:
        raise ValueError(f"n_symbols={n_symbols} cannot hold {n_roots} roots, one child for each but the "
                         f"chain's and a chain of depth {depth}")
    letters = list(string.ascii_lowercase[:n_symbols])
    rng.shuffle(letters)
    roots, chain, rest = letters[:n_roots], letters[n_roots:n_roots + depth], letters[n_roots + depth:]
    parent = {x: x for x in roots}
    level = {x: 0 for x in roots}
    tree = {x: x for x in roots}
    prev = rng.choice(roots)
    lonely = [t for t in roots if t != prev]
    for x in chain:
        parent[x], level[x], tree[x], prev = prev, level[prev] + 1, tree[prev], x
    for i, x in enumerate(rest):  # a uniform tree, then a uniform host in it: no tree grows by popularity
        t = lonely[i] if i < len(lonely) else rng.choice(roots)
        y = rng.choice([y for y in parent if tree[y] == t and level[y] < max_depth])
        parent[x], level[x], tree[x] = y, level[y] + 1, t
    return parent, chain[-1]


def vocab_size(n_symbols):
    """Tokens of the byte-level tokenizer (256 bytes and 9 specials, no merges): every letter
    is its own token whatever the table size."""
    return 256 + 9


def root_of(parent, x):
    """The answer: follow pointers until a letter points to itself."""
    while parent[x] != x:
        x = parent[x]
    return x


def depth_of(parent, x):
    d = 0
    while parent[x] != x:
        x, d = parent[x], d + 1
    return d


def table_text(parent):
    return " ".join(x + parent[x] for x in sorted(parent))


def query_text(parent, x):
    return f"{x}{root_of(parent, x)}"


def train_document(rng, n_symbols=24, n_roots=4, max_depth=4, queries=8):
    """Table and `queries` questions, the first at a uniform depth in 1..max_depth, the others
    at random non-root letters (all of depth <= max_depth)."""
    parent, first = make_table(rng, n_symbols, n_roots, rng.randint(1, max_depth), max_depth)
    others = [x for x in sorted(parent) if parent[x] != x and x != first]
    asked = [first] + rng.sample(others, queries - 1)
    return table_text(parent) + SEP + " ".join(query_text(parent, x) for x in asked)


def eval_problem(rng, depth, n_symbols=24, n_roots=4, max_depth=4):
    """{"prompt", "answer", "depth", "table"}: one question at exactly `depth`. The prompt is
    the table, the separator and the queried letter; the completion is "=" + answer."""
    parent, x = make_table(rng, n_symbols, n_roots, depth, max_depth)
    table = table_text(parent)
    return {"prompt": table + SEP + x, "answer": root_of(parent, x), "depth": depth, "table": table}


def grade(problem, completion):
    """Exact match: the completion must start with the root letter."""
    return completion[:1] == problem["answer"]


def biggest_tree_guess(problem):
    """Expected accuracy of a shortcut, for comparison: answer the root of the biggest tree (a
    uniform pick among ties). A deep question's chain makes its tree big, so this guess gets
    deep test sets right; but knowing every tree's size means resolving every letter's root,
    which takes as many sequential lookups as the question itself."""
    parent = parse_table(problem["table"])
    sizes = collections.Counter(root_of(parent, x) for x in parent)
    best = [r for r, n in sizes.items() if n == max(sizes.values())]
    return (problem["answer"] in best) / len(best)


def parse_table(text):
    """Inverse of table_text (for tests and the checks of the generator)."""
    return {entry[0]: entry[1] for entry in text.split(" ")}


def make_splits(seed, n_train, n_val, n_test, n_symbols=24, n_roots=4, max_depth=4, queries=8, test_depths=None):
    """(train, val, tests): training and validation documents (depth <= max_depth) and, for
    each test depth (default max_depth, 2 max_depth, 4 max_depth), n_test problems. No test
    table occurs in a training or validation document, nor twice in the tests."""
    rng = random.Random(seed)
    kw = dict(n_symbols=n_symbols, n_roots=n_roots, max_depth=max_depth)
    train = [train_document(rng, queries=queries, **kw) for _ in range(n_train)]
    val = [train_document(rng, queries=queries, **kw) for _ in range(n_val)]
    seen = {doc.split(SEP)[0] for doc in train + val}
    tests = {}
    for depth in test_depths or (max_depth, 2 * max_depth, 4 * max_depth):
        problems = []
        while len(problems) < n_test:
            p = eval_problem(rng, depth, **kw)
            if p["table"] not in seen:
                seen.add(p["table"])
                problems.append(p)
        tests[depth] = problems
    return train, val, tests
