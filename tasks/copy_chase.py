"""
Chains of copies: a third easy-to-hard (depth) family beside pointer chasing
(tasks/pointer_chase.py) and assignments mod 10 (tasks/var_chase.py). A program binds every
variable either to a digit or to another variable, and a query asks for a variable's value:
the digit at the end of its chain of copies. This is the "variable tracking" task of RULER
(Hsieh et al. 2024) at a fixed length, and the binding half of the program-evaluation tasks of
Zaremba & Sutskever 2014, "Learning to Execute": each lookup is a copy, no arithmetic.

    ac b7 cb da ... xb|c7 a7 d7      the program, "|", queries "<letter><value>"

The dependency graph is pointer_chase.make_table's forest (imported, not copied): a root is
bound to a digit ("b7": b = 7), every other letter to its parent ("cb": c = b). Every line is
two characters, a key and its value side by side as in pointer chasing's table, so length never
depends on the structure. A query's value is its root's digit,
reached after exactly `depth` lookups of the variable a line names, then one read of the
root's digit; past the root nothing changes, so running more iterations than a problem needs
costs nothing.

Training documents ask about roots too (depth 0: the digit on the query's own line), not only
about other letters as the other two families do. That question is one lookup, the step that
pointer chasing's depth 1 is; without it even the shallowest question takes two (the query's
line names its parent, the parent's line holds the digit), and the first model trained that
way, the recipe's one-block model at 7e13 FLOPs, stayed at chance at every depth and r
(BENCHMARKS.md). Test problems still ask at depth >= 1.

Lines were first written "b=7" / "c=b". Two models trained on that format (with and without
root questions) did not learn even the one-lookup question; with "=" between a key and its value
the value is not the token after the key, the induction pattern pointer chasing's lookups are.

How it differs from pointer chasing, where the answer is the root's own letter: the answer
is a digit, a token no key ever is, read from the root's line, and a root is marked by a digit
on its right-hand side, not by pointing to itself. The digits are uniform and independent, so
two roots can share one. Beside depth_eval's table: chance (a uniform pick among the roots'
digits: a model that knows where values live but chases nothing) and the biggest-tree guess
(the digit of the biggest tree's root, the shortcut pointer chasing has too).

Tokens: byte level (scripts/tok_train.py --vocab-size 265), every letter and digit one token.
Every training document has 3N + 3 x queries - 1 tokens and every test prompt 3N + 1 at every
depth, as in pointer chasing. Training documents and test problems are drawn as in pointer chase: the first
query's depth uniform in 1..max_depth, a test problem one query at exactly `depth`, and no test
program in training or validation.
"""

import collections

from tasks.pointer_chase import in_order, make_table, root_of
from tasks.var_chase import grade, program_task  # noqa: F401 (grade is this task's too: depth_eval calls task.grade)

DIGITS = 10


def make_program(rng, n_symbols, n_roots, depth, max_depth):
    """(parent, digit, query): the forest of pointer_chase.make_table (roots point to
    themselves), a uniform digit per root, drawn in table order, and a letter at `depth`."""
    parent, query = make_table(rng, n_symbols, n_roots, depth, max_depth)
    digit = {x: rng.randrange(DIGITS) for x in in_order(parent) if parent[x] == x}
    return parent, digit, query


def value_of(parent, digit, x):
    """The answer: the digit bound to x's root."""
    return digit[root_of(parent, x)]


def program_text(parent, digit):
    return " ".join(f"{x}{digit[x] if parent[x] == x else parent[x]}" for x in in_order(parent))


def parse_program(text):
    """Inverse of program_text: (parent, digit), roots pointing to themselves."""
    parent, digit = {}, {}
    for line in text.split(" "):
        x, source = line[0], line[1]
        if source.isdigit():
            parent[x], digit[x] = x, int(source)
        else:
            parent[x] = source
    return parent, digit


train_document, eval_problem, make_splits = program_task(make_program, program_text, value_of, roots_asked=True)


def chance(problem):
    """Expected accuracy of a uniform pick among the roots' digits (a digit two roots share is
    picked twice as often)."""
    _, digit = parse_program(problem["program"])
    return sum(str(d) == problem["answer"] for d in digit.values()) / len(digit)


def biggest_tree_guess(problem):
    """Expected accuracy of a shortcut: the digit of the biggest tree's root (a uniform pick
    among ties). A deep question's chain makes its tree big; knowing every tree's size takes as
    many sequential lookups as the question itself (pointer_chase.biggest_tree_guess)."""
    parent, digit = parse_program(problem["program"])
    sizes = collections.Counter(root_of(parent, x) for x in parent)
    best = [r for r, n in sizes.items() if n == max(sizes.values())]
    return sum(str(digit[r]) == problem["answer"] for r in best) / len(best)


# What scripts/depth_eval.py prints beside its table (JSON key -> (column, expected accuracy of
# a problem)) and the fields a test problem of this task holds.
SHORTCUTS = {"biggest_tree": ("biggest-tree guess", biggest_tree_guess)}
PROBLEM_KEYS = ("prompt", "answer", "depth", "program")

