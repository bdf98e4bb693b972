"""Qt-free logic of the desktop app: tracking, smoothing, analysis, enrolment, exports.

Kept apart from the widgets so it is tested without a display and reused by the self-test and
the benchmark, and so the GUI code only wires signals to views.
"""
