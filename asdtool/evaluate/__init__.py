"""Judging scores: the official metrics, reports and challenge submissions.

`metrics` holds the official DCASE Task 2 figures and the decision thresholds, `evaluation` the
evaluate stage of a score folder, `report` the paper-style tables, `submit` the submission folder
and its check.
"""
