"""Batched, KV-cached sampling from a Hugging Face decoder-only causal LM: the CPU rollout engine.

vLLM is the other backend; this one only needs `model(input_ids, attention_mask, position_ids,
past_key_values, logits_to_keep)`, i.e. any `*ForCausalLM` of transformers with full attention.

How it works:
- Requests are packed longest-prompt-first into batches of `cfg.batch_size` (little padding) and LEFT
  padded, so every row's next token sits in the last column. Position ids count real tokens only.
- One prefill forward (logits of the last position only), then one forward per step that feeds only
  the new token. The KV cache is preallocated for prompt + budget and written in place: transformers'
  DynamicCache re-concatenates the whole cache at every step (an O(length) copy per layer).
- Rows that finish (EOS, or their own max_new_tokens) are dropped from the batch and the cache, so
  they cost nothing afterwards.
- Logits are restricted to `allowed_ids` by selecting those columns (the same as masking all others to
  -inf, and cheaper), then temperature, top-k and top-p exactly as transformers' logits warpers.
- Seeds: request i owns a `torch.Generator` seeded with seed i, from which it draws Gumbel noise in
  fixed blocks of NOISE_BLOCK steps x len(allowed_ids); the token is argmax(filtered logits / T + noise),
  an exact sample of the filtered softmax (the Gumbel-max trick). No other request touches that
  generator and the block shape is fixed, so request i's tokens depend only on (model, prompt i, seed i,
  cfg), not on batch size, order, neighbours or its own max_new_tokens (a shorter budget is a prefix).
  Identical calls (same thread count) are bit-identical. One caveat, from float32 kernels rather than
  from the sampler: the padding a row gets and the batch's shape change the reduction order of its
  attention (and of tiny matmuls) in the last bits, ~1e-5 on the logits of the benchmark model, which
  flips a token only where two candidates tie to that precision: rare (0 of 96 rollouts of 200 tokens
  changed between batch 32 and a shuffled batch 7), but possible over very many rollouts.
- Classifier-free guidance (`cfg.cfg_scale` != 1, with one `uncond_prompts` row per request: its prompt without
  the condition): each request decodes as two cache rows, its prompt and its unconditional twin, both fed
  the token the request samples; the request's logits are `guide`d (uncond + scale * (cond - uncond))
  before forced decoding, temperature, top-k and top-p. The noise stays the request's own, so the seed
  contract above holds. At scale 1 no twin is decoded: the code path is the unguided one.
- `return_logprobs`: also log p(sampled token) at every step under the model's RAW distribution: the log-softmax
  of its full-vocabulary logits, before the allowed-ids restriction, forced decoding, guidance, temperature,
  top-k and top-p (the quantity `sa_ray.losses.token_logprobs` teacher-forces, and vLLM's `raw_logprobs`).
  Under guidance it is the CONDITIONAL row's (the policy's own logprob of the token that guidance chose). One
  log-softmax and gather over the live rows per step, on the logits the step already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

NOISE_BLOCK = 64  # steps of Gumbel noise a request draws from its generator at a time (part of the seed contract)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 -> greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    # classifier-free guidance: uncond + scale * (cond - uncond) (`guide`); 1 = off, 0 = the unconditional model
    cfg_scale: float = 1.0
    batch_size: int = 32  # requests decoded together (longest-first packing)

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.batch_size < 1:
            raise ValueError(f"invalid sampling config: {self}")
        if not 0 <= self.cfg_scale < float("inf"):  # also refuses NaN
            raise ValueError(f"cfg_scale must be a finite number >= 0; got {self.cfg_scale}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def of_eval(cls, e) -> SamplingConfig:
        """The evaluation protocol's decoding (`eval.*` of sa_ray.config.EvalConfig)."""
        return cls(temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, cfg_scale=e.cfg_scale)


