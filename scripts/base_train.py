"""
Pretrain the base model: next-token prediction on parquet shards.

    python -m scripts.base_train --size 20                        # one GPU or CPU
    torchrun --nproc_per_node=8 -m scripts.base_train --size 20   # one node
    python -m scripts.base_train --arch gpt --size 20             # the standard GPT d20 baseline

--size is the one dial: width, heads, windows (GPTConfig.from_size) and the horizon follow
from it; every derived value is printed. The recurrence count r of each optimizer step is
drawn from the Poisson log-normal sampler seeded by the step, so every rank and micro-step
agrees without communication and a resumed run draws the same r.
"""

import argparse
import dataclasses
import math
import os
import time

import torch

from nanochat import errors, flags, flash_attention
from nanochat.checkpoint_manager import last_step, load_file, load_meta, save_checkpoint
from nanochat.common import (COMPUTE_DTYPE, compute_cleanup, compute_init, format_duration, get_base_dir,
                             print0, synchronize)
from nanochat.core_eval import evaluate_core
from nanochat.dataloader import DataLoader
from nanochat.dataset import data_plan, default_data_dir
from nanochat.eval_bundle import load_tasks, resolve_bundle
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_bpb, unigram_bpb
from nanochat.optim import OptimizerSpec
from nanochat.recurrence import RecurrenceSpec
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.training import (LossLog, apply_schedule, check_resume, gpu_peak_flops, init_wandb, load_init_weights,
                               lr_multiplier, maybe_compile, sample_greedy, stream_seed)

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

parser = argparse.ArgumentParser(description="Pretrain a looped (or standard) GPT")
# model: the dial sets every GPTConfig field; these flags, and --set for the rest, override it
parser.add_argument("--size", type=int, default=20, help="the dial: width = ceil(size*64/128)*128; for --arch gpt also the depth")
parser.add_argument("--arch", type=str, default="looped", choices=["looped", "gpt"], help="looped (prelude/recur/coda) or standard GPT")
parser.add_argument("--n-prelude", type=int, default=-1, help="prelude blocks (-1 = 2 for looped, 0 for gpt)")
parser.add_argument("--n-recur", type=int, default=-1, help="blocks of the repeated stack (-1 = 4 for looped, --size for gpt)")
parser.add_argument("--n-coda", type=int, default=-1, help="coda blocks (-1 = 2 for looped, 0 for gpt)")
parser.add_argument("--max-seq-len", type=int, default=2048, help="context length T")
parser.add_argument("--n-head", type=int, default=-1, help="attention heads (-1 = width/128: heads of 128)")
parser.add_argument("--recur-mean", type=float, default=RecurrenceSpec.mean, help="E[r] of the Poisson log-normal sampler (recurrence)")
# every other recipe field (GPTConfig, RecurrenceSpec, OptimizerSpec) by name, its default where it is defined:
# value_embeds, init_state, inject_init, window_pattern, softcap, max_r, sigma, fixed, bptt_k, the lrs, ...
parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=flags.SET_HELP)
# horizon and batch
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = from --target-flops or the ratio)")
parser.add_argument("--target-flops", type=float, default=-1, help="training FLOPs budget (-1 = use the ratio)")
parser.add_argument("--target-param-data-ratio", type=float, default=4, help="tokens = ratio x non-embedding params")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per micro-step per rank")
parser.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1 = from the horizon, Power Lines)")
# optimizer: the lrs are tuned at nanochat's reference batch of 2^19 tokens; --set matrix_lr=... changes one
parser.add_argument("--batch-scaling", type=int, default=0, choices=[0, 1],
                    help="1: lrs x sqrt(B/2^19), weight decay x sqrt(B/2^19) x D_ref/D (nanochat); 0: as given "
                         "(default: at toy batches the rules undershoot, BENCHMARKS.md)")
