"""Controllers: one job each, between the state model (:mod:`app.core.state`) and the workers.

Like labelme's managers: each is a QObject that changes the state, talks to the workers and
reports through signals; the main window only wires widgets to them. ``models`` (weights, the
comparison list, worker configuration), ``sources`` (video, camera, errors), ``inspection``
(still images, export), ``enrolment`` (enrolled faces) and ``explainers`` (gates, synthesis).
"""
