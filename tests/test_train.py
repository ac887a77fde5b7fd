"""Base training: resume == uninterrupted, 2 gloo ranks == 1 rank with accumulation, a loss
that goes down, checkpoints that survive a crash mid-write, bits per byte by hand."""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from nanochat.checkpoint_manager import build_model, last_step, load_file, load_meta, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_bpb, unigram_bpb
from tests.conftest import SAMPLE_DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--size", "1", "--max-seq-len", "64", "--device-batch-size", "2", "--total-batch-size", "256",
        "--eval-tokens", "256", "--sample-every", "-1", "--set", "max_r=6"]


@pytest.fixture
def base_dir(tmp_path, tokenizer):
    base = tmp_path / "base"
    tokenizer.save(base / "tokenizer")
    return base


def run_train(base_dir, *extra, nproc=1):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "scripts.base_train", *TINY, *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "scripts.base_train", *TINY, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def tiny_model(**kw):
    config = GPTConfig(sequence_len=32, vocab_size=64, n_embd=32, n_head=2, n_kv_head=2, short_window=8, **kw)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    with torch.no_grad():  # zero-initialised projections would make the test trivial
        for name, p in model.named_parameters():
            if p.ndim == 2 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


# -----------------------------------------------------------------------------
# resume

def test_resume_equals_uninterrupted(base_dir, shard_dir):
    common = ["--data-dir", shard_dir, "--num-iterations", "6", "--save-every", "3", "--eval-every", "-1",
              "--set", "init_state=randn"]
    run_train(base_dir, *common)
    ckpt = base_dir / "base_checkpoints" / "s1"
    assert last_step(ckpt) == 6
    full = load_file(ckpt, 6, "model.pt")
    _, full_meta = load_meta(ckpt, 6)
    assert full_meta["data_source"]["dir"] == os.path.abspath(shard_dir) and full_meta["data_source"]["dataset"] is None
    shutil.rmtree(ckpt / "step_000006")
    out = run_train(base_dir, *common, "--resume")
    assert "resumed from" in out and "at step 3" in out
    resumed = load_file(ckpt, 6, "model.pt")
    for name in full:
        assert torch.equal(full[name], resumed[name]), f"{name} differs after resume"
    _, meta = load_meta(ckpt, 6)
    curve = lambda m: [(s[0], s[1], s[3]) for s in m["loop_state"]["steps"]]  # step, loss, r (not timings)
    assert curve(meta) == curve(full_meta)


def test_resume_without_checkpoint_is_clear(base_dir, shard_dir):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY, "--data-dir", shard_dir, "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no checkpoint in" in proc.stderr


def test_bad_batch_flag_is_clear(base_dir, shard_dir):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY, "--data-dir", shard_dir,
                           "--total-batch-size", "100"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--total-batch-size 100 must be a multiple" in proc.stderr


# -----------------------------------------------------------------------------
# loss goes down, beats unigram; two ranks under torchrun run and agree

def test_loss_goes_down_on_real_text(base_dir):
    shared = os.path.join(ROOT, "..", "shared", "data", "pretrain")
    data = shared if os.path.isdir(shared) else SAMPLE_DATA_DIR
    out = run_train(base_dir, "--data-dir", data, "--num-iterations", "40", "--eval-every", "-1",
                    "--eval-tokens", "2048", "--set", "embedding_lr=0.3", "--set", "matrix_lr=0.03")
    losses = [float(line.split("| loss ")[1].split()[0]) for line in out.splitlines() if "| loss " in line]
    assert len(losses) == 40
    assert losses[-1] < losses[0] - 1.0, (losses[0], losses[-1])
    line = next(l for l in out.splitlines() if "unigram baseline" in l)
    model_bpb, unigram = float(line.split("model ")[1].split()[0]), float(line.split("baseline ")[1])
    assert model_bpb < unigram, line
    assert os.path.exists(base_dir / "base_checkpoints" / "s1" / "train_log.png")


def test_torchrun_two_ranks(base_dir, shard_dir):
    out = run_train(base_dir, "--data-dir", shard_dir, "--num-iterations", "2", "--eval-every", "-1", nproc=2)
    assert "world size 2" in out and "1 accum" in out
    ckpt = base_dir / "base_checkpoints" / "s1" / "step_000002"
    assert {"optim_rank0.pt", "optim_rank1.pt", "loader_rank0.pt", "loader_rank1.pt"} <= set(os.listdir(ckpt))


# -----------------------------------------------------------------------------
# 2 gloo ranks == 1 rank with gradient accumulation, through the real model and optimizer

def _steps(model, opt, batches, r, bptt_k, accum):
    losses = []
    for step, micro_batches in enumerate(batches):
        total = 0.0
        for x, y in micro_batches:
            loss = model.loss(x, y, r=r[step], bptt_k=bptt_k)
            (loss / accum).backward()
            total += loss.item() / accum
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


OPTIM = dict(weight_decay=0.1, muon_beta2=0.9, cautious_weight_decay=True)  # base_train's Muon: NorMuon, cautious decay


def _data(steps=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (steps, 2, 2, 16), generator=g)  # (step, micro/rank, B, T)
    return x, torch.roll(x, -1, dims=-1)


