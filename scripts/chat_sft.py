"""
Supervised fine-tuning: a base checkpoint trained on a mixture of conversations, one epoch,
loss on the assistant's tokens only.

    python -m scripts.chat_sft --model-tag s20
    torchrun --nproc_per_node=8 -m scripts.chat_sft --model-tag s20
    python -m scripts.chat_sft --model-tag s2 --mixture smoltalk=2000 --num-iterations 20   # a toy run

The mixture (nanochat's, MIXTURE below; --mixture changes a part's size or passes, sizes
are clipped to what the data holds, and the table of what was used is printed): SmolTalk
460K, MMLU auxiliary_train 100K, GSM8K train x2, the identity conversations x2
(dev/identity_conversations.jsonl: 1000, written by dev/make_identity_conversations.py; plus
--local-data identity=PATH), SimpleSpelling 200K, SpellingBee 80K, shuffled together with a
fixed seed. Offline: SmolTalk falls back to the local stand-in
$NANOCHAT_BASE_DIR/chat_data/sft/sft_conversations.jsonl without its sources
"nanochat_identity" and "gsm8k_train" (see tasks/smoltalk.py), and MMLU to its dev split
(the test split stays held out for chat_eval); both are announced.

Rows: best-fit + pad packing of the rendered conversations into rows of T+1 tokens, targets
-1 on everything but the assistant's tokens (nanochat/sft_data.py). The loss of a step is the
sum over its supervised tokens on every rank divided by their number, so a step weighs each
token alike however the rows fall. r: the base run's sampler seeded by the step (or its
fixed r), truncated BPTT as the base run did; --set changes any of it (--set mean=6). The
optimizer resumes the base run's state (momentum, Adam moments) when its shards fit this
run, else starts fresh.
LR: constant, then a linear decay that reaches 0 on the last step, over the last
--warmdown-ratio of the steps. The number of steps is counted before training (a first
packing pass over each rank's share, min over ranks), so the schedule ends where the epoch
does. Quick chat evals (every --chat-eval-every steps and at the end): the first
--chat-eval-problems of each of the six chat tasks (their seeded shuffled order), and
ChatCORE over them when all six are here.
"""

import argparse
import dataclasses
import math
import os
import time

import torch
import torch.distributed as dist

from nanochat import errors, flags, flash_attention
from nanochat.checkpoint_manager import (build_model, find_checkpoint_dir, last_step, load_file, load_meta,
                                         save_checkpoint)
from nanochat.common import (COMPUTE_DTYPE, compute_cleanup, compute_init, format_duration, get_base_dir, print0,
                             synchronize)
from nanochat.engine import Engine
from nanochat.loss_eval import evaluate_bpb
from nanochat.optim import OptimizerSpec
from nanochat.recurrence import RecurrenceSpec
from nanochat.report import get_report
from nanochat.sft_data import SFTPacker
from nanochat.task_eval import BASELINES, chatcore, evaluate_categorical, evaluate_generative
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.training import (LossLog, apply_schedule, check_resume, init_wandb, later_stage_specs, lr_multiplier,
                               maybe_compile, stream_seed)
from tasks.arc import ARC
from tasks.common import TaskMixture, TaskSequence, chat_data_dir
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTITY = os.path.join(REPO, "dev", "identity_conversations.jsonl")
STAND_IN = ("sft", "sft_conversations.jsonl")  # under chat_data: the offline SmolTalk stand-in
# rows of a local SmolTalk file (the stand-in) that duplicate parts the mixture adds itself
EXCLUDE_SOURCES = ("nanochat_identity", "gsm8k_train")
MIXTURE = {"smoltalk": (460_000, 1), "mmlu": (100_000, 1), "gsm8k": (-1, 2), "identity": (-1, 2),
           "simple_spelling": (200_000, 1), "spelling_bee": (80_000, 1)}  # part: (size, passes), nanochat's
LOCAL_DATA = ("smoltalk", "mmlu", "identity")

