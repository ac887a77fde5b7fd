"""
Chasing variable assignments mod 10: a second easy-to-hard (depth) family beside pointer
chasing (tasks/pointer_chase.py), whose difficulty is again the number of sequential lookups at
a fixed length, but where every lookup also adds a digit, so the answer is a value computed
along the chain and not a name found at its end (in the spirit of the variable-binding and
program-evaluation tasks of Zaremba & Sutskever 2014, "Learning to Execute", and of the
"variable tracking" task of RULER, Hsieh et al. 2024, with every line the same length).

A problem is a program over the first N letters (a..z, then A..Z), one assignment per letter in
that order. Its dependency graph is the forest of pointer_chase.make_table (imported, not
copied: same roots, same chain, same rule that no root stands alone): a root is assigned a
digit, every other letter its parent plus a digit, all mod 10.

    a=c+3 b=0+7 c=b+1 d=a+9 ... x=b+2|c8 a1 d0      the program, "|", queries "<letter><value>"

Every line is "x=s+k", five characters: a root's source s is the constant 0 ("b=0+7": b is 7),
the others' is their parent. So the root is still marked by one token on its own line, as "bb"
marks one in pointer chase, the lines need no padding, and length never depends on the
structure. A query names a non-root letter; its value is the sum mod 10 of the digits on the
lines from the letter up to its root: the letter's own line, then `depth` lookups of the
variable a line names (the letter's depth in its tree, as in pointer chase), each adding that
line's digit. Past the root nothing changes (0 is a constant), so running more iterations than
a problem needs costs nothing.

The digits are uniform and independent, so the answer is uniform given every digit but one on
the chain: a guess that leaves any of them out is right 1 time in 10, whatever else it reads
(in pointer chase, the biggest tree gives the deep answers away; here no structural shortcut
exists). Two such guesses are printed beside depth_eval's table: the query's digit plus its
parent's digit (the parent read as if it were a root: a fixed two-line lookup, right at depth 1
only) and the root's digit (the pointers chased, the arithmetic skipped).

Tokens: byte level (scripts/tok_train.py --vocab-size 265), so every letter, digit, "=" and "+"
is one token and a letter on a right-hand side or in a query is the token of the key it names.
Every training document has 6N + 3 x queries - 1 tokens and every test prompt 6N + 1 (the
prompt stops after the queried letter, "...|q", and the model writes the digit), at every
depth. Training documents and test problems are drawn as in pointer chase: the first query's
depth uniform in 1..max_depth, a test problem one query at exactly `depth`, and no test program
in training or validation.
"""

from tasks.pointer_chase import SEP, ask, draw_splits, in_order, make_table, root_of

DIGITS = 10  # values and offsets are digits, arithmetic mod 10: the answer is one token


def make_program(rng, n_symbols, n_roots, depth, max_depth):
    """(parent, digit, query): the forest of pointer_chase.make_table (roots point to
    themselves), a uniform digit per letter, drawn in table order, and a letter at `depth`."""
    parent, query = make_table(rng, n_symbols, n_roots, depth, max_depth)
    digit = {x: rng.randrange(DIGITS) for x in in_order(parent)}
    return parent, digit, query


def value_of(parent, digit, x):
    """The answer: the digits from x up to its root, summed mod 10."""
    total = digit[x]
    while parent[x] != x:
        x = parent[x]
        total += digit[x]
    return total % DIGITS


def program_text(parent, digit):
    return " ".join(f"{x}={'0' if parent[x] == x else parent[x]}+{digit[x]}" for x in in_order(parent))


def parse_program(text):
    """Inverse of program_text: (parent, digit), roots pointing to themselves."""
    parent, digit = {}, {}
    for line in text.split(" "):
        x, source, k = line[0], line[2], line[4]
        parent[x], digit[x] = (x if source == "0" else source), int(k)
    return parent, digit


def program_task(make_program, program_text, value_of, roots_asked=False):
    """(train_document, eval_problem, make_splits) of a task whose problem is a program over
    letters and whose answer is a letter's value, one digit: this one and tasks/copy_chase.py.
    make_program(rng, n_symbols, n_roots, depth, max_depth) -> (parent, digit, query).
    roots_asked: training documents also ask about roots (depth 0), not only other letters."""

    def train_document(rng, n_symbols=24, n_roots=4, max_depth=4, queries=8):
        """The program and `queries` questions "<letter><value>", the first at a uniform depth in
        1..max_depth, the others at random letters (non-roots unless roots_asked; all of depth
        <= max_depth)."""
        parent, digit, first = make_program(rng, n_symbols, n_roots, rng.randint(1, max_depth), max_depth)
        asked = ask(rng, parent, first, queries, roots=roots_asked)
        return program_text(parent, digit) + SEP + " ".join(f"{x}{value_of(parent, digit, x)}" for x in asked)

    def eval_problem(rng, depth, n_symbols=24, n_roots=4, max_depth=4):
        """{"prompt", "answer", "depth", "program"}: one question at exactly `depth`. The prompt is
        the program, the separator and the queried letter; the completion is the value's digit."""
        parent, digit, x = make_program(rng, n_symbols, n_roots, depth, max_depth)
        program = program_text(parent, digit)
        return {"prompt": program + SEP + x, "answer": str(value_of(parent, digit, x)), "depth": depth,
                "program": program}

    def make_splits(seed, n_train, n_val, n_test, n_symbols=24, n_roots=4, max_depth=4, queries=8, test_depths=None):
        """(train, val, tests) as pointer_chase.make_splits draws them: no test program occurs in a
        training or validation document, nor twice in the tests."""
        kw = dict(n_symbols=n_symbols, n_roots=n_roots, max_depth=max_depth)
        return draw_splits(seed, n_train, n_val, n_test, lambda rng: train_document(rng, queries=queries, **kw),
                           lambda rng, depth: eval_problem(rng, depth, **kw), "program",
                           test_depths or (max_depth, 2 * max_depth, 4 * max_depth))

    return train_document, eval_problem, make_splits


train_document, eval_problem, make_splits = program_task(make_program, program_text, value_of)


def grade(problem, completion):
    """Exact match: the completion must start with the value's digit."""
    return completion[:1] == problem["answer"]


def chance(problem):
    """A uniform digit."""
    return 1 / DIGITS


def _query(problem):
    parent, digit = parse_program(problem["program"])
    return parent, digit, problem["prompt"][-1]


def parent_digit_guess(problem):
    """Accuracy of a shortcut: the query's digit plus its parent's digit, as if the parent were
    a root. Exact at depth 1; deeper, it leaves out the digits above the parent (right 1 in 10)."""
    parent, digit, x = _query(problem)
    return float(str((digit[x] + digit[parent[x]]) % DIGITS) == problem["answer"])


def root_digit_guess(problem):
    """Accuracy of a shortcut: the root's digit, offsets ignored (a model that chases the
    pointers as in pointer chase but never adds). Right when the chain's other digits sum to 0
    mod 10, 1 in 10 at every depth."""
    parent, digit, x = _query(problem)
    return float(str(digit[root_of(parent, x)]) == problem["answer"])


# What scripts/depth_eval.py prints beside its table (JSON key -> (column, expected accuracy of
# a problem)) and the fields a test problem of this task holds.
SHORTCUTS = {"parent_digit": ("own + parent digit", parent_digit_guess),
             "root_digit": ("root digit", root_digit_guess)}
PROBLEM_KEYS = ("prompt", "answer", "depth", "program")