def _ddp_worker(rank, world, init_file, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = tiny_model(value_embeds=True)
    opt = model.setup_optimizer(**OPTIM)
    x, y = _data()
    batches = [[(x[s, rank], y[s, rank])] for s in range(x.size(0))]
    local = _steps(model, opt, batches, r=[3, 1, 5, 2], bptt_k=2, accum=1)
    mean_loss = torch.tensor(local)
    dist.all_reduce(mean_loss)
    if rank == 0:
        torch.save({"losses": (mean_loss / world).tolist(), "params": model.state_dict()}, out)
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ddp = torch.load(out)
    model = tiny_model(value_embeds=True)
    opt = model.setup_optimizer(**OPTIM)
    x, y = _data()
    batches = [[(x[s, m], y[s, m]) for m in range(2)] for s in range(x.size(0))]
    single = _steps(model, opt, batches, r=[3, 1, 5, 2], bptt_k=2, accum=2)
    assert max(abs(a - b) for a, b in zip(single, ddp["losses"])) < 1e-5, (single, ddp["losses"])
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, ddp["params"][name], atol=1e-5, rtol=0, msg=name)


# -----------------------------------------------------------------------------
# checkpoints

def test_crash_mid_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, 5, {"w": torch.ones(2)}, {"o": 1}, {"l": 1}, {"model_config": {}})
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if "optim" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, 10, {"w": torch.zeros(2)}, {"o": 2}, {"l": 2}, {"model_config": {}})
    monkeypatch.setattr(torch, "save", real_save)
    assert last_step(ckpt) == 5
    assert torch.equal(load_file(ckpt, 5, "model.pt")["w"], torch.ones(2))
    # a truncated file is named in the error
    path = ckpt / "step_000005" / "model.pt"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="corrupt checkpoint file"):
        load_file(ckpt, 5, "model.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_meta(tmp_path / "empty")


# -----------------------------------------------------------------------------
# bits per byte by hand

class StubModel:
    """Per-token loss = the target id in nats, so the expected bpb is computed by hand."""

    def loss(self, x, y, r=None, reduction="none"):
        return torch.where(y >= 0, y.float(), torch.zeros_like(y, dtype=torch.float))


def test_bpb_by_hand():
    token_bytes = torch.tensor([0, 1, 2, 3], dtype=torch.int32)  # token 0 is "special": 0 bytes
    x = torch.zeros(1, 5, dtype=torch.long)
    y = torch.tensor([[0, 1, 2, 3, -1]])
    # nats counted: 1 + 2 + 3 (token 0 has no bytes, -1 is ignored); bytes: 1 + 2 + 3
    got = evaluate_bpb(StubModel(), iter([(x, y)]), 1, token_bytes)
    assert got == pytest.approx(6 / (math.log(2) * 6))
    # unigram: train counts 1 (+1 smoothing each): token 3 seen 3 times
    train = iter([(x, torch.tensor([[3, 3, 3, -1, -1]]))])
    p3 = (3 + 1) / (3 + 4)
    got = unigram_bpb(train, 1, iter([(x, torch.tensor([[3, 0]]))]), 1, token_bytes)
    assert got == pytest.approx(-math.log(p3) / (math.log(2) * 3))


# -----------------------------------------------------------------------------
# the schedule (nanochat master's shapes), the norm weights under the default flags, resume guards

def test_schedule_shapes():
    from nanochat.training import apply_schedule, lr_multiplier, muon_momentum, weight_decay_multiplier
    N = 100
    lrm = [lr_multiplier(s, N, 10, 0.5, 0.05) for s in range(N)]
    assert lrm[0] == pytest.approx(0.1) and lrm[9] == 1.0 and lrm[10:51] == [1.0] * 41
    assert lrm[51] < 1 and lrm[-1] == pytest.approx(1 / 50 + (1 - 1 / 50) * 0.05)  # reaches 0.05 at step N
    assert lr_multiplier(N, N, 10, 0.5, 0.05) == pytest.approx(0.05)
    assert muon_momentum(0) == 0.85 and muon_momentum(200) == pytest.approx(0.91) and muon_momentum(400) == 0.97
    assert muon_momentum(1000, 1000, 0.5) == pytest.approx(0.90) and muon_momentum(500, 1000, 0.5) == 0.97
    assert weight_decay_multiplier(0, N) == 1 and weight_decay_multiplier(N, N) == pytest.approx(0)
    model = tiny_model()
    opt = model.setup_optimizer(weight_decay=0.2)
    apply_schedule(opt, 0.5, 50, N, 0.5)
    muon = next(g for g in opt.param_groups if g["kind"] == "muon")
    assert muon["lr"] == pytest.approx(0.01) and muon["weight_decay"] == pytest.approx(0.1)  # half-way: cos = 0.5
    apply_schedule(opt, 1.0, 0, N, 0.5)
    assert muon["weight_decay"] == pytest.approx(0.2)


def test_default_flags_keep_norm_weights_near_one(base_dir, shard_dir):
    """Adam's first steps are sign steps of size lr: at nanochat's scalar lr 0.5 a norm weight
    moved by 0.5 per step and half the residual norms were negative after 3 steps. With the
    default flags (norm lr 0.02, no warmup in so short a run, warmdown over the last 65 %) 5
    steps move each weight by about 0.02 x (1 + 1 + 1 + 0.68 + 0.37) = 0.081 when every step
    is a full sign step (Adam's bias-corrected m/sqrt(v) is near 1 then, and below 1 when the
    gradient's sign flips); 0.1 bounds it with room, and no weight gets near 0."""
    out = run_train(base_dir, "--data-dir", shard_dir, "--num-iterations", "5", "--eval-every", "-1")
    state = load_file(base_dir / "base_checkpoints" / "s1", 5, "model.pt")
    # each step's FLOP/s is its own r's FLOPs (forward r, backward min(r, 4)) times its tok/s
    model, _ = build_model(base_dir / "base_checkpoints" / "s1")
    steps = [l for l in out.splitlines() if l.startswith("step ") and "TFLOP/s" in l]
    assert len(steps) == 5 and len({int(l.split("| r ")[1].split()[0]) for l in steps}) > 1
    for line in steps:
        r = int(line.split("| r ")[1].split()[0])
        tok_s = float(line.split("tok/s ")[1].split()[0].replace(",", ""))
        tflops = float(line.split(" TFLOP/s")[0].rsplit("| ", 1)[1])
        assert tflops * 1e12 / tok_s == pytest.approx(model.estimate_flops(r, 4), rel=0.02), line
    norms = {k: v for k, v in state.items() if k.endswith(("n1.weight", "n2.weight", "n3.weight", "n4.weight",
                                                           "norm_r.weight", "norm_f.weight"))}
    assert len(norms) == 4 * 8 + 2
    moved = max((v - 1).abs().max().item() for v in norms.values())
    print(f"largest norm-weight change after 5 default steps: {moved:.4f}")
    assert 0 < moved <= 0.1, moved
    assert all(v.min() > 0.9 for v in norms.values())


def test_resume_refuses_a_changed_schedule(base_dir, shard_dir):
    run_train(base_dir, "--data-dir", shard_dir, "--num-iterations", "2", "--eval-every", "-1")
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY, "--data-dir", shard_dir, "--resume",
                           "--num-iterations", "4", "--eval-every", "-1", "--warmdown-ratio", "0.5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --resume: --num-iterations is 4 here but 2, --warmdown-ratio is 0.5 here but 0.65 in")
    assert "rerun with --num-iterations 2 --warmdown-ratio 0.65" in last  # every differing flag is named
    # a recipe field changed through --set: compared through the saved specs, whatever the typing
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY, "--data-dir", shard_dir, "--resume",
                           "--num-iterations", "2", "--eval-every", "-1", "--set", "matrix_lr=0.03,bptt_k=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "recurrence bptt_k is 2 here but 4, optimizer matrix_lr is 0.03 here but 0.02" in last
    assert "rerun with --set bptt_k=4 --set matrix_lr=0.02" in last, last