def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    allowed_ids: list[int],
    eos_id: int,
    max_new_tokens: list[int] | int,
    seeds: list[int] | int,
    cfg: SamplingConfig = SamplingConfig(),
    forced: list[list[int]] | None = None,
    forced_ids: Sequence[int] = (),
    uncond_prompts: list[list[int]] | None = None,
    return_logprobs: bool = False,
) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
    """Generated ids per prompt (prompt excluded): up to and including eos_id, else max_new_tokens of them.

    Only ids of `allowed_ids` are emitted; if eos_id is not among them a request never stops early.
    `seeds` is one seed per request, or one int from which request i's seed is derived (via
    numpy's SeedSequence([seed, i]), so base seeds s and s+1 share no request stream).
    `forced` (one list per request) constrains the ids of `forced_ids` and eos_id: request i may write
    only forced[i]'s next one, in order, and eos_id only after the last; every other allowed id stays
    free (an aligned TTS writes exactly the phones it was asked for and samples when and how).
    `cfg.cfg_scale` != 1 guides every request by its `uncond_prompts` row (classifier-free guidance, `guide`);
    at 1 `uncond_prompts` is not decoded at all. `cfg.batch_size` counts requests (2 cache rows each then).
    `return_logprobs`: return (ids, logprobs) instead, logprobs[i][j] = log p(ids[i][j] | prompt i, ids[i][:j])
    under the model's raw full-vocabulary log-softmax (see the module doc: not the restricted, forced, guided or
    temperature/top-k/top-p-processed distribution the token was drawn from; under guidance the conditional
    model's). The tokens are the same as without it.
    """
    n = len(prompts)
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if isinstance(seeds, int):
        seeds = [int(np.random.SeedSequence([seeds, i]).generate_state(1, np.uint64)[0] >> 1) for i in range(n)]
    if len(budgets) != n or len(seeds) != n:
        raise ValueError(f"{n} prompts need {n} max_new_tokens and seeds, got {len(budgets)} and {len(seeds)}")
    if any(len(p) == 0 for p in prompts) or any(b < 0 for b in budgets):
        raise ValueError("prompts must be non-empty and max_new_tokens >= 0")
    vocab = sorted(set(allowed_ids))  # ascending: argmax ties resolve to the smallest id, as over the full vocab
    if not vocab or vocab[0] < 0 or vocab[-1] >= model.get_output_embeddings().weight.shape[0]:
        raise ValueError("allowed_ids must be non-empty ids of the model's vocabulary")

    device = next(model.parameters()).device
    allowed = torch.tensor(vocab, dtype=torch.long, device=device)
    eos_col = vocab.index(eos_id) if eos_id in vocab else -1
    pad_id = getattr(model.config, "pad_token_id", None) or 0  # any id: padded positions are masked out

    check_forced(forced, forced_ids, vocab, n)
    cfg_scale = cfg.cfg_scale  # validated by SamplingConfig
    if cfg_scale == 1:
        uncond_prompts = None  # no guidance: nothing of it reaches the decoder
    elif uncond_prompts is None or len(uncond_prompts) != n or any(len(p) == 0 for p in uncond_prompts):
        raise ValueError(f"cfg_scale={cfg_scale} needs one non-empty unconditional prompt per request ({n})")

    results: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    todo = sorted((i for i in range(n) if budgets[i] > 0), key=lambda i: (-len(prompts[i]), i))
    was_training = model.training
    model.eval()  # dropout would make rollouts irreproducible
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                script = None if forced is None else _Script([forced[i] for i in batch], forced_ids, allowed, eos_col)
                outs, lps = _decode_batch(
                    model,
                    [prompts[i] for i in batch],
                    [budgets[i] for i in batch],
                    [seeds[i] for i in batch],
                    allowed,
                    eos_col,
                    pad_id,
                    cfg,
                    script,
                    None if uncond_prompts is None else ([uncond_prompts[i] for i in batch], cfg_scale),
                    return_logprobs,
                )
                for k, i in enumerate(batch):
                    results[i] = outs[k]
                    if lps is not None:
                        logprobs[i] = lps[k]
    finally:
        model.train(was_training)
    return (results, logprobs) if return_logprobs else results


def check_forced(forced: list[list[int]] | None, forced_ids: Sequence[int], allowed_ids: Sequence[int], n: int) -> None:
    """`forced` of n requests (every engine's forced decoding): one list each, of ids both forced and allowed."""
    if forced is not None and len(forced) != n:
        raise ValueError(f"{n} prompts need {n} forced sequences, got {len(forced)}")
    if forced is not None and not {t for f in forced for t in f} <= set(forced_ids) & set(allowed_ids):
        raise ValueError("forced sequences may hold only ids that are in both forced_ids and allowed_ids")


