"""
Pointer chasing to a fixed point: a reasoning task whose difficulty is the number of
sequential lookups while every problem has the same length, for easy-to-hard (depth)
extrapolation (Schwarzschild et al. 2021, "Can you learn an algorithm?").

A problem is a table over the first N letters of a..z then A..Z (N <= 52), one entry per
letter in that order, "xy" meaning x points to y. The pointers form a forest: R roots point
to themselves, every other letter points to its parent. A query names a letter; its answer is
the letter's root, reached after exactly `depth` lookups (the letter's depth in its tree).
Past the root the chase stays put, so a model that runs more iterations than a problem needs
loses nothing: no step counter has to be carried or extrapolated (a "k hops" prompt would
show the model numbers it never saw in training).

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

Surfaces: "packed" (above, for the byte-level tokenizer) or "spaced", for a model that also
reads text with a BPE vocabulary (a text + reasoning mixture): every letter is a word of its own
with a space before it, " a b b b c b | q b k b", so each " x" is one token of a vocabulary
trained on such documents (tests/test_pointer_chase.py checks it) and a query is again the token
of its key. The spaced prompt ends " | q" and the answer is " b", space included.

Up to 26 letters the tables are lowercase; past 26 the alphabet goes on with A..Z, so a table
of 52 letters holds a chain of 32 lookups beside 4 roots: 8x a training depth of 4 (Schwarzschild
et al. tested mazes and prefix sums far past the training size too). The lowercase tables, and
so every file written with N <= 26, are exactly those of the first, lowercase-only version.
"""

import collections
import random
import string

from nanochat.errors import UserError

SEP = "|"  # between the table and the queries
SURFACES = ("packed", "spaced")
# The letters in table order. Lowercase first, so a table of at most 26 letters is what it was
# before uppercase existed (same seed, same files); a byte-level token each, like the lowercase.
ALPHABET = string.ascii_lowercase + string.ascii_uppercase


def make_table(rng, n_symbols, n_roots, depth, max_depth):
    """(parent, query): parent maps each of the first n_symbols letters to its parent (roots to
    themselves); query is a letter at exactly `depth`. One chain of length `depth` hangs from a
    root; every other root first gets one child (a root alone in its tree would give its
    absence away: the answer would be "a root that has children", read off in one lookup), then
    every other letter hangs from a random letter of depth < max_depth in a uniformly chosen
    tree, so apart from the chain no letter is deeper than max_depth and no root is the answer
    by being the most popular."""
    # UserError (a ValueError): the sizes come from the generators' flags
    if n_symbols > len(ALPHABET):
        raise UserError(f"n_symbols={n_symbols}: a table has at most {len(ALPHABET)} letters (a..z, A..Z)")
    if n_roots < 1 or depth < 1 or 2 * n_roots - 1 + depth > n_symbols:
        raise UserError(f"n_symbols={n_symbols} cannot hold {n_roots} roots, one child for each but the "
                        f"chain's and a chain of depth {depth}")
    letters = list(ALPHABET[:n_symbols])
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


def in_order(letters):
    """The letters in table order (a..z then A..Z; sorted() would put A..Z first)."""
    return sorted(letters, key=ALPHABET.index)


def table_text(parent):
    return " ".join(x + parent[x] for x in in_order(parent))


def query_text(parent, x):
    return f"{x}{root_of(parent, x)}"


def spaced(text):
    """A packed table or queries as the spaced surface writes them: " " before every letter and
    before the separator ("ab bb|qb" -> " a b b b | q b")."""
    return "".join(" " + c for c in text if c != " ")


def train_document(rng, n_symbols=24, n_roots=4, max_depth=4, queries=8, surface="packed"):
    """Table and `queries` questions, the first at a uniform depth in 1..max_depth, the others
    at random non-root letters (all of depth <= max_depth)."""
    parent, first = make_table(rng, n_symbols, n_roots, rng.randint(1, max_depth), max_depth)
    doc = table_text(parent) + SEP + " ".join(query_text(parent, x) for x in ask(rng, parent, first, queries))
    return spaced(doc) if surface == "spaced" else doc


def ask(rng, parent, first, queries, roots=False):
    """The letters a training document asks about: `first`, then queries - 1 other non-roots
    (or other letters of any kind, roots too, with roots=True)."""
    others = [x for x in in_order(parent) if (roots or parent[x] != x) and x != first]
    if not 1 <= queries <= len(others) + 1:
        raise UserError(f"queries={queries}: a table of {len(parent)} letters has {len(others) + 1} non-roots to ask about")
    return [first] + rng.sample(others, queries - 1)


