"""
Reinforcement learning on GSM8K: nanochat's simplified GRPO (nanochat/grpo.py has the math).

    python -m scripts.chat_rl --model-tag s20
    torchrun --nproc_per_node=8 -m scripts.chat_rl --model-tag s20

Each step: --examples-per-step GSM8K train questions (dealt to ranks round-robin, each rank its
own), --num-samples replies to each sampled through the engine from the current weights (tool
calls run in the sandbox), reward = GSM8K's task.reward (1 if the number after "####" is right);
advantage = reward - the mean reward of the question's replies; one update with the loss
-(1/N) sum A * log p over every token the model sampled (N = their number over all ranks: DAPO's
token-level normalisation). On-policy, so no ratio, no clipping, no KL. The prompt and the tool
outputs the engine forced into a reply carry no loss; the stop token the model chose does.

r: the step's r (the source run's sampler seeded by the step, or --set fixed=N) is used both
to sample and to score the replies, so the gradient is that of the policy that sampled;
truncated BPTT through the last bptt_k iterations (the source run's). Periodic pass@k on the
first --eval-examples GSM8K test problems (--eval-samples samples each, temperature 1). LR:
linear decay to 0 over the run.
Checkpoints: $NANOCHAT_BASE_DIR/chatrl_checkpoints/<tag>.
"""

import argparse
import csv
import dataclasses
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from nanochat import errors, flags
from nanochat.checkpoint_manager import build_model, find_checkpoint_dir, load_file, load_meta, save_checkpoint
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0, synchronize
from nanochat.engine import Engine
from nanochat.grpo import group_advantages, pack_rollouts, pg_loss, rollout_rows
from nanochat.optim import OptimizerSpec
from nanochat.recurrence import RecurrenceSpec
from nanochat.report import get_report
from nanochat.task_eval import evaluate_generative, sample_replies
from nanochat.tokenizer import get_tokenizer
from nanochat.training import apply_schedule, check_resume, init_wandb, later_stage_specs, stream_seed
from tasks.gsm8k import GSM8K

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

parser = argparse.ArgumentParser(description="GRPO-style RL on GSM8K")
# model in
parser.add_argument("--source", type=str, default="sft", choices=["base", "sft"], help="which stage's checkpoint to start from")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder, also the RL one (empty = the one saved last)")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
# rollouts
parser.add_argument("--examples-per-step", type=int, default=16, help="questions per step over all ranks (a multiple of the world size)")
parser.add_argument("--num-samples", type=int, default=16, help="replies sampled per question (the group of the advantage)")
parser.add_argument("--device-batch-size", type=int, default=8, help="most rows per forward/backward and per engine call")
parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per reply")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (-1 = all)")
# horizon
parser.add_argument("--num-iterations", type=int, default=-1, help="steps (-1 = one pass over GSM8K train; more cycle it)")
# recurrence and optimizer: the source run's, with --set over them
parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the source run's recurrence or optimizer spec, repeatable (e.g. --set fixed=4 --set "
                         "matrix_lr=0.01; every lr is then x --init-lr-frac; weight_decay is 0 unless set; --set help lists them)")
parser.add_argument("--init-lr-frac", type=float, default=0.05, help="every lr times this (nanochat's RL value)")
# evaluation, checkpoints
parser.add_argument("--eval-every", type=int, default=60, help="pass@k on GSM8K test every N steps and at the end (-1 = only at the end)")
parser.add_argument("--eval-examples", type=int, default=400, help="GSM8K test problems per evaluation")
parser.add_argument("--eval-samples", type=int, default=8, help="samples per test problem: pass@1..k")
parser.add_argument("--save-every", type=int, default=60, help="checkpoint every N steps (-1 = only at the end)")
parser.add_argument("--resume", action="store_true", help="continue from the latest RL checkpoint of --model-tag")
parser.add_argument("--run", type=str, default="", help="wandb run name (empty = no wandb)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
parser.add_argument("--seed", type=int, default=42, help="seed of the question order, samples and recurrence draws")
args = parser.parse_args()
sets = flags.set_overrides(args.set, {RecurrenceSpec: (), OptimizerSpec: ()})

is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None, seed=args.seed)
master = rank == 0
print0(f"args: {vars(args)}")
if args.examples_per_step % world_size:
    raise errors.UserError(f"--examples-per-step {args.examples_per_step} must be a multiple of the world size {world_size}")
k, B = args.num_samples, args.device_batch_size
if k < 1 or B < 1 or (k > B and k % B):
    raise errors.UserError(f"--num-samples {k}, --device-batch-size {B}: expected both >= 1 and, when samples exceed "
                           "the batch, a multiple of it")

