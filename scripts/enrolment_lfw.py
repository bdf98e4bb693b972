"""How often the app names a person right when enrolled from 1, 3 or 5 photos (LFW, the app's own code).

Why this script: the identity card's true-accept rate compares one photo with one photo; a user
enrols a person and then expects *their other photos* to be named. This measures exactly that, on
the app's enrolment path: each enrolment picture goes through
:func:`app.core.enrolment.picture_enrolment` (what ``Identity ▸ From image…`` runs), each probe photo
through :meth:`app.core.analyzer.FrameAnalyzer.analyze` (what the Inspect tab runs), and the decision
through :meth:`app.core.enrolment.EnrolmentStore.similarities` and :func:`app.core.identity.decide`
at the identity card's threshold. The people are enrolled in galleries of ``--galleries`` people at
once (1: each person alone, as in the issue's Colin Powell test; 10: a household or a small team,
where a probe can also be named wrongly as someone else). Strangers (people never enrolled, one
photo each) are shown to every gallery and measure how often a non-enrolled face gets a name: the
card's false-accept rate holds per comparison, so it grows with the pictures in the gallery.

People: LFW folders with at least ``--enrol-max`` + 1 photos (so 1, 3 and 5 pictures are compared on
the same probe photos), ``--people`` of them sampled with ``--seed``; enrolment pictures are each
person's first photos (sorted names), probes the next ``--probes``. Example::

    PYTHONPATH=. python scripts/enrolment_lfw.py --lfw ../shared/data/identity/lfw/lfw-deepfunneled \\
        --people 60 --probes 5 --strangers 60 --json /tmp/enrolment_lfw.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np


def _largest_identity(result) -> Optional[np.ndarray]:
    faces = [f for f in result.faces if f.identity is not None]
    if not faces:
        return None
    return max(faces, key=lambda f: f.box[2] * f.box[3]).identity


def write_card(name: str, rows: list[dict], people: int) -> Path:
    """The rates of a one-person gallery into the metrics of the card of ``name`` (other keys kept)."""
    from app.core.identity import ENROLMENT_RATE_METRIC
    from ferkit.models.weights import Weights, get_weights

    card = Path(get_weights(name).source)
    metrics: dict[str, float] = {"lfw_enrolment_people": people}
    for r in rows:
        metrics[f"{ENROLMENT_RATE_METRIC}{r['pictures']}"] = round(r["named_right"], 4)
        metrics[f"lfw_enrolment_strangers_named_{r['pictures']}"] = round(r["strangers_named"], 4)
    Weights.update_card(card, metrics=metrics)
    return card


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--lfw", type=Path, required=True, help="lfw-deepfunneled folder (one folder per person)")
    ap.add_argument("--people", type=int, default=60, help="people sampled (with enough photos)")
    ap.add_argument("--probes", type=int, default=5, help="probe photos per person at most")
    ap.add_argument("--sizes", default="1,3,5", help="enrolment sizes compared")
    ap.add_argument("--galleries", default="1,10", help="people enrolled at once")
    ap.add_argument("--strangers", type=int, default=60, help="people never enrolled, one photo each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--write-card", action="store_true",
                    help="store the one-person-gallery rates in the identity weights' card (metrics "
                         "lfw_enrolment_named_right_<n>, lfw_enrolment_strangers_named_<n>), which the "
                         "Identity panel quotes")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from app.core.analyzer import FrameAnalyzer
    from app.core.enrolment import EnrolmentStore, picture_enrolment
    from app.core.identity import choose_identity, decide
    from app.core.models import ModelCache
    from app.core.sources import SourceError, load_image

    sizes = sorted(int(s) for s in args.sizes.split(","))
    enrol_max = sizes[-1]
    folders = sorted(p for p in args.lfw.iterdir() if p.is_dir())
    photos = {p.name: sorted(p.glob("*.jpg")) for p in folders}
    eligible = [n for n, ph in photos.items() if len(ph) > enrol_max]
    rng = random.Random(args.seed)
    people = sorted(rng.sample(eligible, min(args.people, len(eligible))))
    others = sorted(rng.sample([n for n in photos if n not in set(people)], args.strangers))

    analyzer = FrameAnalyzer(ModelCache(), device=args.device, track=False)
    choice = choose_identity(None, None, False)
    if not choice.active:
        print(f"no calibrated identity feature: {choice.reason}", file=sys.stderr)
        return 2
    analyzer.set_identity(choice)
    t0 = time.perf_counter()

    def probe_feature(path: Path) -> Optional[np.ndarray]:
        try:
            return _largest_identity(analyzer.analyze(load_image(path), track=False))
        except SourceError:
            return None

    enrolled: dict[str, list[tuple[np.ndarray, Optional[str], Optional[np.ndarray]]]] = {}
    probes: dict[str, list[np.ndarray]] = {}
    skipped = 0
    for name in people:
        entries = []
        for path in photos[name][:enrol_max]:
            try:
                entries.append(picture_enrolment(analyzer, load_image(path), path.name))
            except SourceError:
                skipped += 1
        enrolled[name] = entries
        feats = [probe_feature(p) for p in photos[name][enrol_max:enrol_max + args.probes]]
        probes[name] = [f for f in feats if f is not None]
        skipped += sum(f is None for f in feats)
    strangers = [f for f in (probe_feature(photos[n][0]) for n in others) if f is not None]

    rows = []
    order = list(people)
    random.Random(args.seed + 1).shuffle(order)
    for size in sorted(int(g) for g in args.galleries.split(",")):
        groups = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
        for k in sizes:
            right = wrong = unknown = named_strangers = shown_strangers = 0
            for group in groups:
                store = EnrolmentStore()
                for name in group:
                    for pic, key, feat in enrolled[name][:k]:
                        store.add(name, pic, key, feat)
                for name in group:
                    for feat in probes[name]:
                        match = decide(store.similarities(feat, choice.key), choice)
                        if match is None or match.name is None:
                            unknown += 1
                        elif match.name == name:
                            right += 1
                        else:
                            wrong += 1
                for feat in strangers:
                    match = decide(store.similarities(feat, choice.key), choice)
                    named_strangers += int(match is not None and match.name is not None)
                    shown_strangers += 1
            total = right + wrong + unknown
            rows.append({"gallery_people": size, "galleries": len(groups), "pictures": k, "probes": total,
                         "named_right": right / total, "named_wrong": wrong / total, "unknown": unknown / total,
                         "stranger_decisions": shown_strangers,
                         "strangers_named": named_strangers / max(1, shown_strangers)})
    out = {"identity_weights": choice.key, "threshold": choice.threshold, "far": choice.far, "tar": choice.tar,
           "people": len(people), "min_photos": enrol_max + 1, "probes_per_person_max": args.probes,
           "seed": args.seed, "photos_without_face": skipped, "seconds": round(time.perf_counter() - t0, 1),
           "rows": rows}
    print(f"{choice.key}, threshold {choice.threshold:.4f} (FAR {choice.far}, TAR {choice.tar}); "
          f"{len(people)} people with >= {enrol_max + 1} photos; "
          f"{len(strangers)} strangers; {skipped} photos without a face; {out['seconds']} s")
    print("people enrolled  pictures each  probes  named right  named wrong  unknown  strangers named")
    for r in rows:
        print(f"{r['gallery_people']:>15}  {r['pictures']:>13}  {r['probes']:>6}  {r['named_right'] * 100:10.1f}%  "
              f"{r['named_wrong'] * 100:10.1f}%  {r['unknown'] * 100:6.1f}%  {r['strangers_named'] * 100:14.1f}%")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.write_card:
        write_card(choice.key, [r for r in rows if r["gallery_people"] == 1], len(people))
    analyzer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
