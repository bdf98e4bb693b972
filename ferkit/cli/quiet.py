"""Keep mediapipe's / TensorFlow Lite's INFO and WARNING lines off a command's stderr.

Issue 22: every ``ferkit predict`` printed about a dozen lines such as ``INFO: Created TensorFlow
Lite XNNPACK delegate for CPU.`` and ``W0000 00:00:... inference_feedback_manager.cc:114] Feedback
manager requires a model with a single signature...``. They come from C++ (absl logging inside
mediapipe's native library), which writes straight to file descriptor 2: neither Python's logging
nor ``GLOG_minloglevel`` / ``TF_CPP_MIN_LOG_LEVEL`` reach them in the mediapipe builds ferkit
uses (0.10.x; measured: the same lines with both set). Those variables are still set (before
mediapipe is imported) for builds that honour them, and Python's absl logger is turned down.

What does silence them: :func:`native_stderr_filtered` points descriptor 2 at a pipe for the
duration of the command; a thread forwards everything to the real stderr except native INFO and
WARNING lines (absl/glog ``I``/``W`` lines, TF Lite's ``INFO:``, absl's "before InitializeLog"
notice). Errors (``E``/``F`` lines) and everything Python writes pass unchanged and at once,
progress bars (``\\r`` updates) included. ``--verbose`` leaves stderr alone; use it when chasing
a native crash, whose last words could otherwise die with the forwarding thread.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

#: native log lines that are noise for a user: absl/glog INFO and WARNING, TF Lite INFO, absl's notice,
#: and FFmpeg's decoder lines (``[h264 @ 0x55..] Invalid NAL unit size``) on a damaged video, which
#: ferkit reports itself in one line (how far the video was read, and why it stopped)
NOISE = re.compile(rb"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]*\]"
                   rb"|INFO: "
                   rb"|WARNING: All log messages before absl::InitializeLog\(\))"
                   rb"|\[[\w,.-]+ @ 0x[0-9a-f]+\] ")
#: the start of such a line, while it may still be arriving
_NOISE_START = re.compile(rb"^(?:[IW]\d{0,4}(?: |$)|INFO|WARNING: All|\[[^\]]*$)")


def quiet_native_libraries() -> None:
    """Ask the native libraries for less (effective where the build honours it); must run before
    mediapipe is imported to reach its C++ side."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from absl import logging as absl_logging  # mediapipe's Python side logs through absl
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy ``read_fd`` to ``out_fd`` line by line, dropping :data:`NOISE` lines."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        parts = re.split(rb"(\r\n|\n|\r)", pending)
        # parts: text, sep, text, sep, ..., tail (no separator yet)
        out = []
        for i in range(0, len(parts) - 1, 2):
            line, sep = parts[i], parts[i + 1]
            if not NOISE.match(line):
                out.append(line + sep)
        tail = parts[-1]
        if tail and not _NOISE_START.match(tail):
            out.append(tail)  # a progress bar or prompt without a newline: show it now
            tail = b""
        pending = tail
        if out:
            os.write(out_fd, b"".join(out))
    if pending and not NOISE.match(pending):
        os.write(out_fd, pending)


@contextlib.contextmanager
def native_stderr_filtered(enabled: bool = True) -> Iterator[None]:
    """For the ``with`` block, native INFO/WARNING lines written to descriptor 2 are dropped."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded, some IDEs)
        yield
        return
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_forward, args=(read_fd, saved), name="ferkit-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees EOF and drains
        thread.join(5.0)
        os.close(read_fd)
        os.close(saved)
