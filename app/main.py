"""``ferkit-app``: the desktop demo. ``python -m app`` does the same.

    ferkit-app                      camera if there is one, else the sample video (with a notice)
    ferkit-app FILE|DIR             a video, an image or a folder of images
    ferkit-app --source FILE|DIR    the same ('camera' for the camera)
    ferkit-app --weights NAME       start with these weights (a shipped name or a checkpoint .pt)
    ferkit-app --device cpu|cuda    override the automatic device choice
    ferkit-app --selftest           load every shipped model, run the face pipeline on bundled
                                    samples offscreen, print a JSON summary, exit 0/1
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferkit-app", description="ferkit desktop demo: live facial expression "
                                "recognition, identity similarity, ConvFLU gates and expression synthesis.")
    p.add_argument("path", nargs="?", help="video file, image file or folder of images to open")
    p.add_argument("--source", help="video file, image file or folder of images; 'camera' for the camera")
    p.add_argument("--weights", help="weights to start with (shipped name or training checkpoint)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="inference device (default: auto)")
    p.add_argument("--selftest", action="store_true", help="check the installation offscreen and exit")
    return p


def source_of(args: argparse.Namespace) -> Optional[str]:
    """What to open first: the positional path, else ``--source``, else ``$FERKIT_APP_SOURCE``."""
    return args.path or args.source or os.environ.get("FERKIT_APP_SOURCE")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.path and args.source and args.path != args.source:
        parser.error("give the source either as PATH or as --source, not both")
    if args.selftest:
        from app.selftest import run_selftest

        return run_selftest(device=args.device or "auto")

    from PySide6.QtWidgets import QApplication

    from app.errors import install_excepthook, setup_logging

    setup_logging()
    install_excepthook()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ferkit-app")
    app.setOrganizationName("ferkit")
    from app.main_window import MainWindow

    window = MainWindow(device=args.device, weights=args.weights)
    window.show()
    window.start_default_source(source_of(args))
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