parser = argparse.ArgumentParser(description="Supervised fine-tuning of a base checkpoint on the chat mixture")
# model in
parser.add_argument("--model-tag", type=str, default="", help="base checkpoint folder, also the SFT one (empty = the base saved last)")
parser.add_argument("--step", type=int, default=-1, help="base checkpoint step (-1 = the latest)")
# mixture: nanochat's parts and sizes (MIXTURE), changed per part
parser.add_argument("--mixture", type=str, default="", metavar="PART=SIZE[xPASSES],...",
                    help="sizes (-1 = all, 0 = leave out; clipped to what exists) and passes of the parts, e.g. "
                         "smoltalk=2000,gsm8k=-1x1; parts and defaults: " + ", ".join(f"{k}={n}x{e}" for k, (n, e) in MIXTURE.items()))
parser.add_argument("--local-data", type=str, default="", metavar="PART=PATH,...",
                    help="local files for smoltalk (conversations jsonl), mmlu (MMLU-format jsonl, instead of "
                         "auxiliary_train) and identity (more conversations, besides dev/identity_conversations.jsonl)")
# batch and horizon
parser.add_argument("--max-seq-len", type=int, default=-1, help="row length T (-1 = the base model's context)")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per micro-step per rank")
parser.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1 = 524288, or one micro-step of every rank if that is more)")
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = one epoch of the mixture)")
parser.add_argument("--buffer-size", type=int, default=100, help="conversations the best-fit packer chooses from")
# optimizer
parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the base run's recurrence or optimizer spec, repeatable (e.g. --set mean=6 --set "
                         "matrix_lr=0.01; weight_decay is 0 unless set; --set help lists them)")
parser.add_argument("--init-lr-frac", type=float, default=1.0, help="every lr times this")
parser.add_argument("--warmdown-ratio", type=float, default=0.2, help="fraction of the steps of linear lr decay, reaching 0 on the last step")
parser.add_argument("--load-optimizer", type=int, default=1, choices=[0, 1], help="start from the base run's optimizer state when it fits")
# evaluation, checkpoints
parser.add_argument("--eval-every", type=int, default=150, help="val bpb every N steps (-1 = only at the end)")
parser.add_argument("--eval-tokens", type=int, default=10 * 524288, help="validation tokens per evaluation")
parser.add_argument("--chat-eval-every", type=int, default=300, help="quick chat evals and ChatCORE every N steps and at the end (-1 = off)")
parser.add_argument("--chat-eval-problems", type=int, default=24, help="problems per task in the quick chat evals")
parser.add_argument("--chat-eval-max-tokens", type=int, default=256, help="most reply tokens in the quick generative evals")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
parser.add_argument("--resume", action="store_true", help="continue from the latest SFT checkpoint of --model-tag")
parser.add_argument("--run", type=str, default="", help="wandb run name (empty = no wandb)")
# machine
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
parser.add_argument("--compile", type=int, default=-1, choices=[-1, 0, 1], help="torch.compile the blocks (-1 = on CUDA only)")
parser.add_argument("--seed", type=int, default=42, help="seed of the mixture shuffle, recurrence draws and state noise")
args = parser.parse_args()
sets = flags.set_overrides(args.set, {RecurrenceSpec: (), OptimizerSpec: ()})


def mixture_plan():
    """{part: (size, passes)}: MIXTURE with --mixture's changes."""
    plan = dict(MIXTURE)
    for part, value in flags.parse_pairs(args.mixture, "--mixture").items():
        size, _, passes = value.partition("x")
        try:
            plan[part] = (int(size), int(passes or 1))
        except ValueError:
            raise errors.UserError(f"--mixture {part}={value}: expected SIZE or SIZExPASSES, e.g. 2000 or -1x2") from None
        if part not in MIXTURE or plan[part][1] < 0:
            raise errors.UserError(f"--mixture {part}={value}: expected one of {', '.join(MIXTURE)} with passes >= 0")
    return plan


