"""Getting the files of a transcoder config: the Hugging Face cache, a download, or a local copy.

Every file a config needs is asked for by repository and path, so that when it cannot be had
(offline, gated repository, missing from the cache) the error names exactly what was needed and
how to provide it:

* download it into the Hugging Face cache where there is network (``hf download <repo> <file>``);
  the cache folder is ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``);
* or keep a copy of the repository's files in a folder and pass it as ``local_dir=`` to
  ``load_transcoders``, or set the environment variable ``SAE_CIRCUITS_TRANSCODERS_DIR`` to a
  folder holding one such copy per config name (``$SAE_CIRCUITS_TRANSCODERS_DIR/<config name>/``).

Example:
    >>> fetch = Fetcher("gemma-2-2b-gemmascope", local_dir=None)
    >>> fetch.file("google/gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76/params.npz")
    PosixPath('.../snapshots/<commit>/layer_0/width_16k/average_l0_76/params.npz')
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_DIR", "Fetcher", "WeightsUnavailableError", "resolve_local_dir"]

logger = logging.getLogger(__name__)

#: Environment variable: a folder holding ``<config name>/`` copies of the configs' files.
ENV_DIR = "SAE_CIRCUITS_TRANSCODERS_DIR"


class WeightsUnavailableError(FileNotFoundError):
    """A file a transcoder config needs is neither on disk nor downloadable (the message says how
    to provide it)."""


def resolve_local_dir(config_name: str, local_dir: str | os.PathLike[str] | None) -> Path | None:
    """The folder to read a config's files from instead of the Hugging Face cache, if any.

    Args:
        config_name: The config's name.
        local_dir: The ``local_dir=`` argument (wins over the environment variable).

    Returns:
        ``local_dir``, else ``$SAE_CIRCUITS_TRANSCODERS_DIR/<config_name>`` if that folder
        exists, else ``None`` (use the Hugging Face cache / download).

    Raises:
        FileNotFoundError: ``local_dir`` is given but is not a folder.
    """
    if local_dir is not None:
        folder = Path(local_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"local_dir {str(folder)!r} is not a folder; it must hold a copy of the "
                "repository's files at their paths in the repository"
            )
        return folder
    env = os.environ.get(ENV_DIR)
    if env:
        folder = Path(env).expanduser() / config_name
        if folder.is_dir():
            logger.info("reading the files of %s from %s (%s)", config_name, folder, ENV_DIR)
            return folder
        logger.debug(
            "%s is set but %s does not exist; using the Hugging Face cache", ENV_DIR, folder
        )
    return None


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _reason(exc: BaseException, repo: str, revision: str | None) -> str:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return (
            f"the repository is gated: accept its conditions on https://huggingface.co/{repo} and "
            "log in (`hf auth login`, or set the HF_TOKEN environment variable)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return "the repository does not exist or is private (log in if it is private)"
    if isinstance(exc, RevisionNotFoundError):
        return f"the repository has no revision {revision!r}"
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or _offline():
        if _offline():
            return (
                "offline mode is on (HF_HUB_OFFLINE) and the file is not in the Hugging Face "
                f"cache {_hf_cache()!r}"
            )
        return (
            f"the Hub could not be reached and the file is not in the Hugging Face cache "
            f"{_hf_cache()!r} ({exc})"
        )
    if isinstance(exc, EntryNotFoundError):
        return "the repository has no such file"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Fetcher:
    """Gets files of a config's repositories, from ``local_dir`` or through ``huggingface_hub``.

    Attributes:
        config_name: The config's name (for messages and the environment-variable layout).
        local_dir: A folder with a copy of the repository's files, or ``None``.
    """

    config_name: str
    local_dir: Path | None

    def file(self, repo: str, filename: str, revision: str | None = None) -> Path:
        """A local path of ``filename`` in ``repo`` (downloaded into the cache if needed).

        Raises:
            WeightsUnavailableError: Not in ``local_dir``, or not cached and not downloadable.
        """
        if self.local_dir is not None:
            path = self.local_dir / filename
            if not path.is_file():
                raise WeightsUnavailableError(
                    f"{str(path)!r} does not exist: the local copy {str(self.local_dir)!r} of "
                    f"{repo} for transcoder config {self.config_name!r} must hold the "
                    f"repository's file {filename!r} at that path"
                )
            return path
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
        except Exception as exc:
            raise self.unavailable(repo, [filename], revision, exc) from exc

    def unavailable(
        self,
        repo: str,
        filenames: list[str],
        revision: str | None,
        exc: BaseException | None,
    ) -> WeightsUnavailableError:
        """The error for files that cannot be had, with the ways to provide them."""
        rev = f" (revision {revision})" if revision else ""
        what = filenames[0] if len(filenames) == 1 else f"{len(filenames)} files: {filenames}"
        reason = _reason(exc, repo, revision) if exc is not None else "it is not available"
        rev_arg = f" --revision {revision}" if revision else ""
        return WeightsUnavailableError(
            f"transcoder config {self.config_name!r} needs {what!r} from the Hugging Face "
            f"repository {repo!r}{rev}, but {reason}. To provide it: (1) load the config once "
            f"where there is network (the files go into the Hugging Face cache "
            f"{_hf_cache()!r}; set HF_HUB_CACHE or HF_HOME before starting Python to use another "
            f"cache folder), or download this file with `hf download {repo} {filenames[0]}"
            f"{rev_arg}`, or (2) copy the repository's files into a folder "
            f"FOLDER (same relative paths, e.g. FOLDER/{filenames[0]}) and pass "
            f"load_transcoders({self.config_name!r}, local_dir=FOLDER), or set {ENV_DIR}=DIR "
            f"with the copy in DIR/{self.config_name}/"
        )
