"""Build the shapes demo's diffusers components from configs alone: no hub, no downloads.

- tokenizer: a CLIP byte-level BPE whose merges are learned here from the caption vocabulary, so
  every caption word is one token (unknown words still split into byte tokens, never fail);
- text encoder: a small ``CLIPTextModel`` trained from scratch with the UNet;
- VAE: a small ``AutoencoderKL`` between the 64 px image and the fixed 18 x 8 x 8 layout map of
  ``layout.py`` (the latent space is designed, not learned; the decoder renders it), trained
  beside the UNet in its own process;
- UNet: a small ``UNet2DConditionModel`` on the 8 x 8 map, cross-attention at 8 and 4 cells;
- scheduler: DDIM with a zero-terminal-SNR cosine schedule, v-prediction and "trailing"
  timesteps, so flat black or white backgrounds are reachable from pure noise.

Sizes were chosen for a 30-minute budget on two CPU cores; the committed run took 27 minutes
(docs/adr/0201, 0207).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from imagegen_demo_model.layout import CHANNELS, FACTOR, SCALE
from imagegen_demo_model.scenes import CAPTION_WORDS, IMAGE_SIZE

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77  # what StableDiffusionPipeline pads prompts to
TOKENIZER_WORDS = sorted({*CAPTION_WORDS, "shape", "middle", "big", "little"})

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_LENGTH,
    "projection_dim": 64,
    "hidden_act": "gelu",
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 64, 128],  # narrow at 64 and 32 px, wide at 16 and 8
    "layers_per_block": 1,
    "latent_channels": CHANNELS,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
    "mid_block_add_attention": False,
    "scaling_factor": 1.0 / SCALE,
}
assert 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1) == FACTOR
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // FACTOR,
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    "attention_head_dim": 4,  # diffusers' legacy name: this is the number of heads
    "cross_attention_dim": TEXT_CONFIG["hidden_size"],
    "norm_num_groups": 16,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (the same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on ``words`` until each word is one symbol.

    Each step merges the most frequent adjacent pair (ties broken by the pair's text), which is
    exactly the order a BPE encoder replays, so encoding a word gives back its single token.
    """
    table = _bytes_to_unicode()
    corpus = {}
    for word in words:
        chars = [table[b] for b in word.encode()]
        corpus[word] = chars[:-1] + [chars[-1] + "</w>"]
    merges: list[tuple[str, str]] = []
    while any(len(symbols) > 1 for symbols in corpus.values()):
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in corpus.values():
            counts.update(zip(symbols, symbols[1:], strict=False))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, symbols in corpus.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[word] = merged
    return merges


def write_tokenizer_files(directory: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP tokenizer covering TOKENIZER_WORDS."""
    directory.mkdir(parents=True, exist_ok=True)
    table = _bytes_to_unicode()
    base = list(table.values())
    vocab_tokens = base + [c + "</w>" for c in base]
    merges = learn_merges(TOKENIZER_WORDS)
    vocab_tokens += ["".join(pair) for pair in merges]
    vocab_tokens += [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")
    return directory


def build_tokenizer(directory: Path) -> Any:
    from transformers import CLIPTokenizer

    write_tokenizer_files(directory)
    return CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=MAX_LENGTH,
    )


def build_text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(config)


def build_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)
