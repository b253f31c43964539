"""What a classifier's predictions are and what they score: the prediction table, the metrics, calibration.

A leaf below both :mod:`medconvnext.engine` (which writes tables and logs metrics while training) and
:mod:`medconvnext.reports` (which reads tables and renders their metrics); it imports neither.
"""
