"""The tiny LLMs' tokenizer: byte-level BPE trained offline on generated words.

Nothing is downloaded: a seeded generator makes a lexicon of pronounceable pseudo-words
(syllables from fixed lists), Zipf-distributed sentences of them make the training text,
and the ``tokenizers`` library trains a byte-level BPE on that text. Byte-level means any
text (other languages, digits, emoji) still encodes, as bytes, so no prompt ever meets
``<unk>``.

Conventions, chosen to match Llama's tokenizers as vLLM and transformers use them:

- ids 0-5 are the special tokens ``<unk> <s> </s> <pad> <|im_start|> <|im_end|>``;
- the post-processor adds ``<s>`` (BOS) in front of every encoded text when special tokens
  are asked for (``encode(text)``, transformers' ``tokenizer(text)``, vLLM's
  ``/v1/completions``), so a completion prompt of n text tokens counts n + 1 prompt tokens;
- the chat template writes ``<s>`` itself and vLLM's chat path encodes the rendered text
  without special tokens, so chat prompts get exactly one BOS too.

``train_tokenizer`` is deterministic: same spec, same ``tokenizer.json`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, TURN_START, TURN_END)  # ids 0..5, in this order
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3

# ChatML-style turns between the two special tokens; one BOS at the very start. Roles
# other than system/user/assistant are refused, as most instruct models' templates do.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('roles are system, user and assistant') }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_ONSETS = ("", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br",
           "st", "tr", "kl", "sh", "ch", "th")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st")


@dataclass(frozen=True)
class TokenizerSpec:
    """How the tokenizer is made; ``vocab_size`` is exact (the model's embedding rows)."""

    vocab_size: int = 1024
    seed: int = 1234
    lexicon_words: int = 3000
    sentences: int = 12000
    model_max_length: int = 2048

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_lexicon(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` distinct pseudo-words of one to four syllables, most frequent first."""
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.4, 0.25, 0.1]))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        words.setdefault(word)
    return list(words)


def training_text(spec: TokenizerSpec) -> Iterator[str]:
    """The generated corpus, one sentence per item (word ranks Zipf-distributed)."""
    rng = np.random.default_rng(spec.seed)
    lexicon = make_lexicon(rng, spec.lexicon_words)
    weights = 1.0 / np.arange(1, len(lexicon) + 1) ** 1.1
    weights /= weights.sum()
    for _ in range(spec.sentences):
        ids = rng.choice(len(lexicon), size=int(rng.integers(4, 19)), p=weights)
        words = [lexicon[i] for i in ids]
        words[0] = words[0].capitalize()
        if rng.random() < 0.1:  # a few numbers, so digits get merges of their own
            words.insert(int(rng.integers(len(words))), str(int(rng.integers(0, 2000))))
        yield " ".join(words) + ("?" if rng.random() < 0.15 else ".")


def train_tokenizer(spec: TokenizerSpec) -> Any:
    """A trained ``tokenizers.Tokenizer`` with exactly ``spec.vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(spec), trainer=trainer, length=spec.sentences)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, BOS_ID)],
            ),
        ]
    )
    got = tokenizer.get_vocab_size()
    if got != spec.vocab_size:
        raise ValueError(f"trained {got} tokens, not {spec.vocab_size}: enlarge the corpus")
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, token
    return tokenizer


def tokenizer_config(spec: TokenizerSpec) -> dict[str, Any]:
    """``tokenizer_config.json``: the fast tokenizer straight from tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        # Informational for Llama-style loaders; the post-processor already adds BOS.
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.model_max_length,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }


def special_tokens_map() -> dict[str, Any]:
    return {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
