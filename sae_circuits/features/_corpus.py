"""Reading a corpus into token windows: text files, JSON lines, Hugging Face datasets.

A corpus is one of:

- a ``.txt`` file: **one document per non-empty line** (blank lines are skipped);
- a ``.jsonl`` file: one JSON object per line with a ``"text"`` field;
- a local dataset folder (``datasets.Dataset.save_to_disk``, or parquet / JSON lines files
  ``datasets.load_dataset`` reads) or a Hugging Face dataset name, read with
  ``datasets`` (streamed, the ``"text"`` column).

Each document is tokenized as a prompt (BOS as the model's default) and cut into windows of at
most ``context_len`` tokens (every window after the first of a document starts again with BOS
when the model prepends one). The order is deterministic, so a resumed run skips exactly the
windows a checkpoint holds.

Example:
    >>> for window in token_windows(model, iter_texts("corpus.txt"), context_len=64):
    ...     window.shape        # (n,) with n <= 64
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.prompts import to_tokens

__all__ = ["iter_texts", "token_windows"]

logger = logging.getLogger(__name__)


def iter_texts(source: str | Path, *, split: str = "train", field: str = "text") -> Iterator[str]:
    """The documents of a corpus, in order.

    Args:
        source: A ``.txt`` / ``.jsonl`` file, a local dataset folder or a dataset name.
        split: The dataset split (datasets only).
        field: The text field (JSON lines and datasets).

    Yields:
        Document texts (non-empty).

    Raises:
        FileNotFoundError: Neither a file, a folder nor a loadable dataset name.
        ValueError: A JSON line that is not an object with a string ``field``.
    """
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            yield from _jsonl(path, field)
        elif path.suffix in (".txt", ".text", ""):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\n")
        else:
            raise ValueError(
                f"unknown corpus file type {path.suffix!r} of {path}; valid: .txt (one document "
                "per line), .jsonl (a 'text' field), a dataset folder or a dataset name"
            )
        return
    yield from _dataset(str(source), split, field)


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{i}: expected an object with a string {field!r} field")
            if obj[field].strip():
                yield obj[field]


def _dataset(name: str, split: str, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a SAELens dependency
        raise FileNotFoundError(f"{name!r} is no file, and `datasets` is not installed") from e
    path = Path(name)
    try:
        if path.is_dir() and (path / "dataset_info.json").is_file():
            data: Iterable = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        else:
            data = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise FileNotFoundError(
            f"cannot read corpus {name!r}: not a .txt/.jsonl file, and datasets says "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from e
    for row in data:
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"dataset {name!r} rows need a string {field!r} column")
        if text.strip():
            yield text


def token_windows(
    model: HookedTransformer, texts: Iterable[str], *, context_len: int
) -> Iterator[torch.Tensor]:
    """Tokenize documents and cut them into windows of at most ``context_len`` tokens.

    Args:
        model: The model (its tokenizer and BOS convention).
        texts: Documents.
        context_len: Longest window (at least 2).

    Yields:
        ``(n,)`` int64 token ids, ``n <= context_len``.
    """
    if context_len < 2:
        raise ValueError(f"context_len must be at least 2, got {context_len}")
    context_len = min(context_len, model.cfg.n_ctx)
    for text in texts:
        ids = _ids(model, text)
        if ids is None:
            continue
        bos = ids[:1] if _starts_with_bos(model, ids) else ids[:0]
        body = ids[len(bos) :]
        step = context_len - len(bos)
        for start in range(0, max(len(body), 1), step):
            window = torch.cat([bos, body[start : start + step]])
            if len(window) > len(bos):
                yield window


def _ids(model: HookedTransformer, text: str) -> torch.Tensor | None:
    tok = model.tokenizer
    if tok is None:
        raise TypeError("a text corpus needs model.tokenizer, and this model has none")
    try:  # long documents: tokenize without the n_ctx check, windows come after
        return to_tokens(model, text)
    except ValueError:
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if not ids:
            return None
        if model.cfg.default_prepend_bos and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
        return torch.tensor(ids, dtype=torch.long)


def _starts_with_bos(model: HookedTransformer, ids: torch.Tensor) -> bool:
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return bool(model.cfg.default_prepend_bos and bos is not None and int(ids[0]) == bos)
