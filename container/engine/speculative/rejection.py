"""Verification of draft tokens: which of them the target model keeps, and the token after.

Row j of a sequence carries the target's distribution p_j (after every sampling processor, with
the drafts before j as history) for output position n + j; draft token c_j was proposed there
from q_j. The rule (Leviathan et al. 2023; Chen et al. 2023) keeps the target distribution
exactly: accept c_j with probability min(1, p_j(c_j) / q_j(c_j)); at the first rejection emit a
token drawn from norm(max(0, p_j - q_j)); when every draft is accepted, the last row (no draft)
draws a bonus token from p.

When q_j is a point mass (n-gram proposals, greedy requests, greedy drafts) the rule reduces to
"draw from p_j as without speculation; accept when the draw equals c_j": P(accept) = p_j(c_j) and
a rejected draw is p_j conditioned on differing from c_j, i.e. the normalised residual. Drawing
with the sampler's own seeded noise at the same output position makes such requests give the
very tokens they give without speculation (greedy and seeded sampling alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampler import SamplingBatch, choose_with_probs, pack_logprobs, uniform_noise

# separate random streams per purpose, so acceptance coins, the residual draw and the draft's
# own draws at one position are independent of each other
ACCEPT_SALT = 0x5EC0_A11C_E7ED_0001
DRAFT_SALT = 0x5EC0_D2AF_7000_0002


@dataclass
class Verified:
    accepted: list[int]                 # per sequence: leading draft tokens kept
    tokens: list[list[int]]             # per sequence: the tokens to append (accepted + 1)
    row_tokens: torch.Tensor            # [R] the token each row stands for (device)
    logprobs: torch.Tensor | None       # [R, 1 + 2k] packed for row_tokens, or None


def _race(weights: torch.Tensor, seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A draw from the unnormalised weights (exponential race, the sampler's noise)."""
    noise = uniform_noise(seed, step, weights.shape[1])
    return (weights / -torch.log(noise)).argmax(dim=-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What a rejected position draws from: max(0, p - q), unnormalised (the race does not
    need the sum); where p == q rejection had probability 0, p itself stands in."""
    rest = (p - q).clamp(min=0)
    return torch.where(rest.sum(dim=1, keepdim=True) <= 0, p, rest)


def accept_coins(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[B] uniforms in (0, 1), a pure function of (seed, output position)."""
    return uniform_noise(seed ^ ACCEPT_SALT, step, 1)[:, 0]


def verify(logits: torch.Tensor, batch: SamplingBatch, counts: list[int],
           candidates: list[int], q_rows: list[int], q_probs: torch.Tensor | None) -> Verified:
    """logits [R, V]: per sequence 1 + counts[s] rows (its drafts, then the bonus row).
    candidates [R]: each row's draft token (-1 on bonus rows). q_rows: rows whose draft came
    from a distribution (not a point mass), q_probs [len(q_rows), V] those distributions."""
    device = logits.device
    draws, raw_logprobs, probs = choose_with_probs(logits, batch)
    candidate = torch.tensor(candidates, dtype=torch.int64).to(device)
    accept = draws == candidate
    correction = draws
    if q_rows:
        index = torch.tensor(q_rows, dtype=torch.int64).to(device)
        p = probs[index]
        q = q_probs.to(device=device, dtype=p.dtype)
        c = candidate[index].unsqueeze(1)
        seed, step = batch.seed[index], batch.step[index]
        # accept c with probability min(1, p(c) / q(c)), written without a division
        kept = accept_coins(seed, step) * q.gather(1, c).squeeze(1) <= p.gather(1, c).squeeze(1)
        accept = accept.index_put((index,), kept)
        correction = correction.index_put((index,), _race(residual(p, q), seed, step))
    row_tokens = torch.where(accept, candidate, correction)
    packed = None
    if raw_logprobs is not None:
        packed = pack_logprobs(raw_logprobs, row_tokens, batch.num_top_logprobs)
    host_accept = accept.tolist()
    host_tokens = row_tokens.tolist()
    accepted, tokens, row = [], [], 0
    for count in counts:
        kept = 0
        while kept < count and host_accept[row + kept]:
            kept += 1
        accepted.append(kept)
        tokens.append(host_tokens[row:row + kept + 1])
        row += count + 1
    return Verified(accepted, tokens, row_tokens, packed)