class _Script:
    """Forced decoding's state: the columns (of `allowed`) each request of a batch must write in order, EOS
    last, and how far each has got; the constrained columns are masked except a request's next one."""

    def __init__(self, forced: list[list[int]], forced_ids, allowed: torch.Tensor, eos_col: int):
        column = {int(v): c for c, v in enumerate(allowed.tolist())}
        self.columns = [[column[t] for t in f] + ([eos_col] if eos_col >= 0 else []) for f in forced]
        self.constrained = torch.isin(
            allowed, torch.tensor(sorted(set(forced_ids)), dtype=torch.long, device=allowed.device)
        )
        if eos_col >= 0:
            self.constrained[eos_col] = True
        self.done = [0] * len(forced)

    def mask(self, logits: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Logits of the live `rows` with every constrained column but each row's next one at -inf."""
        want = [self.columns[r][self.done[r]] if self.done[r] < len(self.columns[r]) else -1 for r in rows]
        blocked = self.constrained.expand(len(rows), -1).clone()
        for i, c in enumerate(want):
            if c >= 0:
                blocked[i, c] = False
        return logits.masked_fill(blocked, float("-inf")), want

    def advance(self, rows: list[int], want: list[int], chosen: list[int]) -> None:
        for r, w, c in zip(rows, want, chosen):
            self.done[r] += c == w


def _decode_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    budgets: list[int],
    seeds: list[int],
    allowed: torch.Tensor,
    eos_col: int,
    pad_id: int,
    cfg: SamplingConfig,
    script: _Script | None = None,
    guidance: tuple[list[list[int]], float] | None = None,
    return_logprobs: bool = False,
) -> tuple[list[list[int]], list[list[float]] | None]:
    """`guidance` = (unconditional prompts, scale): cache row b + r is request r's unconditional twin, kept and
    dropped with it; `rows`, `budget`, `noise` and `col` stay per request, `next_pos` and `attend` per cache row.
    Returns the tokens per request and, with `return_logprobs`, their raw logprobs (`sample`)."""
    device = allowed.device
    b, n_allowed = len(prompts), allowed.numel()
    seqs = prompts if guidance is None else prompts + guidance[0]
    lens = [len(p) for p in seqs]
    prompt_len, steps = max(lens), max(budgets)

    ids = torch.full((len(seqs), prompt_len), pad_id, dtype=torch.long)
    mask = torch.ones((len(seqs), prompt_len + steps), dtype=torch.long)  # generated positions of live rows are real
    for r, p in enumerate(seqs):
        ids[r, prompt_len - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, : prompt_len - len(p)] = 0
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask[:, :prompt_len].cumsum(-1) - 1).clamp_(min=0)

    # sdpa takes a ready [B, 1, 1, kv] bool mask (True = attend): handing it a view skips transformers' mask
    # construction at every step. Other attention implementations get the 2D mask and build their own.
    ready_mask = getattr(model.config, "_attn_implementation", None) == "sdpa"
    attend = mask.bool()[:, None, None, :] if ready_mask else mask

    cache = _make_cache(model, prompt_len + steps)
    logits = model(
        input_ids=ids,
        attention_mask=mask[:, :prompt_len],
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    rows = torch.arange(b, device=device)  # request (index in this batch) of each live row
    next_pos = torch.tensor(lens, device=device)  # position of each live row's next token
    budget = torch.tensor(budgets, device=device)
    chosen = torch.zeros((b, steps), dtype=torch.long, device=device)  # columns of `allowed`
    token_lp = torch.zeros((b, steps), dtype=torch.float32, device=device) if return_logprobs else None
    n_out = [0] * b
    noise: torch.Tensor | None = None
    for t in range(steps):
        if not cfg.greedy and t % NOISE_BLOCK == 0:
            noise = torch.stack([_gumbel(gens[r], n_allowed) for r in rows.tolist()]).to(device)
        step_noise = None if noise is None else noise[:, t % NOISE_BLOCK]
        restricted = logits.index_select(-1, allowed).float()
        if guidance is not None:
            restricted = guide(restricted[: len(rows)], restricted[len(rows) :], guidance[1])
        if script is not None:
            live = rows.tolist()
            restricted, want = script.mask(restricted, live)
        col = _choose(restricted, step_noise, cfg)
        if script is not None:
            script.advance(live, want, col.tolist())
        chosen[rows, t] = col
        if token_lp is not None:  # raw full-vocabulary logprob; under guidance the conditional rows' (the first)
            raw = logits[: len(rows)].float().log_softmax(-1)
            token_lp[rows, t] = raw.gather(1, allowed[col].unsqueeze(1)).squeeze(1)
        done = budget <= t + 1
        if eos_col >= 0:
            done |= col == eos_col
        if bool(done.any()):  # the one host sync per step
            for r in rows[done].tolist():
                n_out[r] = t + 1
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            # the cache rows to keep: the live requests' and, under guidance, their twins' (len(rows) further on)
            kept = keep if guidance is None else torch.cat([keep, keep + len(rows)])
            rows, budget, col = rows[keep], budget[keep], col[keep]
            next_pos, attend = next_pos[kept], attend[kept]
            noise = None if noise is None else noise[keep]
            cache.batch_select_indices(kept)
        fed = col if guidance is None else col.repeat(2)  # a twin continues with its request's token
        logits = model(
            input_ids=allowed[fed].unsqueeze(1),
            attention_mask=attend[..., : prompt_len + t + 1],
            position_ids=next_pos.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        next_pos += 1
    tokens = allowed[chosen].tolist()
    lps = None if token_lp is None else token_lp.tolist()
    return [tokens[r][: n_out[r]] for r in range(b)], None if lps is None else [lps[r][: n_out[r]] for r in range(b)]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance over the allowed ids: uncond + scale * (cond - uncond) of the LOG-SOFTMAXES, as
    transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor combines them. Combining the raw logits instead
    (as some TTS implementations do) differs by a constant per row: the same softmax, argmax, top-k and top-p,
    so the same samples."""
    cond, uncond = cond.log_softmax(-1), uncond.log_softmax(-1)
    return uncond + scale * (cond - uncond)


def _gumbel(gen: torch.Generator, n_allowed: int) -> torch.Tensor:
    """One noise block [NOISE_BLOCK, n_allowed] of standard Gumbel noise from a request's own generator."""
    u = torch.rand((NOISE_BLOCK, n_allowed), generator=gen)
    return u.log_().neg_().log_().neg_()  # -log(-log u); u == 0 gives -inf, a token never picked


def _choose(logits: torch.Tensor, noise: torch.Tensor | None, cfg: SamplingConfig) -> torch.Tensor:
    """Logits over the allowed ids [B, A] -> the chosen column per row [B]."""
    if cfg.greedy:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:  # as TopKLogitsWarper: keep everything >= the k-th largest
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:  # as TopPLogitsWarper: drop the low tail holding at most 1 - top_p of the mass
        sorted_logits, order = logits.sort(dim=-1)
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - cfg.top_p
        tail[:, -1] = False  # always keep the most likely token
        logits.masked_fill_(tail.scatter(1, order, tail), float("-inf"))
    return (logits + noise).argmax(-1)


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in buffers sized for the whole generation: a decode step writes
    one slot in place (DynamicLayer.update is a torch.cat of the whole cache) and returns a view."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, dk = key_states.shape
            self._k = key_states.new_empty((b, h, self.capacity, dk))
            self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # Compact the kept rows into the front of the same buffers: no new allocation of the full capacity.
        m, end = indices.numel(), self.length
        self._k[:m, :, :end] = self._k[indices, :, :end]
        self._v[:m, :, :end] = self._v[indices, :, :end]
        self._k, self._v = self._k[:m], self._v[:m]
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]


def _make_cache(model: torch.nn.Module, capacity: int) -> Cache:
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    if any(t != "full_attention" for t in layer_types):  # sliding/linear layers: let transformers pick
        return DynamicCache(config=config)
    return Cache(layers=[_PreallocatedLayer(capacity) for _ in layer_types])
