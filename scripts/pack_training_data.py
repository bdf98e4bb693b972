#!/usr/bin/env python3
"""Pack the training data for the GPU machine: ``python scripts/pack_training_data.py --out packs/all``.

Writes ``../shared/data``'s FER+ splits (with votes), FER2013 labels, CK+48 and the identity sets
as lossless packs in the same folder layout (see :mod:`ferkit.data.pack`), so every recipe's
``--data`` points at ``packs/all/ferplus``, ``packs/all/ckplus48``... unchanged. ``packs/`` is
git-ignored; name it in the device tool's ``carry``. ``--synthetic`` writes tiny random data in
the same format (CI's smoke run of the campaign).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferkit.data.packing import PARTS, write_synthetic_packs, write_training_packs  # noqa: E402
from ferkit.paths import shared_data_dir  # noqa: E402

#: what may travel to the GPU machine in one call, with the checkout (~15 MB) beside it
TRAVEL_LIMIT = 64 * 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=shared_data_dir(), help="shared data root (default ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="pack folder to write, e.g. packs/all")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to pack")
    p.add_argument("--identity-size", type=int, default=64, help="side of the packed identity faces (gray)")
    p.add_argument("--synthetic", action="store_true", help="tiny random data instead of --src (smoke runs)")
    args = p.parse_args(argv)
    if args.synthetic:
        sizes = write_synthetic_packs(args.out)
    else:
        if not args.src.is_dir():
            print(f"pack: {args.src} does not exist; pass --src or --synthetic", file=sys.stderr)
            return 2
        sizes = write_training_packs(args.src, args.out, tuple(args.parts), args.identity_size,
                                     log=lambda m: print(m, file=sys.stderr))
    total = sum(sizes.values())
    for part, n in sizes.items():
        print(f"{part:10s} {n / 2**20:7.1f} MiB")
    print(f"{'total':10s} {total / 2**20:7.1f} MiB (travel limit {TRAVEL_LIMIT / 2**20:.0f} MiB with the checkout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
