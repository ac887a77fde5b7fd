"""
The policy-gradient pieces of chat_rl: nanochat's simplified GRPO (on-policy, no KL, DAPO token-level normalisation).

- On-policy: the replies are sampled from the current weights and used for one update, so
  there is no importance ratio, no clipping (trust region) and no KL penalty to a reference.
- Advantage of reply i to a question: A_i = R_i - mean(R of that question's k replies)
  (no division by the std, as in nanochat and Dr. GRPO).
- DAPO token-level normalisation: the loss sums -A_i * log p(token) over every sampled token of
  every reply in the step (all questions, all ranks) and divides by the total number of
  sampled tokens N, so each token weighs the same whatever the length of its reply:

      L = -(1/N) * sum_i sum_{t in sampled(i)} A_i * log p_theta(y_it | y_i<t, prompt_i)

Sampled tokens: the reply tokens the model chose, including the stop token it ended with;
never the prompt, nor the tool outputs the engine forced into the reply.
"""

import torch


def group_advantages(rewards, group_size):
    """rewards (n_groups * group_size,) with each group's replies consecutive -> A = R - group mean."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


def rollout_rows(prompt, reply):
    """(ids, mask) of one rollout: prompt + reply tokens (+ the sampled stop token), mask 1 on
    the tokens the model sampled. reply: a row of task_eval.sample_replies."""
    ids = list(prompt) + reply["tokens"] + ([reply["stop"]] if reply["stop"] is not None else [])
    mask = [0] * len(prompt) + [int(s) for s in reply["sampled"]] + ([1] if reply["stop"] is not None else [])
    return ids, mask


def pack_rollouts(rollouts, pad_id, device="cpu"):
    """A list of (ids, mask) -> inputs (B, L-1), targets (B, L-1): targets -1 where the token was
    not sampled by the model and on the right padding."""
    L = max(len(ids) for ids, _ in rollouts)
    ids = torch.tensor([i + [pad_id] * (L - len(i)) for i, _ in rollouts], dtype=torch.long)
    mask = torch.tensor([m + [0] * (L - len(m)) for _, m in rollouts], dtype=torch.bool)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -1)
    return ids[:, :-1].to(device), targets.to(device)


def pg_loss(logp, targets, advantages, normalizer):
    """-(sum over target tokens of A_row * logp) / normalizer. logp (B, T) log-probabilities of
    the targets (any value where targets == -1: those are ignored), advantages (B,).
    normalizer: the number of sampled tokens N of the whole step (DAPO); under W ranks whose
    gradients the optimizer averages, pass N / W."""
    weight = (targets >= 0).to(logp.dtype) * advantages.to(logp.dtype)[:, None]  # (B, T)
    return -(torch.where(targets >= 0, logp, 0.0) * weight).sum() / normalizer