PLAN = mixture_plan()
LOCAL = flags.parse_pairs(args.local_data, "--local-data")
if set(LOCAL) - set(LOCAL_DATA):
    raise errors.UserError(f"--local-data {', '.join(sorted(set(LOCAL) - set(LOCAL_DATA)))}: expected parts among "
                           f"{', '.join(LOCAL_DATA)}")

is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None, seed=args.seed)
master = rank == 0
print0(f"args: {vars(args)}")
flash_attention.announce()

# -----------------------------------------------------------------------------
# model, from the base checkpoint (or the SFT one on --resume)

base_dir = find_checkpoint_dir("base", args.model_tag or None)
model_tag = os.path.basename(base_dir)
base_step, base_meta = load_meta(base_dir, None if args.step < 0 else args.step)
model, _ = build_model(base_dir, base_step, device)
model.train()
config = model.config
tokenizer = get_tokenizer()
if tokenizer.get_vocab_size() != config.vocab_size:
    raise errors.UserError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model {config.vocab_size}: "
                           f"{base_dir} was trained with another tokenizer")
token_bytes = get_token_bytes(device=device)
print0(f"base model: {base_dir} step {base_step}: {config}")

recurrence, optim_spec = later_stage_specs(base_meta, sets)  # the checkpoint's, --set over them
bptt_k = recurrence.truncation
eval_r = recurrence.eval_r(config.arch)
print0(f"recurrence: {recurrence} (the base run's{', with --set' if sets[RecurrenceSpec] else ''}), eval r {eval_r}")
T = args.max_seq_len if args.max_seq_len > 0 else config.sequence_len
rows_per_micro = args.device_batch_size * T * world_size
total_batch = args.total_batch_size if args.total_batch_size > 0 else max(524288 // rows_per_micro, 1) * rows_per_micro
if total_batch % rows_per_micro:
    raise errors.UserError(f"--total-batch-size {total_batch} must be a multiple of device_batch_size x T x world "
                           f"= {args.device_batch_size} x {T} x {world_size} = {rows_per_micro}")
grad_accum = total_batch // rows_per_micro
print0(f"batch: {total_batch:,} tokens/step = {args.device_batch_size} rows x {T} x {world_size} ranks x {grad_accum} accum")

# -----------------------------------------------------------------------------
# the mixture: its parts, then one shuffle of them all


def smoltalk(split):
    """(task, source): --local-data smoltalk=..., else HF smol-smoltalk, else the stand-in when offline."""
    exclude = EXCLUDE_SOURCES
    if "smoltalk" in LOCAL:
        task, source = SmolTalk(split, path=LOCAL["smoltalk"], exclude_sources=exclude), LOCAL["smoltalk"]
    else:
        try:
            task, source = SmolTalk(split), "HuggingFaceTB/smol-smoltalk"
        except FileNotFoundError as e:
            path = os.path.join(chat_data_dir(), *STAND_IN)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{e}; no local stand-in at {path} either (or pass --local-data smoltalk=PATH)") from e
            print0(f"note: SmolTalk {split} is not available offline: using the local stand-in {path}")
            task, source = SmolTalk(split, path=path, exclude_sources=exclude), path
    if task.excluded:
        source += f" without sources {'/'.join(exclude)} ({task.excluded:,} rows dropped)"
    return task, source


def mmlu_train():
    """(task, source): --local-data mmlu=..., else auxiliary_train (local or downloaded), else the dev split."""
    if "mmlu" in LOCAL:
        return MMLU("auxiliary_train", path=LOCAL["mmlu"]), LOCAL["mmlu"]
    try:
        return MMLU("auxiliary_train"), "cais/mmlu auxiliary_train"
    except FileNotFoundError:
        print0("note: MMLU auxiliary_train is not available offline: using the MMLU dev split instead "
               "(test stays held out for chat_eval)")
        return MMLU("dev"), "cais/mmlu dev (auxiliary_train unavailable)"


def first(name, task, asked):
    """The first `asked` examples of task (-1 = all), clipped to what exists (announced)."""
    if 0 <= len(task) < asked:
        print0(f"note: {name}: {asked:,} asked, only {len(task):,} exist: using {len(task):,}")
    return task if asked < 0 or asked >= len(task) else TaskSequence([task], stop=asked)


def build_mixture():
    """[(name, task, passes, source, available)] of the mixture PLAN: task is the part used,
    `available` how many examples the source holds. A size or passes of 0 leaves a part out."""
    parts = []
    wanted = {part: (size, passes) for part, (size, passes) in PLAN.items() if size != 0 and passes > 0}
    if "smoltalk" in wanted:
        task, source = smoltalk("train")
        parts.append(("SmolTalk", first("SmolTalk", task, wanted["smoltalk"][0]), wanted["smoltalk"][1], source, len(task)))
    if "mmlu" in wanted:
        task, source = mmlu_train()
        parts.append(("MMLU", first("MMLU", task, wanted["mmlu"][0]), wanted["mmlu"][1], source, len(task)))
    if "gsm8k" in wanted:
        task = GSM8K("train")
        parts.append(("GSM8K", first("GSM8K", task, wanted["gsm8k"][0]), wanted["gsm8k"][1], "openai/grade-school-math train", len(task)))
    if "identity" in wanted:
        size, passes = wanted["identity"]
        for path in [IDENTITY] + ([LOCAL["identity"]] if "identity" in LOCAL else []):
            task = CustomJSON(path)
            parts.append(("identity", first("identity", task, size), passes,
                          os.path.relpath(path, REPO) if path == IDENTITY else path, len(task)))
    for part, name, cls in (("simple_spelling", "SimpleSpelling", SimpleSpelling), ("spelling_bee", "SpellingBee", SpellingBee)):
        if part in wanted:
            size, passes = wanted[part]
            size = size if size > 0 else MIXTURE[part][0]  # generated, so "all" has no meaning: the default count
            parts.append((name, cls(size=size, split="train"), passes, "generated from the train words", size))
    if not parts:
        raise errors.UserError("the SFT mixture is empty: every part of --mixture is 0")
    return parts


def build_val():
    """The held-out slice for val bpb: SmolTalk test, 5.2K of MMLU test, 420 of GSM8K test
    (nanochat's proportions; the first of each task's shuffled order, so every MMLU subject); parts whose data is missing are left out."""
    parts = []
    for name, make in (("SmolTalk test", lambda: smoltalk("test")[0]), ("MMLU test", lambda: MMLU("test", stop=5200)),
                       ("GSM8K test", lambda: GSM8K("test", stop=420))):
        try:
            parts.append(make())
        except FileNotFoundError as e:
            print0(f"note: {name} left out of validation: {str(e).splitlines()[0][:160]}")
    if not parts:
        raise FileNotFoundError("no validation data: SmolTalk, MMLU and GSM8K test are all missing")
    return TaskMixture(parts, seed=args.seed)


parts = build_mixture()
train_dataset = TaskMixture([task for _, task, epochs, _, _ in parts for _ in range(epochs)], seed=args.seed)
table = ["| part | source | available | used | epochs | conversations |", "|---|---|---|---|---|---|"]
table += [f"| {name} | {source} | {available:,} | {len(task):,} | {epochs} | {len(task) * epochs:,} |"
          for name, task, epochs, source, available in parts]
table.append(f"| total | | | | | {len(train_dataset):,} |")
print0("SFT mixture:\n" + "\n".join(table))
val_dataset = build_val()

# -----------------------------------------------------------------------------
# optimizer: the base run's learning rates unless given, its state when it fits

run_spec = optim_spec.scaled(args.init_lr_frac)
lrs = {k: getattr(run_spec, k) for k in (*OptimizerSpec.LRS, "weight_decay")}
print0(f"optimizer: {run_spec}")
optimizer = model.setup_optimizer(run_spec)


def load_optimizer_state(state):
    """Load the moments of `state` (optimizer state dict) but keep this run's hyperparameters.
    Returns (loaded, why not): a state of another world size or shape leaves the optimizer fresh."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        return False, str(e)
    for group, h in zip(optimizer.param_groups, hyper):
        group.update(h)
    for p, st in optimizer.state.items():
        for key, v in st.items():
            piece = (math.ceil(p.numel() / world_size),)  # an AdamW shard under several ranks
            if not (torch.is_tensor(v) and v.ndim > 0):
                continue
            per_row = v.ndim == p.ndim and all(a in (1, b) for a, b in zip(v.shape, p.shape))  # NorMuon's moment
            if tuple(v.shape) not in (tuple(p.shape), piece) and not per_row:
                optimizer.state.clear()
                return False, f"state {key} has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}"
    return True, ""


# -----------------------------------------------------------------------------
# resume, data

checkpoint_dir = os.path.join(get_base_dir(), "chatsft_checkpoints", model_tag)
start_step, packer_state, loss_log = 0, None, LossLog()
if args.resume:
    step, meta = load_meta(checkpoint_dir)
    check_resume(args, meta, dataclasses.asdict(config), checkpoint_dir, recurrence, optim_spec)
    model.load_state_dict(load_file(checkpoint_dir, step, "model.pt", device))
    ok, why = load_optimizer_state(load_file(checkpoint_dir, step, f"optim_rank{rank}.pt", device))
    if not ok:
        raise errors.UserError(f"--resume: optimizer state of {checkpoint_dir} step {step} does not fit: {why}")
    packer_state = load_file(checkpoint_dir, step, f"loader_rank{rank}.pt")
    loss_log.load_state_dict(meta["loop_state"])
    start_step = step
    print0(f"resumed from {checkpoint_dir} at step {step}")
else:
    if args.load_optimizer:
        try:
            ok, why = load_optimizer_state(load_file(base_dir, base_step, f"optim_rank{rank}.pt", device))
        except FileNotFoundError as e:
            ok, why = False, str(e)
        print0("optimizer: the base run's state (momentum and moments)" if ok else f"optimizer: fresh state ({why})")
    else:
        print0("optimizer: fresh state (--load-optimizer 0)")
    if last_step(checkpoint_dir) is not None:
        print0(f"note: {checkpoint_dir} already has checkpoints; this run will add to them (use --resume to continue)")
packer = SFTPacker(tokenizer, train_dataset, args.device_batch_size, T, rank, world_size, device,
                   args.buffer_size, state=packer_state)

# the length of the epoch, counted: a first packing pass over this rank's share; the epoch ends
# when any rank cannot fill a step, so the steps are the fewest any rank can fill
t0 = time.time()
n_batches = SFTPacker(tokenizer, train_dataset, args.device_batch_size, T, rank, world_size, "cpu",
                      args.buffer_size).count_batches()
epoch_steps = torch.tensor(n_batches // grad_accum, device=device)
if is_ddp:
    dist.all_reduce(epoch_steps, op=dist.ReduceOp.MIN)
epoch_steps = int(epoch_steps.item())
if epoch_steps == 0:
    raise errors.UserError(f"the SFT mixture fills {n_batches} batches of {args.device_batch_size} rows on rank {rank}: "
                           f"not one step of {grad_accum} (lower --total-batch-size or --device-batch-size)")
num_steps = epoch_steps if args.num_iterations <= 0 else min(args.num_iterations, epoch_steps)
print0(f"epoch: {epoch_steps} steps ({n_batches} batches on rank 0, counted in {time.time() - t0:.1f}s); "
       f"training {num_steps} steps" + (f" (--num-iterations {args.num_iterations} is more than one epoch)"
                                         if args.num_iterations > epoch_steps else ""))

# validation rows: packed once (on CPU), the same rows at every evaluation; every rank uses as
# many batches as the one with the fewest has
want = max(1, args.eval_tokens // rows_per_micro)
val_rows = []
for batch in SFTPacker(tokenizer, val_dataset, args.device_batch_size, T, rank, world_size, "cpu", args.buffer_size):
    val_rows.append(batch)
    if len(val_rows) == want:
        break
n_val = torch.tensor(len(val_rows), device=device)
if is_ddp:
    dist.all_reduce(n_val, op=dist.ReduceOp.MIN)
eval_steps = int(n_val.item())
if eval_steps == 0:
    raise errors.UserError(f"validation data fills no batch of {args.device_batch_size} rows on every rank")
print0(f"validation: {eval_steps} batches per rank ({eval_steps * rows_per_micro:,} tokens)")

# quick chat evals: a handful of problems of each task whose data is here
quick_tasks = []
if args.chat_eval_every > 0 and args.chat_eval_problems > 0:
    for name, make in (("ARC-Easy", lambda: ARC("ARC-Easy", "test")), ("ARC-Challenge", lambda: ARC("ARC-Challenge", "test")),
                       ("MMLU", lambda: MMLU("test")), ("GSM8K", lambda: GSM8K("test")), ("HumanEval", lambda: HumanEval()),
                       ("SpellingBee", lambda: SpellingBee(size=256, split="test"))):
        try:
            quick_tasks.append((name, make()))
        except FileNotFoundError as e:
            print0(f"note: no quick {name} eval: {str(e).splitlines()[0][:160]}")

maybe_compile(model, args.compile, device)

wandb_run = init_wandb(args.run, master, "looped-nanochat-sft", vars(args))
print0(f"compute dtype {COMPUTE_DTYPE}")

# -----------------------------------------------------------------------------
# loop


def val_bpb():
    model.eval()
    batches = ((x.to(device), y.to(device)) for x, y in val_rows)
    bpb = evaluate_bpb(model, batches, eval_steps, token_bytes, r=eval_r)
    model.train()
    return bpb


def quick_chat_eval(step):
    model.eval()
    engine = Engine(model, tokenizer, r=eval_r)
    out = {}
    with torch.compiler.set_stance("force_eager"):  # prompt shapes vary: compiling them would recompile each time
        for name, task in quick_tasks:
            if task.eval_type == "categorical":
                res = evaluate_categorical(model, tokenizer, task, device, r=eval_r, max_problems=args.chat_eval_problems)
            else:
                res = evaluate_generative(engine, tokenizer, task, device, max_new_tokens=args.chat_eval_max_tokens,
                                          max_problems=args.chat_eval_problems)
            out[name] = res["accuracy"]
    model.train()
    if len(out) == len(BASELINES):  # all six tasks: nanochat's ChatCORE, on this small subset
        out["ChatCORE"] = chatcore(out)
    print0(f"step {step:05d} | quick chat eval (r={eval_r}, {args.chat_eval_problems} problems each): "
           + ", ".join(f"{k} {v:.3f}" for k, v in out.items())
           + ("" if "ChatCORE" in out else f" (no ChatCORE: {len(out)} of the {len(BASELINES)} tasks)"))
    wandb_run.log({"step": step, **{f"chat/{k}": v for k, v in out.items()}})
    return out


def save(step, loader_state, bpb):
    meta = {"model_config": dataclasses.asdict(config), "user_config": vars(args), "val_bpb": bpb,
            "loop_state": loss_log.state_dict(), "recurrence": dataclasses.asdict(recurrence),
            "optimizer": dataclasses.asdict(optim_spec), "eval_r": eval_r, "lrs": lrs,
            "base_checkpoint": {"dir": base_dir, "step": base_step}, "mixture": table}
    save_checkpoint(checkpoint_dir, step, model.state_dict(), optimizer.state_dict(), loader_state, meta, rank)


step, bpb, quick = start_step, None, {}
while True:
    # the step's batches first: whether the epoch is over is known only once they are fetched
    loader_state = packer.state_dict()
    try:
        batches = [packer.next_batch() for _ in range(grad_accum)]
    except StopIteration:
        batches = None
    n_tokens = sum(int((y >= 0).sum()) for _, y in batches) if batches else 0
    sync = torch.tensor([batches is None, n_tokens], dtype=torch.float64, device=device)
    if is_ddp:
        dist.all_reduce(sync)  # any rank out of data ends the epoch everywhere
    epoch_done, n_tokens = bool(sync[0] > 0), sync[1].item()
    assert epoch_done == (step == epoch_steps), f"step {step}: out of data is {epoch_done}, but the epoch counted {epoch_steps} steps"
    last = step == num_steps

    if last or (args.eval_every > 0 and step % args.eval_every == 0 and step > start_step):
        bpb = val_bpb()
        print0(f"step {step:05d} | val bpb {bpb:.4f} (assistant tokens, r={eval_r})")
        wandb_run.log({"step": step, "val/bpb": bpb})
        loss_log.record_eval(step, bpb)
    if quick_tasks and (last or (args.chat_eval_every > 0 and step % args.chat_eval_every == 0 and step > start_step)):
        quick = quick_chat_eval(step)
    if last or (args.save_every > 0 and step % args.save_every == 0 and step > start_step):
        save(step, loader_state, bpb)
    if last:
        break

    r = recurrence.draw(step, config.arch, args.seed)
    synchronize(device)
    t0 = time.time()
    # each micro-step's summed loss over (all supervised tokens of the step, every rank) / world:
    # the optimizer averages over ranks, so the update follows the mean loss per supervised token
    scale = world_size / max(n_tokens, 1)
    loss_sum = 0.0
    for micro, (x, y) in enumerate(batches):
        gen = torch.Generator(device=device).manual_seed(stream_seed(args.seed, step, rank, micro))
        loss = model.loss(x, y, r=r, bptt_k=bptt_k, reduction="sum", generator=gen)
        (loss * scale).backward()
        loss_sum += loss.detach()
    lrm = lr_multiplier(step + 1, num_steps, 0.0, args.warmdown_ratio, 0.0)  # the multiplier after this step: 0 after the last
    apply_schedule(optimizer, lrm, step)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    local_tokens = sum(int((y >= 0).sum()) for _, y in batches)
    train_loss = float(loss_sum) / max(local_tokens, 1)  # this rank's mean loss per supervised token
    synchronize(device)
    dt = time.time() - t0
    step += 1

    smooth = loss_log.record_step(step, train_loss, lrm, r, dt)
    horizon = f"/{num_steps}" + (f" ({100 * step / epoch_steps:.1f}% of the epoch)" if args.num_iterations <= 0 else "")
    eta = loss_log.mean_step_seconds() * (num_steps - step)  # as base_train: the mean step after the warm-up ones
    print0(f"step {step:05d}{horizon} | loss {smooth:.4f} | r {r:2d} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms"
           f" | tok/s {total_batch / dt:,.0f} | supervised {n_tokens / total_batch:.2f} | eta {format_duration(eta)}")
    wandb_run.log({"step": step, "train/loss": smooth, "train/lrm": lrm, "train/r": r})

stats = packer.stats
if master:
    csv_path, png_path = loss_log.write(os.path.join(checkpoint_dir, "train_log"))
    print0(f"loss curve: {csv_path}, {png_path}")
print0(f"done: {step - start_step} steps this run, val bpb {bpb:.4f}; packing (rank 0): {stats['rows']:,} rows, "
       f"padding {100 * packer.pad_fraction:.2f}%, supervised {100 * stats['supervised'] / max(stats['tokens'], 1):.1f}% "
       f"of tokens, {stats['cropped']:,} conversations cropped to {T + 1} tokens, {stats['skipped']:,} skipped")
summary = {"base checkpoint": f"{base_dir} step {base_step}", "steps": step, "tokens per step": total_batch,
           "conversations in the mixture": len(train_dataset), "padding fraction (rank 0)": packer.pad_fraction,
           "supervised token fraction (rank 0)": stats["supervised"] / max(stats["tokens"], 1),
           "conversations cropped (rank 0)": stats["cropped"], "eval r": eval_r, "val bpb (assistant tokens)": bpb,
           "training time (min)": loss_log.train_seconds / 60}
summary.update({f"quick {k} ({args.chat_eval_problems} problems)": v for k, v in quick.items()})
get_report().log(section="Chat SFT", data=[vars(args), "\n".join(table), summary])
wandb_run.finish()
compute_cleanup()