def test_non_finite_loss_ends_the_run_in_one_line():
    """The loss log of base_train and chat_sft stops at a nan or inf loss, naming the step and r,
    before the step is recorded (the checkpoint saved before it stays the last)."""
    from nanochat.training import LossLog
    log = LossLog()
    log.record_step(1, 2.5, 1.0, 4, 0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match="step 2: loss is .* \\(r=6\\); the last checkpoint is intact"):
            log.record_step(2, bad, 1.0, 6, 0.1)
    assert len(log.steps) == 1


def test_init_from_loads_weights_and_refuses_another_model(base_dir, shard_dir, monkeypatch):
    """--init-from: a curriculum's next stage starts from another checkpoint's weights (another
    context length allowed), and a different model or tokenizer is refused in one line."""
    from nanochat.errors import UserError
    from nanochat.training import load_init_weights
    run_train(base_dir, "--data-dir", shard_dir, "--num-iterations", "2", "--eval-every", "-1", "--model-tag", "first")
    out = run_train(base_dir, "--data-dir", shard_dir, "--num-iterations", "1", "--eval-every", "-1",
                    "--model-tag", "next", "--init-from", "first")
    assert "weights from" in out and "first at step 2 (--init-from)" in out
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base_dir))
    folder = base_dir / "base_checkpoints" / "first"
    _, meta = load_meta(folder)
    config = GPTConfig(**{**meta["model_config"], "sequence_len": 32})
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert load_init_weights(model, "first", config.__dict__, "cpu") == (str(folder), 2)
    saved = load_file(folder, 2, "model.pt")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match=r"the model differs from the one in .*first in n_head \(4 here, "):
        load_init_weights(model, str(folder), {**config.__dict__, "n_head": 4}, "cpu")
    other = base_dir.parent / "other"  # the same checkpoint beside another tokenizer
    shutil.copytree(folder, other / "base_checkpoints" / "first")
    (other / "tokenizer").mkdir()
    (other / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="is not this run's tokenizer"):
        load_init_weights(model, str(other / "base_checkpoints" / "first"), config.__dict__, "cpu")