# -----------------------------------------------------------------------------
# model, tasks, optimizer

source_dir = find_checkpoint_dir(args.source, args.model_tag or None)
model_tag = os.path.basename(source_dir)
model, source_meta = build_model(source_dir, None if args.step < 0 else args.step, device)
config = model.config
tokenizer = get_tokenizer()
if tokenizer.get_vocab_size() != config.vocab_size:
    raise errors.UserError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model {config.vocab_size}")
print0(f"start: {source_dir} step {source_meta['step']}: {config}")
recurrence, optim_spec = later_stage_specs(source_meta, sets)  # the checkpoint's, --set over them
bptt_k = recurrence.truncation
eval_r = recurrence.eval_r(config.arch)
print0(f"recurrence: {recurrence}, eval r {eval_r}")
top_k = args.top_k if args.top_k > 0 else None

train_task, val_task = GSM8K("train"), GSM8K("test")
num_steps = args.num_iterations if args.num_iterations > 0 else len(train_task) // args.examples_per_step
if num_steps < 1:
    raise errors.UserError(f"one pass over {len(train_task)} questions at --examples-per-step {args.examples_per_step} "
                           f"is no step: pass --num-iterations")
print0(f"{num_steps} steps x {args.examples_per_step} questions x {k} samples = "
       f"{args.examples_per_step * k} replies per step ({args.examples_per_step // world_size} questions per rank)")

# the source run's optimizer (NorMuon, cautious decay, its lrs unless --set), every lr x --init-lr-frac
run_spec = optim_spec.scaled(args.init_lr_frac)
lrs = {k_: getattr(run_spec, k_) for k_ in (*OptimizerSpec.LRS, "weight_decay")}
optimizer = model.setup_optimizer(run_spec)
print0(f"optimizer (fresh): {run_spec}")

checkpoint_dir = os.path.join(get_base_dir(), "chatrl_checkpoints", model_tag)
start_step, history = 0, []  # history: one dict per step (and evals), kept in the checkpoint
if args.resume:
    step, meta = load_meta(checkpoint_dir)
    check_resume(args, meta, dataclasses.asdict(config), checkpoint_dir, recurrence, optim_spec)
    model.load_state_dict(load_file(checkpoint_dir, step, "model.pt", device))
    optimizer.load_state_dict(load_file(checkpoint_dir, step, f"optim_rank{rank}.pt", device))
    start_step, history = step, meta["history"]
    print0(f"resumed from {checkpoint_dir} at step {step}")

wandb_run = init_wandb(args.run, master, "looped-nanochat-rl", vars(args))

# -----------------------------------------------------------------------------
# rollouts


