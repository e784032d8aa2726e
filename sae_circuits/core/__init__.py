"""Floor 0: what every other part of the package stands on, and nothing of theirs.

* :mod:`.hooks`: hook points of a ``HookedTransformer`` (real and the virtual
  ``mlp.hook_in``/``mlp.hook_out``), resolved with clear errors and added only for a scope;
* :mod:`.prompts`: text or token ids, checked against the model;
* :mod:`.files`: atomic file writes;
* :mod:`.progress`: the progress-bar rule (only on a terminal);
* :mod:`.devices`: the default device.

Example:
    >>> from sae_circuits.core import resolve_hook, scoped_hooks, to_tokens
    >>> site = resolve_hook(model, "blocks.0.mlp.hook_in")
"""

from sae_circuits.core.devices import default_device
from sae_circuits.core.files import atomic_write
from sae_circuits.core.hooks import (
    INPUT_HOOK_SUFFIXES,
    OUTPUT_HOOK_SUFFIXES,
    HookNotFoundError,
    HookSite,
    resolve_hook,
    scoped_hooks,
)
from sae_circuits.core.progress import progress_bar, show_progress
from sae_circuits.core.prompts import Prompt, to_tokens, token_strings

__all__ = [
    "INPUT_HOOK_SUFFIXES",
    "OUTPUT_HOOK_SUFFIXES",
    "HookNotFoundError",
    "HookSite",
    "Prompt",
    "atomic_write",
    "default_device",
    "progress_bar",
    "resolve_hook",
    "scoped_hooks",
    "show_progress",
    "to_tokens",
    "token_strings",
]