parser.add_argument("--warmup-steps", type=int, default=-1, help="steps of linear lr warmup (-1 = 40, at most 1%% of the steps)")
parser.add_argument("--warmdown-ratio", type=float, default=0.65, help="fraction of steps of linear lr decay at the end")
parser.add_argument("--final-lr-frac", type=float, default=0.05, help="lr multiplier at the last step")
# evaluation, logging, checkpoints
parser.add_argument("--eval-every", type=int, default=250, help="val bpb every N steps (-1 = only at the end)")
parser.add_argument("--eval-tokens", type=int, default=10 * 524288, help="validation tokens per bpb evaluation")
parser.add_argument("--sample-every", type=int, default=2000, help="print samples every N steps (-1 = only at the end)")
parser.add_argument("--core-metric-every", type=int, default=2000, help="CORE every N steps and at the end (-1 = off)")
parser.add_argument("--core-metric-max-per-task", type=int, default=500, help="CORE examples per task (-1 = all)")
parser.add_argument("--eval-bundle", type=str, default="", help="CORE eval bundle folder (empty = $NANOCHAT_BASE_DIR/eval_bundle; none found: CORE skipped)")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder name (default s<size> / d<size>)")
parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of --model-tag")
parser.add_argument("--init-from", type=str, default="", help="start from this base checkpoint's weights (a tag or a "
                    "folder), with a fresh optimizer, step and data: a curriculum's next stage")
parser.add_argument("--run", type=str, default="", help="wandb run name (empty = no wandb)")
# machine and data
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
parser.add_argument("--compile", type=int, default=-1, choices=[-1, 0, 1], help="torch.compile the blocks (-1 = on CUDA only)")
parser.add_argument("--data-dir", type=str, default=None, help="folder of parquet shards (default $NANOCHAT_BASE_DIR/base_data)")
parser.add_argument("--seed", type=int, default=42, help="seed of init, recurrence draws and initial-state noise")
args = parser.parse_args()
OWN_FLAGS = dict(sequence_len="--max-seq-len", vocab_size="the tokenizer (scripts/tok_train.py)", arch="--arch",
                 n_head="--n-head", n_prelude="--n-prelude", n_recur="--n-recur", n_coda="--n-coda", mean="--recur-mean")
sets = flags.set_overrides(args.set, {GPTConfig: OWN_FLAGS, RecurrenceSpec: OWN_FLAGS, OptimizerSpec: ()}, OWN_FLAGS)

is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None, seed=args.seed)
master = rank == 0
print0(f"args: {vars(args)}")
flash_attention.announce()

# -----------------------------------------------------------------------------
# model

tokenizer = get_tokenizer()
token_bytes = get_token_bytes(device=device)
overrides = dict(sets[GPTConfig])
for name in ("n_head", "n_prelude", "n_recur", "n_coda"):
    if getattr(args, name) >= 0:
        overrides[name] = getattr(args, name)
if args.n_head >= 0 and "n_kv_head" not in overrides:
    overrides["n_kv_head"] = args.n_head  # as many key/value heads as query heads, for a changed head count too
with errors.user_input():  # GPTConfig and RecurrenceSpec name the field a flag set wrong
    config = GPTConfig.from_size(args.size, arch=args.arch, vocab_size=tokenizer.get_vocab_size(),
                                 sequence_len=args.max_seq_len, **overrides)
    recurrence = RecurrenceSpec(mean=args.recur_mean, **sets[RecurrenceSpec])
    optim_spec = OptimizerSpec(**sets[OptimizerSpec])  # as given: what later stages start from
print0(f"model config: {config}")
with torch.device("meta"):
    model = GPT(config)
    # the reference of nanochat's batch and weight-decay rules: its d12 at the reference batch of
    # 2^19 tokens, here the same family at size 12 (s12 for looped) with this run's context and vocab
    ref_model = GPT(GPTConfig.from_size(12, arch=args.arch, vocab_size=config.vocab_size, sequence_len=config.sequence_len))
model.to_empty(device=device)
torch.manual_seed(args.seed)
model.init_weights()

