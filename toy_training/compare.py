"""Compare a retrained toy-facts folder with the shipped one: ``python -m toy_training.compare A B``.

Files are compared byte for byte; safetensors files that differ are compared tensor by tensor
(largest difference relative to the largest value), JSON files key by key. Exit status 0 when
every shipped file is reproduced exactly, 1 otherwise (with a report of what differs).

Example:
    $ python -m toy_training.compare out/toy-facts sae_circuits/toy/weights/toy-facts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("new", type=Path, help="the retrained folder")
    parser.add_argument("shipped", type=Path, help="the shipped folder")
    args = parser.parse_args(argv)
    problems = compare(args.new, args.shipped)
    for line in problems:
        print(line)
    print("reproduced exactly" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
