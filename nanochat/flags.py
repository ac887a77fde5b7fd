"""
Flags that hold several named values, so that knobs a run rarely turns do not each crowd
--help (nanochat's scripts carry about 30 flags; one per knob here would be twice that):

    --set FIELD=VALUE        any field of the recipe's specs without a flag of its own
                             (GPTConfig, RecurrenceSpec, OptimizerSpec), repeatable:
                             --set inject_init=sum --set value_embeds=0 --set bptt_k=-1
    --mixture PART=SIZE,...  named parts of a mixture (chat_sft)

Each default stays where it is defined (the dataclass field, the script's table); these
helpers only parse, convert by the default's type, and turn a bad name or value into one
line that names the flag and what it takes.
"""

import dataclasses

from nanochat.errors import UserError

SET_HELP = ("FIELD=VALUE: a recipe field without a flag of its own, repeatable "
            "(--set help lists them with their defaults)")


def parse_pairs(text, flag):
    """'a=1,b=2' (or ['a=1', 'b=2'] from a repeated flag) -> {'a': '1', 'b': '2'}, in order."""
    items = [item for part in ([text] if isinstance(text, str) else text) for item in part.split(",") if item.strip()]
    pairs = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[name.strip()] = value.strip()
    return pairs


def convert(value, default, what):
    """value (a string) as the type of default: bool takes 0/1/true/false."""
    kind = type(default)
    try:
        if kind is bool:
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return value.lower() in ("1", "true")
        return kind(value)
    except ValueError:
        raise UserError(f"{what}={value!r}: expected {kind.__name__} like {default!r}") from None


def settable(specs):
    """{field: (spec class, default)} of the fields --set may change. specs: {class: fields
    that have their own flag and so are not settable}."""
    fields = {}
    for cls, own_flags in specs.items():
        for f in dataclasses.fields(cls):
            if f.name not in own_flags:
                fields[f.name] = (cls, f.default)
    return fields


def set_overrides(values, specs, own_flags=None):
    """The --set values as {spec class: {field: value}} (every class of specs present, maybe
    empty). own_flags: {field: its own flag}, named in the error when such a field is --set;
    `--set help` ends the run with the list of settable fields and their defaults."""
    fields = settable(specs)
    if "help" in values:
        print("--set FIELD=VALUE takes (default, where it is defined):")
        for name, (cls, default) in fields.items():
            print(f"  {name}={default!r}  ({cls.__name__})")
        raise SystemExit(0)
    pairs = parse_pairs(values, "--set")
    out = {cls: {} for cls in specs}
    for name, value in pairs.items():
        if own_flags and name in own_flags:
            raise UserError(f"--set {name}: use {own_flags[name]} instead")
        if name not in fields:
            raise UserError(f"--set {name}: no such field; expected one of {', '.join(fields)} (--set help)")
        cls, default = fields[name]
        out[cls][name] = convert(value, default, f"--set {name}")
    return out