def eval_problem(rng, depth, n_symbols=24, n_roots=4, max_depth=4, surface="packed"):
    """{"prompt", "answer", "depth", "table"}: one question at exactly `depth`. The prompt is
    the table, the separator and the queried letter; the completion is the root letter. "table"
    is the packed table whatever the surface (the shortcuts and the dedup read it)."""
    parent, x = make_table(rng, n_symbols, n_roots, depth, max_depth)
    table, root = table_text(parent), root_of(parent, x)
    if surface == "spaced":
        return {"prompt": spaced(table + SEP + x), "answer": " " + root, "depth": depth, "table": table}
    return {"prompt": table + SEP + x, "answer": root, "depth": depth, "table": table}


def grade(problem, completion):
    """Exact match: the completion must start with the answer (the root letter; " b", its
    space included, on the spaced surface)."""
    return completion[:len(problem["answer"])] == problem["answer"]


def chance(problem):
    """Accuracy of a uniform guess among the roots (the entries "xx"): a model that knows what
    a root looks like but chases nothing."""
    return 1 / sum(e[0] == e[1] for e in problem["table"].split(" "))


def biggest_tree_guess(problem):
    """Expected accuracy of a shortcut, for comparison: answer the root of the biggest tree (a
    uniform pick among ties). A deep question's chain makes its tree big, so this guess gets
    deep test sets right; but knowing every tree's size means resolving every letter's root,
    which takes as many sequential lookups as the question itself."""
    parent = parse_table(problem["table"])
    sizes = collections.Counter(root_of(parent, x) for x in parent)
    best = [r for r, n in sizes.items() if n == max(sizes.values())]
    return (problem["answer"].strip() in best) / len(best)  # the spaced surface answers " b"


# What scripts/depth_eval.py prints beside its table: JSON key -> (column, expected accuracy of
# a problem), and the fields a test problem of this task holds (to refuse another task's files).
SHORTCUTS = {"biggest_tree": ("biggest-tree guess", biggest_tree_guess)}
PROBLEM_KEYS = ("prompt", "answer", "depth", "table")


def parse_table(text):
    """Inverse of table_text (for tests and the checks of the generator)."""
    return {entry[0]: entry[1] for entry in text.split(" ")}


def make_splits(seed, n_train, n_val, n_test, n_symbols=24, n_roots=4, max_depth=4, queries=8, test_depths=None,
                surface="packed"):
    """(train, val, tests): training and validation documents (depth <= max_depth) and, for
    each test depth (default max_depth, 2 max_depth, 4 max_depth), n_test problems. No test
    table occurs in a training or validation document, nor twice in the tests."""
    if surface not in SURFACES:
        raise UserError(f"surface={surface!r}: expected one of {', '.join(SURFACES)}")
    kw = dict(n_symbols=n_symbols, n_roots=n_roots, max_depth=max_depth, surface=surface)
    return draw_splits(seed, n_train, n_val, n_test, lambda rng: train_document(rng, queries=queries, **kw),
                       lambda rng, depth: eval_problem(rng, depth, **kw), "table",
                       test_depths or (max_depth, 2 * max_depth, 4 * max_depth))


def draw_splits(seed, n_train, n_val, n_test, document, problem, text_key, test_depths):
    """make_splits for any task of this shape (tasks/var_chase.py too): document(rng) is a
    training text "<problem text>|<queries>", problem(rng, depth) a test problem whose
    problem[text_key] is its problem text. One generator, seeded, draws train, val, then the
    tests depth by depth, skipping any problem text already drawn."""
    rng = random.Random(seed)
    train = [document(rng) for _ in range(n_train)]
    val = [document(rng) for _ in range(n_val)]
    def key(text):  # the problem text without spaces: the same for the packed and spaced surfaces
        return text.replace(" ", "")

    seen = {key(doc.split(SEP)[0]) for doc in train + val}
    tests = {}
    for depth in test_depths:
        problems = []
        while len(problems) < n_test:
            p = problem(rng, depth)
            if key(p[text_key]) not in seen:
                seen.add(key(p[text_key]))
                problems.append(p)
        tests[depth] = problems
    return train, val, tests
