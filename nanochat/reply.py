"""
An assistant reply's token ids -> typed parts, streamed: what the CLI, the web page and the
OpenAI-compatible API show instead of the raw <|python_start|>... special tokens.

    decoder = ReplyDecoder(tokenizer)
    for token in reply:
        for kind, text, part in decoder.feed(token):   # kind: "text" | "python" | "python_output"
            ...                                         # part: its index in decoder.parts
    decoder.finish()                              # the rest of a cut-off character, if any
    decoder.parts  # [{"type": "text", "text": "6 times 7 is "}, {"type": "python", "text": "6*7"},
                   #  {"type": "python_output", "text": "42"}, ...]: render_conversation's schema

The part types are the tokenizer's (an assistant message's content parts), so a client can send a
reply back as conversation history and the model sees its tool call exactly as it was written.
Text is held back while it ends inside a multi-byte character; only the tokens not yet shown are
decoded at each step, so a reply costs O(length), not O(length^2).
"""

PART_TYPES = ("text", "python", "python_output")


class ReplyDecoder:
    def __init__(self, tokenizer):
        special = tokenizer.encode_special
        self.decode = tokenizer.decode
        self.opens = {special("<|python_start|>"): "python", special("<|output_start|>"): "python_output"}
        self.closes = {special("<|python_end|>"), special("<|output_end|>")}
        self.kind, self.pending, self.parts, self.new_part = "text", [], [], True

    def _emit(self, text):
        if not text:
            return []
        if self.new_part:
            self.parts.append({"type": self.kind, "text": ""})
            self.new_part = False
        self.parts[-1]["text"] += text
        return [(self.kind, text, len(self.parts) - 1)]

    def _flush(self, final):
        """Decode the held-back tokens; keep them while they end inside a character (unless final)."""
        if not self.pending:
            return []
        text = self.decode(self.pending)
        if text.endswith("\ufffd") and not final:
            return []
        self.pending = []
        return self._emit(text)

    def feed(self, token):
        """One reply token -> the (kind, text, part) pieces it completes (often one, sometimes none)."""
        if token in self.opens or token in self.closes:
            out = self._flush(final=True)
            self.kind = self.opens.get(token, "text")
            self.new_part = self.kind == "text"  # the text after a tool block is a new part
            if self.kind != "text":
                self.parts.append({"type": self.kind, "text": ""})  # an empty tool call is still a part
            return out
        self.pending.append(token)
        return self._flush(final=False)

    def finish(self):
        """The reply ended: whatever is still held back (a character cut off by max_tokens)."""
        return self._flush(final=True)


class TerminalReply:
    """Pieces -> what chat_cli prints: text as is, a tool call as a `[python]` block and its output
    as an `[output]` block, each on its own lines (and in colour on a terminal)."""
    LABELS = {"python": "[python] ", "python_output": "[output] "}
    COLORS = {"python": "\033[36m", "python_output": "\033[32m"}  # cyan code, green output
    RESET = "\033[0m"

    def __init__(self, color):
        self.color, self.kind, self.column0 = color, "text", False  # the reply starts after "Assistant: "

    def show(self, kind, text):
        out = ""
        if kind != self.kind:
            if self.kind != "text" and self.color:
                out += self.RESET
            out += "" if self.column0 else "\n"  # each block on its own lines
            if kind != "text":
                out += (self.COLORS[kind] if self.color else "") + self.LABELS[kind]
            self.kind = kind
        if kind != "text":
            text = text.replace("\n", "\n" + " " * len(self.LABELS[kind]))  # continuation lines line up
        out += text
        self.column0 = out.endswith("\n") if out else self.column0
        return out

    def end(self):
        """Close an open block (a reply cut off inside a tool call)."""
        return self.show("text", "") + ("\n" if not self.column0 else "")