def my_questions(step):
    """This rank's train question indices for a step: slots step*E .. step*E+E-1 of an order
    reshuffled every epoch, slot j to rank j mod W."""
    E, N = args.examples_per_step, len(train_task)
    out = []
    for j in range(rank, E, world_size):
        q = step * E + j
        order = np.random.default_rng([args.seed, q // N]).permutation(N)
        out.append(int(order[q % N]))
    return out


def seed_of(step, call):
    return stream_seed(args.seed, step, rank, call)


@torch.no_grad()
def rollouts(step, r):
    """(rollouts [(ids, mask)], rewards (n,), reply lengths) for this rank's questions, the k
    replies of each question consecutive."""
    model.eval()
    engine = Engine(model, tokenizer, r=r)
    conversations = [train_task[i] for i in my_questions(step)]
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    per_call = max(1, B // k)  # questions per engine call; with k > B, each question takes k / B calls
    out, rewards, lengths, call = [], [], [], 0
    for q0 in range(0, len(prompts), per_call):
        group = list(range(q0, min(q0 + per_call, len(prompts))))
        replies = []
        for _ in range(max(1, k // B)):
            replies.append(sample_replies(engine, [prompts[q] for q in group], min(k, B), args.max_new_tokens,
                                          args.temperature, top_k, seed=seed_of(step, call)))
            call += 1
        for j, q in enumerate(group):  # gather question q's k replies from the calls
            n = min(k, B)
            for rows in replies:
                for row in rows[j * n:(j + 1) * n]:
                    out.append(rollout_rows(prompts[q], row))
                    rewards.append(train_task.reward(conversations[q], tokenizer.decode(row["tokens"])))
                    lengths.append(len(row["tokens"]))
    model.train()
    return out, torch.tensor(rewards, dtype=torch.float32, device=device), lengths


def pass_at_k(step):
    model.eval()
    engine = Engine(model, tokenizer, r=eval_r)
    res = evaluate_generative(engine, tokenizer, val_task, device, num_samples=args.eval_samples,
                              max_new_tokens=args.max_new_tokens, temperature=1.0, top_k=top_k,
                              max_problems=args.eval_examples, batch_size=max(1, B // args.eval_samples),
                              seed=args.seed)
    model.train()
    print0(f"step {step:05d} | GSM8K test ({res['total']} problems, r={eval_r}, temperature 1): "
           + ", ".join(f"pass@{j} {v:.4f}" for j, v in res["pass_at"].items()))
    wandb_run.log({"step": step, **{f"pass@{j}": v for j, v in res["pass_at"].items()}})
    history.append({"step": step, **{f"pass@{j}": v for j, v in res["pass_at"].items()}})
    return res["pass_at"]


def save(step):
    meta = {"model_config": dataclasses.asdict(config), "user_config": vars(args), "recurrence": dataclasses.asdict(recurrence),
            "optimizer": dataclasses.asdict(optim_spec), "eval_r": eval_r, "lrs": lrs,
            "history": history, "source_checkpoint": {"dir": source_dir, "step": source_meta["step"]}}
    save_checkpoint(checkpoint_dir, step, model.state_dict(), optimizer.state_dict(), {"step": step}, meta, rank)


# -----------------------------------------------------------------------------
# loop

step, passes = start_step, {}
while True:
    last = step == num_steps
    if last or (args.eval_every > 0 and step % args.eval_every == 0 and (step > start_step or not args.resume)):
        passes = pass_at_k(step)
    if last or (args.save_every > 0 and step % args.save_every == 0 and step > start_step):
        save(step)
    if last:
        break

    r = recurrence.draw(step, config.arch, args.seed)
    synchronize(device)
    t0 = time.time()
    rolls, rewards, lengths = rollouts(step, r)
    advantages = group_advantages(rewards, k)
    n_sampled = sum(sum(mask[1:]) for _, mask in rolls)
    totals = torch.tensor([n_sampled, rewards.sum().item(), len(rolls), sum(lengths),
                           int((advantages.view(-1, k).abs().sum(1) > 0).sum()), len(rolls) // k],
                          dtype=torch.float64, device=device)
    if is_ddp:
        dist.all_reduce(totals)
    n_total, reward_sum, n_rows, length_sum, groups_with_signal, n_groups = totals.tolist()
    # rows with zero advantage add nothing to the gradient: skip them, but every rank runs at
    # least one (weighted by its zero advantage) so all ranks' optimizers see the same grads
    train = [i for i in range(len(rolls)) if advantages[i] != 0] or [0]
    loss_sum = 0.0
    for b0 in range(0, len(train), B):
        rows = train[b0:b0 + B]
        x, y = pack_rollouts([rolls[i] for i in rows], tokenizer.get_bos_token_id(), device)
        logp = -model.loss(x, y, r=r, bptt_k=bptt_k, reduction="none")  # (b, L-1), 0 where y = -1
        loss = pg_loss(logp, y, advantages[rows], max(n_total, 1) / world_size)
        loss.backward()
        loss_sum += loss.item()
    lrm = 1.0 - step / num_steps
    apply_schedule(optimizer, lrm, step)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    synchronize(device)
    dt = time.time() - t0
    step += 1

    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"step {step}: loss is {loss_sum} (r={r}); the last checkpoint is intact")
    mean_reward, mean_length = reward_sum / n_rows, length_sum / n_rows
    record = {"step": step, "reward": mean_reward, "reply_tokens": mean_length, "r": r, "lrm": lrm, "dt": dt,
              "groups_with_signal": groups_with_signal / n_groups, "sampled_tokens": n_total}
    history.append(record)
    print0(f"step {step:05d}/{num_steps} | reward {mean_reward:.3f} | reply {mean_length:.0f} tok | "
           f"groups with signal {groups_with_signal:.0f}/{n_groups:.0f} | r {r:2d} | lrm {lrm:.2f} | dt {dt:.1f}s")
    wandb_run.log(record)

if master:
    path = os.path.join(checkpoint_dir, "rl_log.csv")
    keys = sorted({key for h in history for key in h}, key=lambda s: (s != "step", s))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    print0(f"log: {path}")
trained = [h for h in history if "reward" in h]
stats = {"source checkpoint": f"{source_dir} step {source_meta['step']}", "steps": step,
         "replies per step": args.examples_per_step * k, "eval r": eval_r,
         "mean reward, first step": trained[0]["reward"] if trained else float("nan"),
         "mean reward, last step": trained[-1]["reward"] if trained else float("nan")}
stats.update({f"GSM8K test pass@{j} ({args.eval_examples} problems, temperature 1)": v for j, v in passes.items()})
get_report().log(section="Chat RL", data=[vars(args), stats])
wandb_run.finish()
compute_cleanup()