bptt_k = recurrence.truncation
mean_r, mean_r_grad = recurrence.expectations(config.arch)
eval_r = recurrence.eval_r(config.arch)
flops_per_token = model.estimate_flops(mean_r, r_grad=mean_r_grad)
counts = model.num_params(r=eval_r)
print0("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" (effective at r={eval_r})")
print0(f"recurrence: E[r] = {mean_r:.3f}, E[min(r, k)] = {mean_r_grad:.3f}; "
       f"training FLOPs/token {flops_per_token:.4e} (forward {model.forward_flops(mean_r):.4e})")
if config.arch == "looped":
    # the design's ISOFLOP claim, printed for this size: the standard GPT of the same width whose
    # depth is the looped model's layer count at r = 4 (nanochat's d20 for s20)
    depth = config.n_prelude + 4 * config.n_recur + config.n_coda
    with torch.device("meta"):
        iso = GPT(dataclasses.replace(config, arch="gpt", n_prelude=0, n_coda=0, n_recur=depth, value_embeds=False))
    print0(f"training FLOPs/token vs standard GPT d{depth} of the same width: "
           f"{model.estimate_flops(4, bptt_k) / iso.estimate_flops():.3f} at fixed r=4, "
           f"{flops_per_token / iso.estimate_flops():.3f} as trained")

# -----------------------------------------------------------------------------
# horizon -> batch -> learning rates -> weight decay: derived from the size unless overridden,
# each value printed with its source (nanochat master's chain)

B_REF = 2**19  # tokens per step at which the lrs and weight decay were tuned (nanochat's d12)
T = args.max_seq_len
tokens_per_micro = args.device_batch_size * T * world_size
ref_tokens = args.target_param_data_ratio * ref_model.num_params()["non_embedding"]
if args.num_iterations > 0:  # a horizon in steps: the batch cannot follow from it
    total_batch = args.total_batch_size if args.total_batch_size > 0 else B_REF
    batch_src = "--total-batch-size" if args.total_batch_size > 0 else "2^19, the reference (--num-iterations)"
    num_iterations, horizon = args.num_iterations, "--num-iterations"
    target_tokens = num_iterations * total_batch
else:
    if args.target_flops > 0:
        target_tokens, horizon = args.target_flops / flops_per_token, "--target-flops"
    else:
        target_tokens, horizon = args.target_param_data_ratio * counts["non_embedding"], "--target-param-data-ratio"
    if args.total_batch_size > 0:
        total_batch, batch_src = args.total_batch_size, "--total-batch-size"
    else:  # Power Lines (Bergsma et al. 2025, arXiv 2505.13738): the best batch grows as D^0.383
        predicted = B_REF * (target_tokens / ref_tokens) ** 0.383
        total_batch = max(2 ** round(math.log2(predicted)), tokens_per_micro)
        batch_src = f"2^19 x (D / D_ref)^0.383 = {predicted:,.0f}, to a power of 2 (Power Lines)"
    num_iterations = max(1, round(target_tokens / total_batch))
if total_batch % tokens_per_micro:
    raise errors.UserError(f"--total-batch-size {total_batch} must be a multiple of device_batch_size x T x world "
                           f"= {args.device_batch_size} x {T} x {world_size} = {tokens_per_micro}")
grad_accum = total_batch // tokens_per_micro
total_tokens = num_iterations * total_batch
print0(f"horizon ({horizon}): {num_iterations:,} steps, {total_tokens:,} tokens "
       f"({total_tokens / counts['non_embedding']:.2f} tokens/non-embedding param), "
       f"{flops_per_token * total_tokens:.3e} FLOPs; D_ref = {ref_tokens:,.0f} tokens (size-12 model at the same ratio)")
print0(f"batch ({batch_src}): {total_batch:,} tokens/step = {args.device_batch_size} rows x {T} x {world_size} ranks "
       f"x {grad_accum} accum")
lr_scale = math.sqrt(total_batch / B_REF) if args.batch_scaling else 1.0
# T_epoch rule (Bergsma et al. 2024, arXiv 2405.13698): keep B / (lr * wd * D) constant, with lr ~ sqrt(B)
weight_decay = optim_spec.weight_decay * (math.sqrt(total_batch / B_REF) * ref_tokens / target_tokens if args.batch_scaling else 1.0)
run_spec = dataclasses.replace(optim_spec.scaled(lr_scale), weight_decay=weight_decay)  # this batch and horizon's
lrs = {k: getattr(run_spec, k) for k in (*OptimizerSpec.LRS, "weight_decay")}
print0(f"learning rates: x {lr_scale:.4f} " + ("= sqrt(B / 2^19) (nanochat)" if args.batch_scaling else "(--batch-scaling 0)")
       + ": " + ", ".join(f"{k} {v:.4g}" for k, v in lrs.items() if k != "weight_decay"))
print0(f"weight decay (Muon, cautious, cosine to 0): {weight_decay:.4g} = {optim_spec.weight_decay:g}"
       + (" x sqrt(B / 2^19) x D_ref / D (T_epoch rule)" if args.batch_scaling else " (--batch-scaling 0)"))
# nanochat master warms up for 40 steps; in 100-step toy runs that cost 0.04 bpb (BENCHMARKS.md), so the
# default keeps master's 40 only in runs of 4000+ steps
warmup_steps = min(args.warmup_steps, num_iterations) if args.warmup_steps >= 0 else min(40, num_iterations // 100)
print0(f"schedule: warmup {warmup_steps} steps" + (" (40, at most 1% of the steps)" if args.warmup_steps < 0 else "")
       + f", warmdown over the last {args.warmdown_ratio:.0%} to "
       f"{args.final_lr_frac:g} x lr (nanochat master); Muon momentum 0.85 -> 0.97 (400 steps) -> 0.90 in the "
       f"warmdown; NorMuon beta2 {optim_spec.muon_beta2:g}")

optimizer = model.setup_optimizer(run_spec)

# -----------------------------------------------------------------------------
# data, resume

data_dir = args.data_dir or default_data_dir()
data_source = data_plan(data_dir, total_tokens)  # which corpus, the shards this horizon needs and those present
print0(f"data: {data_source}")
model_tag = args.model_tag or (f"d{args.size}" if config.arch == "gpt" else f"s{args.size}")
checkpoint_dir = os.path.join(get_base_dir(), "base_checkpoints", model_tag)
start_step, loader_state, loss_log = 0, None, LossLog()
if args.resume:
    if last_step(checkpoint_dir) is None:
        others = sorted(t for t in os.listdir(os.path.dirname(checkpoint_dir)) if last_step(os.path.join(
            os.path.dirname(checkpoint_dir), t)) is not None) if os.path.isdir(os.path.dirname(checkpoint_dir)) else []
        raise errors.MissingInput(f"--resume: no checkpoint in {checkpoint_dir}: drop --resume to start a run, or pass "
                                  f"the --model-tag of one to continue (found: {', '.join(others) or 'none'})")
    step, meta = load_meta(checkpoint_dir)
    check_resume(args, meta, dataclasses.asdict(config), checkpoint_dir, recurrence, optim_spec)
    model.load_state_dict(load_file(checkpoint_dir, step, "model.pt", device))
    optimizer.load_state_dict(load_file(checkpoint_dir, step, f"optim_rank{rank}.pt", device))
    loader_state = load_file(checkpoint_dir, step, f"loader_rank{rank}.pt")
    loss_log.load_state_dict(meta["loop_state"])
    start_step = step
    print0(f"resumed from {checkpoint_dir} at step {step}")
else:
    if last_step(checkpoint_dir) is not None:
        print0(f"note: {checkpoint_dir} already has checkpoints; this run will add to them (use --resume to continue)")
    if args.init_from:
        source_dir, source_step = load_init_weights(model, args.init_from, dataclasses.asdict(config), device)
        print0(f"weights from {source_dir} at step {source_step} (--init-from); optimizer, step and data start fresh")
train_loader = DataLoader(tokenizer, data_dir, "train", args.device_batch_size, T, rank, world_size, device, state=loader_state)


def val_batches():
    return iter(DataLoader(tokenizer, data_dir, "val", args.device_batch_size, T, rank, world_size, device))


eval_steps = max(1, args.eval_tokens // (args.device_batch_size * T * world_size))

core_bundle = None  # CORE during training needs a local bundle; without one the run goes on without CORE
if args.core_metric_every > 0:
    try:
        core_bundle = resolve_bundle(args.eval_bundle or None, download=False)
        shots = max(t.num_fewshot for t in load_tasks(core_bundle))
    except (FileNotFoundError, ValueError) as e:
        print0(f"note: no CORE metric during training: {e}")
        core_bundle = None
    if core_bundle and 0 < args.core_metric_max_per_task <= shots:
        raise errors.UserError(f"--core-metric-max-per-task {args.core_metric_max_per_task}: the bundle has {shots}-shot "
                               f"tasks, which need at least {shots + 1} examples")

maybe_compile(model, args.compile, device)

wandb_run = init_wandb(args.run, master, "looped-nanochat", vars(args))

peak_flops = gpu_peak_flops(device)
print0(f"compute dtype {COMPUTE_DTYPE}; MFU against {peak_flops:.3g} FLOP/s" if peak_flops else
       f"compute dtype {COMPUTE_DTYPE}; no bf16 peak known for this device, MFU not reported")

# -----------------------------------------------------------------------------
# loop


def sample_text(prompts=("The President said that", "Fellow citizens,", "The meaning of life is")):
    for prompt, text in sample_greedy(model, tokenizer, prompts, eval_r):
        print0(f"  {prompt!r} -> {text!r}")


def save(step, val_bpb):
    meta = {"model_config": dataclasses.asdict(config), "user_config": vars(args), "val_bpb": val_bpb,
            "loop_state": loss_log.state_dict(), "recurrence": dataclasses.asdict(recurrence),
            "optimizer": dataclasses.asdict(optim_spec), "eval_r": eval_r, "flops_per_token": flops_per_token,
            "total_batch_size": total_batch, "lrs": lrs, "data_source": data_source}
    save_checkpoint(checkpoint_dir, step, model.state_dict(), optimizer.state_dict(), train_loader.state_dict(), meta, rank)


step, val_bpb = start_step, None
t_train = loss_log.train_seconds
while True:
    last = step == num_iterations
    if last or (args.eval_every > 0 and step % args.eval_every == 0 and (step > start_step or step == 0)):
        model.eval()
        val_bpb = evaluate_bpb(model, val_batches(), eval_steps, token_bytes, r=eval_r)
        model.train()
        print0(f"step {step:05d} | val bpb {val_bpb:.4f} (r={eval_r})")
        wandb_run.log({"step": step, "val/bpb": val_bpb})
        loss_log.record_eval(step, val_bpb)
    if core_bundle and (last or (step % args.core_metric_every == 0 and step > start_step)):
        model.eval()
        with torch.compiler.set_stance("force_eager"):  # prompt shapes vary: compiling them would recompile each time
            core = evaluate_core(model, tokenizer, core_bundle, device, r=eval_r,
                                 max_per_task=args.core_metric_max_per_task, log=print0)
        model.train()
        print0(f"step {step:05d} | CORE {core['core']:.4f} (r={eval_r}, {len(core['results'])} tasks)")
        wandb_run.log({"step": step, "core_metric": core["core"]})
    if master and (last or (args.sample_every > 0 and step % args.sample_every == 0 and step > start_step)):
        print0(f"step {step:05d} | samples (r={eval_r}, greedy):")
        sample_text()
    if last or (args.save_every > 0 and step % args.save_every == 0 and step > start_step):
        save(step, val_bpb)
    if last:
        break

    r = recurrence.draw(step, config.arch, args.seed)
    synchronize(device)
    t0 = time.time()
    train_loss = 0.0
    for micro in range(grad_accum):
        x, y = train_loader.next_batch()
        # initial-state noise (init_state="randn") is a pure function of (seed, step, rank, micro)
        gen = torch.Generator(device=device).manual_seed(stream_seed(args.seed, step, rank, micro))
        loss = model.loss(x, y, r=r, bptt_k=bptt_k, generator=gen)
        (loss / grad_accum).backward()
        train_loss += loss.detach() / grad_accum
    lrm = lr_multiplier(step, num_iterations, warmup_steps, args.warmdown_ratio, args.final_lr_frac)
    apply_schedule(optimizer, lrm, step, num_iterations, args.warmdown_ratio)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    train_loss = train_loss.item()  # the one host sync per step
    synchronize(device)
    dt = time.time() - t0
    step += 1

    smooth = loss_log.record_step(step, train_loss, lrm, r, dt)
    tok_per_s = total_batch / dt
    step_flops = model.estimate_flops(r, bptt_k) if config.arch == "looped" else flops_per_token  # this step's r
    flops_per_s = step_flops * tok_per_s
    mfu = f" | mfu {100 * flops_per_s / (peak_flops * world_size):.1f}%" if peak_flops else ""
    eta = loss_log.mean_step_seconds() * (num_iterations - step)
    print0(f"step {step:05d}/{num_iterations} | loss {smooth:.4f} | r {r:2d} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms"
           f" | tok/s {tok_per_s:,.0f} | {flops_per_s / 1e12:.3g} TFLOP/s{mfu} | eta {format_duration(eta)}")
    wandb_run.log({"step": step, "train/loss": smooth, "train/lrm": lrm, "train/r": r, "train/tok_per_s": tok_per_s})

# the floor to beat: a unigram model fitted on as many train tokens as one evaluation reads
train_for_counts = iter(DataLoader(tokenizer, data_dir, "train", args.device_batch_size, T, rank, world_size, device))
baseline = unigram_bpb(train_for_counts, eval_steps, val_batches(), eval_steps, token_bytes)
print0(f"val bpb: model {val_bpb:.4f} vs unigram baseline {baseline:.4f}")
if master:
    csv_path, png_path = loss_log.write(os.path.join(checkpoint_dir, "train_log"))
    print0(f"loss curve: {csv_path}, {png_path}")
print0(f"done: {num_iterations} steps, final val bpb {val_bpb:.4f}, training time {loss_log.train_seconds / 60:.2f} min")
step_seconds = loss_log.mean_step_seconds()
stats = {"model tag": model_tag, "parameters": counts["total"],
         "non-embedding parameters": counts["non_embedding"], f"effective parameters (r={eval_r})": counts["effective"],
         "E[r]": mean_r, "E[min(r, k)]": mean_r_grad, "FLOPs per token": flops_per_token, "horizon": horizon,
         "steps": num_iterations, "tokens": total_tokens,
         "tokens per non-embedding parameter": total_tokens / counts["non_embedding"],
         "training FLOPs": flops_per_token * total_tokens, "world size": world_size, "eval r": eval_r,
         "val bpb": val_bpb, "unigram baseline bpb": baseline, "training time (min)": loss_log.train_seconds / 60}
if core_bundle:
    stats["CORE at the end of training"] = core["core"]  # on a subset of each task: base_eval reports the full CORE
timed = loss_log.steps[5:] or loss_log.steps  # as mean_step_seconds: the first steps compile and warm up
flops_done = total_batch * sum(model.estimate_flops(s[3], bptt_k) if config.arch == "looped" else flops_per_token
                               for s in timed)  # each step at its own r
if peak_flops and step_seconds > 0:
    stats["MFU (%)"] = 100 * flops_done / sum(s[4] for s in timed) / (peak_flops * world_size)
if device.type == "cuda":
    stats["peak memory (GiB)"] = torch.cuda.max_memory_allocated(device) / 2**30
get_report().log(section="Base model training", data=[vars(args), stats])
wandb_run.finish()
compute_cleanup()
