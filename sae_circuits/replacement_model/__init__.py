"""The local replacement model: transcoders in place of the MLPs, with a frozen error term.

Floor 2 (above :mod:`sae_circuits.transcoders`). :mod:`._semantics` is the one implementation of
what the replacement model computes at an MLP (the transcoder's reconstruction, its skip path,
and the error term); the public :func:`replacement` context manager, the clean forward pass
(:func:`clean_run`, which records what the frozen model holds fixed), the per-block replay of
attribution and the hooks of interventions and generation all call it.

Example:
    >>> with replacement(model, transcoders) as state:
    ...     logits = model(tokens)            # the original model's logits
    >>> clean = clean_run(model, tokens, check_compatible(model, transcoders), freeze=True)
"""

from sae_circuits.replacement_model._clean import FROZEN_SUFFIXES, CleanRun, clean_run
from sae_circuits.replacement_model._output import (
    ModelOutput,
    run_to_output,
    unembed,
    unembed_input_site,
    unembed_site,
)
from sae_circuits.replacement_model._replacement import ReplacementState, replacement
from sae_circuits.replacement_model._semantics import ReplacementSemantics

__all__ = [
    "FROZEN_SUFFIXES",
    "CleanRun",
    "ModelOutput",
    "ReplacementSemantics",
    "ReplacementState",
    "clean_run",
    "replacement",
    "run_to_output",
    "unembed",
    "unembed_input_site",
    "unembed_site",
]
