"""Local tokenizers built with the ``tokenizers`` library: no hub, no downloads, no training.

- CLIP: a byte-level BPE over the 256 byte symbols, each also with CLIP's end-of-word suffix
  ``</w>`` (``CLIPTokenizer`` needs a BPE model with ``end_of_word_suffix="</w>"``; a WordLevel
  model fails), no merges: every word is spelled byte by byte, nothing is ever unknown.
- T5: a Unigram model (what ``T5Tokenizer`` needs) over single characters, with and without the
  ``▁`` word-start marker; ids 0, 1, 2 are ``<pad>``, ``</s>``, ``<unk>`` as in T5.

Both are deterministic: the same calls write the same ``tokenizer.json`` bytes.
"""

from __future__ import annotations

import string
from typing import Any

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77  # what the CLIP-based pipelines pad prompts to
T5_MAX_LENGTH = 512
WORD_START = "\u2581"  # sentencepiece's word-start marker
T5_CHARS = string.ascii_letters + string.digits + string.punctuation


def clip_tokenizer() -> Any:
    """A ``transformers.CLIPTokenizer`` over a byte-level BPE built here (514 tokens)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[],
            unk_token=EOS,
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return CLIPTokenizer(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )


def t5_tokenizer() -> Any:
    """A ``transformers.T5Tokenizer`` over a character Unigram model built here."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces.append((WORD_START, -2.0))
    pieces += [(WORD_START + c, -3.0) for c in T5_CHARS]
    pieces += [(c, -4.0) for c in T5_CHARS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5Tokenizer(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )
