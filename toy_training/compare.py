"""Compare a retrained toy-facts folder with the shipped one: ``python -m toy_training.compare A B``.

Files are compared byte for byte; safetensors files that differ are compared tensor by tensor
(largest difference relative to the largest value), JSON files key by key. With ``--log``, the
behaviour (accuracies, replacement scores, swap numbers of the training summary) is printed side
by side with the shipped run's. Exit status 0 when every shipped file is reproduced exactly, 1
otherwise (training on another CPU, or another thread count, rounds differently and ends in other
weights; see docs/toy_model.md).

Example:
    $ python -m toy_training.compare out/toy-facts sae_circuits/toy/weights/toy-facts \
          --log docs/toy_training_log.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file


def compare(new: Path, shipped: Path) -> list[str]:
    """Lines describing every shipped file that the new folder does not reproduce exactly."""
    problems = []
    for ref in sorted(p for p in shipped.rglob("*") if p.is_file()):
        rel = ref.relative_to(shipped)
        got = new / rel
        if not got.is_file():
            problems.append(f"{rel}: missing")
            continue
        if got.read_bytes() == ref.read_bytes():
            continue
        if ref.suffix == ".safetensors":
            a, b = load_file(got), load_file(ref)
            for key in sorted(set(a) | set(b)):
                if key not in a or key not in b or a[key].shape != b[key].shape:
                    problems.append(f"{rel}: tensor {key} missing or of another shape")
                    continue
                scale = float(b[key].abs().max()) or 1.0
                diff = float((a[key].double() - b[key].double()).abs().max())
                if diff:
                    problems.append(
                        f"{rel}: {key} differs by {diff / scale:.2e} of its largest value"
                    )
        elif ref.suffix == ".json":
            a, b = json.loads(got.read_text()), json.loads(ref.read_text())
            keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else []
            changed = [k for k in keys if a.get(k) != b.get(k)]
            problems.append(f"{rel}: JSON differs" + (f" at {changed[:8]}" if changed else ""))
        else:
            problems.append(f"{rel}: bytes differ")
    return problems


def _numbers(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def behaviour(new_log: Path, shipped_log: Path) -> list[str]:
    """The training summaries' numbers (timings left out), shipped vs retrained."""
    a = _numbers(json.loads(new_log.read_text())["summary"])
    b = _numbers(json.loads(shipped_log.read_text())["summary"])
    return [
        f"{key:<48} shipped {b[key]:>9.4g}  retrained {a[key]:>9.4g}"
        for key in sorted(b)
        if key in a and not key.startswith("timings.")
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("new", type=Path, help="the retrained folder")
    parser.add_argument("shipped", type=Path, help="the shipped folder")
    parser.add_argument(
        "--log", type=Path, help="the shipped training log (docs/toy_training_log.json)"
    )
    args = parser.parse_args(argv)
    if args.log is not None and (args.new / "training_log.json").is_file():
        print("behaviour:")
        for line in behaviour(args.new / "training_log.json", args.log):
            print("  " + line)
    problems = compare(args.new, args.shipped)
    for line in problems:
        print(line)
    print("reproduced exactly" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
