"""
The model's python tool: the code between <|python_start|> and <|python_end|> runs in the
sandbox (nanochat/execution.py) as a Python prompt would run it, and what it prints comes back
as the tokens <|output_start|> ... <|output_end|> (forced into the reply by the decode loop,
nanochat/scheduler.py).
"""

import ast

TOOL_TIMEOUT = 5.0        # seconds of wall clock per python call
TOOL_MAX_OUTPUT = 2048    # characters of its stdout (or error) that are fed back


def as_repl(code):
    """Make code behave like a Python prompt: a trailing expression's value is printed.
    The training data's tool calls are bare expressions (GSM8K's `48/2`, SpellingBee's
    `'strawberry'.count('r')`) whose outputs were rendered as the value itself, with an
    integral float shown as an int ("24", not "24.0"), so the tool must answer the same way."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # the sandbox reports the error
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body.pop()
    return (ast.unparse(tree) + "\n__value = (" + ast.unparse(last.value) + ")\n"
            "if __value is not None:\n"
            "    print(int(__value) if isinstance(__value, float) and __value.is_integer() else __value)\n")


def run_python(code):
    """The default tool: run code in the sandbox as a Python prompt would; its stdout (or
    stdout and the error), without the final newline."""
    from nanochat.execution import execute_code
    result = execute_code(as_repl(code), timeout=TOOL_TIMEOUT, max_output_bytes=TOOL_MAX_OUTPUT)
    out = result.stdout if result.success else result.stdout + result.error
    return out.rstrip("\n")
