"""
The recipe is defined once: GPTConfig, RecurrenceSpec and OptimizerSpec hold base_train's
defaults, checkpoints carry them, and one function decides the r a model runs at.
"""

import argparse
import dataclasses
import os
import re
import runpy
import subprocess
import sys

import pytest

from nanochat.gpt import GPTConfig
from nanochat.optim import OptimizerSpec, optimizer_from_meta
from nanochat.recurrence import RecurrenceSpec, recurrence_from_meta, resolve_r

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Parsed(Exception):
    pass


def parsed_defaults(module, monkeypatch):
    """The namespace a script parses from no flags, without running the rest of it."""
    def stop(self, args=None, namespace=None):
        raise _Parsed(argparse.ArgumentParser.parse_known_args(self, [], namespace)[0])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [module])
    with pytest.raises(_Parsed) as caught:
        runpy.run_module(module, run_name="__main__")
    return caught.value.args[0]


def test_base_train_defaults_are_the_library_recipe(monkeypatch):
    args = parsed_defaults("scripts.base_train", monkeypatch)
    assert args.recur_mean == RecurrenceSpec().mean and args.set == []  # nothing --set: the specs as defined
    cfg = GPTConfig()  # the looped defaults of the dial are GPTConfig's own
    assert (cfg.n_prelude, cfg.n_recur, cfg.n_coda) == (2, 4, 2) and GPTConfig.from_size(2).value_embeds


def test_every_recipe_field_has_a_flag_or_set():
    """Each field of the three specs is reachable from base_train: a flag of its own, or --set
    (whose listing, `--set help`, needs no tokenizer or data)."""
    out = subprocess.run([sys.executable, "-m", "scripts.base_train", "--set", "help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = set(re.findall(r"^  (\w+)=", out.stdout, re.M))
    fields = {f.name for cls in (GPTConfig, RecurrenceSpec, OptimizerSpec) for f in dataclasses.fields(cls)}
    own = {"sequence_len", "vocab_size", "arch", "n_head", "n_prelude", "n_recur", "n_coda", "mean"}
    assert listed == fields - own and "inject_init='identity'  (GPTConfig)" in out.stdout


def test_resolve_r_in_one_place():
    assert resolve_r("looped") == RecurrenceSpec().eval_r("looped") == 4
    assert resolve_r("gpt") == 1 and resolve_r("gpt", requested=1) == 1
    with pytest.raises(ValueError, match="only r=1"):
        resolve_r("gpt", requested=4)
    assert resolve_r("looped", requested=7) == 7
    assert resolve_r("looped", {"recurrence": dataclasses.asdict(RecurrenceSpec(mean=6))}) == 6
    assert resolve_r("looped", {"recurrence": dataclasses.asdict(RecurrenceSpec(fixed=3))}, requested=-1) == 3
    assert resolve_r("looped", {"eval_r": 5}) == 5  # an exported folder, or a run saved before the spec
    assert resolve_r("looped", {"user_config": {"recur_mean": 8, "recur_fixed": -1}}) == 8  # an older run


def test_specs_from_older_checkpoints():
    """Runs saved before the specs were stored load with what they trained: their flags, else the defaults."""
    old = {"user_config": {"recur_mean": 6, "recur_max": 16, "bptt_k": 4, "matrix_lr": 0.03, "muon_beta2": 0.9}}
    assert recurrence_from_meta(old) == RecurrenceSpec(mean=6)
    assert optimizer_from_meta(old) == OptimizerSpec(matrix_lr=0.03)
    older = {"user_config": {"matrix_lr": 0.02}}  # before NorMuon: plain Muon
    assert optimizer_from_meta(older).muon_beta2 == 0.0
    assert recurrence_from_meta({}) == RecurrenceSpec() and optimizer_from_meta({}) == OptimizerSpec()


def test_set_changes_only_the_fields_it_names():
    """--set FIELD=VALUE, as base_train, chat_sft and chat_rl parse it: converted by the field's
    type, and one line for a bad name or value."""
    from nanochat.errors import UserError
    from nanochat.flags import set_overrides
    specs = {GPTConfig: ("n_head",), RecurrenceSpec: (), OptimizerSpec: ()}
    sets = set_overrides(["mean=3", "value_embeds=0,matrix_lr=0.03", "cautious_weight_decay=true"], specs)
    assert sets == {GPTConfig: {"value_embeds": False}, RecurrenceSpec: {"mean": 3.0},
                    OptimizerSpec: {"matrix_lr": 0.03, "cautious_weight_decay": True}}
    base = RecurrenceSpec(mean=6, max_r=12)
    assert dataclasses.replace(base, **sets[RecurrenceSpec]) == RecurrenceSpec(mean=3, max_r=12)
    for bad, message in ((["n_head=2"], "use --n-head"), (["nope=1"], "no such field"), (["bptt_k=two"], "expected int"),
                         (["value_embeds=maybe"], "expected bool"), (["mean"], "expected NAME=VALUE")):
        with pytest.raises(UserError, match=message):
            set_overrides(bad, specs, {"n_head": "--n-head"})
    spec = OptimizerSpec(matrix_lr=0.03, muon_beta2=0.9)
    assert spec.scaled(0.5).matrix_lr == 0.015 and spec.scaled(0.5).muon_beta2 == 0.9
    with pytest.raises(ValueError, match="bptt_k"):
        RecurrenceSpec(bptt_k=0)


def test_setup_optimizer_default_is_the_recipe():
    from tests.test_gpt import build, tiny
    opt = build(tiny(value_embeds=True)).setup_optimizer()
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert muon and all(g["beta2"] == 0.9 and g["cautious"] and g["weight_decay"] == 0.28 for g in muon)
