"""The non-autoregressive (NAR) stage of a VALL-E-style codec TTS.

The AR model writes codec layer 0; this model fills in the residual layers 1..L-1, one layer per
forward pass, every frame at once (bidirectional attention), as in VALL-E's NAR stage. To predict
layer `level` of the target it sees one sequence

    [text tokens] [prompt frames] [target frames]

- a text position embeds its text token (vocabulary index 0..n_text-1, NOT the AR model's ids);
- a prompt frame (another utterance of the same speaker) embeds the sum of all L of its layers: it
  tells the model what the speaker's residual layers look like;
- a target frame embeds the sum of its layers < level (what is already known) plus the text token it
  voices (`frame_text`, from the AR model's interleaved phones; -1 = unknown in plain mode). Knowing
  the phone of each frame spares the model from having to align frames to the text by attention.

Every position also gets a segment embedding (text / prompt / target), a sinusoidal position that
restarts in each segment (the segments are padded separately, so a row's padding sits inside the
sequence; the key padding mask hides it), and a level embedding, so one network serves all levels.
The output head is per level. The model is trained on golden tokens only (teacher forcing of the
lower layers), with a random level per row.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"  # (or shards + model.safetensors.index.json)
TEXT, PROMPT, TARGET = 0, 1, 2  # segment ids


@dataclass
class NARConfig:
    n_codebooks: int  # L: all codec layers, layer 0 included
    codebook_size: int
    n_text_tokens: int
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    max_len: int = 2048  # longest segment (text, prompt or target) the position table covers

    def __post_init__(self) -> None:
        if self.n_codebooks < 2:
            raise ValueError("the NAR model needs at least 2 codebooks (it predicts layers 1..L-1)")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")


def sinusoids(length: int, dim: int) -> Tensor:
    """The Transformer's fixed sinusoidal positions [length, dim]."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class NARModel(nn.Module):
    def __init__(self, cfg: NARConfig):
        super().__init__()
        self.cfg = cfg
        L, C, H = cfg.n_codebooks, cfg.codebook_size, cfg.hidden
        self.text_emb = nn.Embedding(cfg.n_text_tokens, H)
        # One table per codec layer, stored as one [L*C, H] table: layer j's code c is row j*C + c.
        # The prompt and the target share them, so the prompt's layers read like the target's.
        self.code_emb = nn.Embedding(L * C, H)
        self.frame_text_emb = nn.Embedding(cfg.n_text_tokens + 1, H)  # row 0: unknown (-1)
        self.level_emb = nn.Embedding(L - 1, H)  # row level-1
        self.segment_emb = nn.Embedding(3, H)
        self.register_buffer("positions", sinusoids(cfg.max_len, H), persistent=False)
        self.register_buffer("layer_offsets", torch.arange(L) * C, persistent=False)
        layer = nn.TransformerEncoderLayer(
            H, cfg.heads, cfg.ff, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Pre-LN needs a final norm; nested tensors do not support norm_first, so ask for none.
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(H), enable_nested_tensor=False)
        self.dropout = nn.Dropout(cfg.dropout)
        # A head per level 1..L-1: the layers' codebooks are unrelated, so a shared head would have to
        # untangle them from the level embedding alone.
        self.head_weight = nn.Parameter(torch.empty(L - 1, C, H))
        self.head_bias = nn.Parameter(torch.zeros(L - 1, C))
        self._init()

    def _init(self) -> None:
        # Embeddings at unit scale, like the sinusoids they are summed with (the pre-LN blocks normalise
        # whatever they read). A small head starts near the uniform prediction (loss ~ log C).
        for emb in (self.text_emb, self.code_emb, self.frame_text_emb, self.level_emb, self.segment_emb):
            nn.init.normal_(emb.weight, std=1.0)
        nn.init.normal_(self.head_weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    # ------------------------------------------------------------------------------------ forward

    def _position(self, length: int) -> Tensor:
        if length > self.cfg.max_len:
            raise ValueError(f"a segment of {length} positions exceeds max_len={self.cfg.max_len}")
        return self.positions[:length]

    def forward(
        self,
        text: Tensor,
        text_mask: Tensor,
        prompt: Tensor,
        prompt_mask: Tensor,
        codes: Tensor,
        frame_text: Tensor,
        code_mask: Tensor,
        level: Tensor,
    ) -> Tensor:
        """Logits [B, T, codebook_size] for codec layer `level[b]` of every target frame.

        text [B, Tt] + text_mask [B, Tt]; prompt [B, L, Tp] + prompt_mask [B, Tp]; codes [B, L, T] (only
        layers < level are read) + code_mask [B, T]; frame_text [B, T] (-1 = unknown); level [B] in 1..L-1.
        Masks are True on real positions; whatever sits under a False is never read.
        """
        L = self.cfg.n_codebooks
        if codes.shape[1] != L or prompt.shape[1] != L:
            raise ValueError(f"prompt and codes must carry all {L} layers, got {prompt.shape[1]} and {codes.shape[1]}")
        if ((level < 1) | (level >= L)).any():
            raise ValueError(f"level must lie in 1..{L - 1}")
        text_mask, prompt_mask, code_mask = text_mask.bool(), prompt_mask.bool(), code_mask.bool()
        # Padding may hold anything (even out-of-range ids): replace it before any table lookup.
        text = text.masked_fill(~text_mask, 0)
        prompt = prompt.masked_fill(~prompt_mask[:, None, :], 0)
        codes = codes.masked_fill(~code_mask[:, None, :], 0)
        frame_text = frame_text.masked_fill(~code_mask, -1)
        offsets = self.layer_offsets[None, :, None]

        x_text = self.text_emb(text) + self._position(text.shape[1])
        x_text = x_text + self.segment_emb.weight[TEXT]

        x_prompt = self.code_emb(prompt + offsets).sum(dim=1) + self._position(prompt.shape[2])
        x_prompt = x_prompt + self.segment_emb.weight[PROMPT]

        known = (torch.arange(L, device=codes.device)[None, :] < level[:, None]).to(x_text.dtype)  # [B, L]
        x_code = torch.einsum("bltd,bl->btd", self.code_emb(codes + offsets), known)
        x_target = x_code + self.frame_text_emb(frame_text + 1) + self._position(codes.shape[2])
        x_target = x_target + self.segment_emb.weight[TARGET]

        x = torch.cat([x_text, x_prompt, x_target], dim=1) + self.level_emb(level - 1)[:, None, :]
        pad = ~torch.cat([text_mask, prompt_mask, code_mask], dim=1)
        h = self.encoder(self.dropout(x), src_key_padding_mask=pad)[:, -codes.shape[2] :]
        w, b = self.head_weight[level - 1], self.head_bias[level - 1]  # [B, C, H], [B, C]
        return torch.einsum("bth,bch->btc", h, w) + b[:, None, :]

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Cross-entropy on one random level per row (uniform in 1..L-1), over the real target frames.

        The mean is over frames, not rows, so long utterances weigh as much as their frames do.
        """
        codes = batch["codes"]
        B = codes.shape[0]
        level = torch.randint(1, self.cfg.n_codebooks, (B,), generator=generator).to(codes.device)
        logits = self(
            batch["text"],
            batch["text_mask"],
            batch["prompt"],
            batch["prompt_mask"],
            codes,
            batch["frame_text"],
            batch["code_mask"],
            level,
        )
        target = codes[torch.arange(B, device=codes.device), level]  # [B, T]
        mask = batch["code_mask"].bool()
        loss = F.cross_entropy(logits[mask].float(), target[mask])
        with torch.no_grad():
            acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
        return loss, {"nar_loss": float(loss.detach()), "nar_acc": float(acc)}

    # --------------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def generate(
        self, text: list[int], prompt: np.ndarray, level0: np.ndarray, frame_text: np.ndarray | None = None
    ) -> np.ndarray:
        """Layers 1..L-1 for the frames of `level0`, greedily, each layer conditioned on those below.

        text: text-token indices; prompt [L, Tp]; level0 [T]; frame_text [T] or None (plain mode).
        Returns codes [L, T] (int64) whose layer 0 is `level0` unchanged.
        """
        L, T = self.cfg.n_codebooks, len(level0)
        codes = np.zeros((L, T), dtype=np.int64)
        codes[0] = np.asarray(level0, dtype=np.int64)
        if T == 0:
            return codes
        batch = {
            k: v.to(self.device)
            for k, v in collate_nar(
                [{"text": text, "prompt": prompt, "codes": codes, "frame_text": frame_text}]
            ).items()
        }
        was_training = self.training
        self.eval()
        try:
            for level in range(1, L):
                logits = self(
                    batch["text"],
                    batch["text_mask"],
                    batch["prompt"],
                    batch["prompt_mask"],
                    batch["codes"],
                    batch["frame_text"],
                    batch["code_mask"],
                    torch.tensor([level], device=self.device),
                )
                batch["codes"][0, level] = logits[0].argmax(-1)
        finally:
            self.train(was_training)
        return batch["codes"][0].cpu().numpy()

    # ----------------------------------------------------------------------------------- storage

    def save_pretrained(self, directory: str | Path, max_shard_size: int | str = "5GB") -> None:
        """config.json + the weights as safetensors in the Hugging Face layout: one model.safetensors, or,
        when they exceed `max_shard_size` (bytes, or a string like "4MB"), model-0000i-of-0000N.safetensors
        shards + model.safetensors.index.json. Weight files of an earlier save in `directory` are replaced."""
        from huggingface_hub import save_torch_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"model_type": "sa_ray.nar", **asdict(self.cfg)}, indent=1))
        # clone: a tensor must own its storage (DeepSpeed's gathered parameters are views into one flat buffer)
        save_torch_state_dict(
            {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            directory,
            max_shard_size=max_shard_size,
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> NARModel:
        """The saved model (either weights layout), in eval mode (call .train() to go on training it)."""
        from huggingface_hub import load_torch_model

        directory = Path(directory)
        data = json.loads((directory / CONFIG_NAME).read_text())
        if data.pop("model_type", None) != "sa_ray.nar":
            raise ValueError(f"{directory}/{CONFIG_NAME} does not describe a NAR model")
        model = cls(NARConfig(**data))
        # safe=True: safetensors only (an index naming anything else is refused), never unpickles.
        load_torch_model(model, directory, strict=True, safe=True, map_location="cpu")
        return model.to(device).eval()


def collate_nar(examples: list[dict]) -> dict[str, Tensor]:
    """Examples {"text": list[int], "prompt": [L, Tp], "codes": [L, T], "frame_text": [T] or None} ->
    right-padded tensors (pads are 0 for ids, -1 for frame_text, False in the masks) for forward/loss."""
    if not examples:
        raise ValueError("collate_nar needs at least one example")
    prompts = [np.asarray(e["prompt"], dtype=np.int64) for e in examples]
    codes = [np.asarray(e["codes"], dtype=np.int64) for e in examples]
    L = codes[0].shape[0]
    for p, c in zip(prompts, codes):
        if p.ndim != 2 or c.ndim != 2 or p.shape[0] != L or c.shape[0] != L:
            raise ValueError(f"prompts and codes must all be [L={L}, frames] arrays, got {p.shape} and {c.shape}")
    B = len(examples)
    Tt = max(len(e["text"]) for e in examples)
    Tp = max(p.shape[1] for p in prompts)
    T = max(c.shape[1] for c in codes)
    out = {
        "text": torch.zeros(B, Tt, dtype=torch.long),
        "text_mask": torch.zeros(B, Tt, dtype=torch.bool),
        "prompt": torch.zeros(B, L, Tp, dtype=torch.long),
        "prompt_mask": torch.zeros(B, Tp, dtype=torch.bool),
        "codes": torch.zeros(B, L, T, dtype=torch.long),
        "code_mask": torch.zeros(B, T, dtype=torch.bool),
        "frame_text": torch.full((B, T), -1, dtype=torch.long),
    }
    for i, (e, p, c) in enumerate(zip(examples, prompts, codes)):
        n = len(e["text"])
        out["text"][i, :n] = torch.as_tensor(np.asarray(e["text"], dtype=np.int64))
        out["text_mask"][i, :n] = True
        out["prompt"][i, :, : p.shape[1]] = torch.from_numpy(p)
        out["prompt_mask"][i, : p.shape[1]] = True
        out["codes"][i, :, : c.shape[1]] = torch.from_numpy(c)
        out["code_mask"][i, : c.shape[1]] = True
        if e.get("frame_text") is not None:
            ft = np.asarray(e["frame_text"], dtype=np.int64)
            if ft.shape != (c.shape[1],):
                raise ValueError(f"frame_text has shape {ft.shape}, the codes have {c.shape[1]} frames")
            out["frame_text"][i, : c.shape[1]] = torch.from_numpy(ft)
    return out
