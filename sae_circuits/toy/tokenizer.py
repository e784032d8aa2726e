"""A word-level tokenizer built offline (no hub access), for toy vocabularies.

TransformerLens' ``set_tokenizer`` and Hugging Face's ``from_pretrained`` reach for the hub; a
model built from a config can instead be given ``model.tokenizer = word_tokenizer(words)``.

Example:
    >>> tok = word_tokenizer(["<bos>", "<unk>", "the", "capital"], bos="<bos>", unk="<unk>")
    >>> tok("the capital")["input_ids"]
    [2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["word_tokenizer"]


def word_tokenizer(words: Sequence[str], *, bos: str, unk: str) -> PreTrainedTokenizerFast:
    """A whitespace-split tokenizer whose id ``i`` is ``words[i]``.

    Args:
        words: The vocabulary, in id order (no duplicates, no whitespace inside a word).
        bos: The beginning-of-sequence word (must be in ``words``).
        unk: The word unknown words map to (must be in ``words``).

    Returns:
        A ``transformers`` fast tokenizer usable as ``HookedTransformer.tokenizer``.
    """
    vocab = {w: i for i, w in enumerate(words)}
    if len(vocab) != len(words):
        raise ValueError("word_tokenizer: the vocabulary has duplicate words")
    for special in (bos, unk):
        if special not in vocab:
            raise ValueError(f"word_tokenizer: {special!r} is not in the vocabulary")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # special words match whole words only (else "t11" would split into "t1" + "1")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=AddedToken(bos, single_word=True, normalized=False),
        unk_token=AddedToken(unk, single_word=True, normalized=False),
    )
