"""Evaluation and cross-validation reports: summary (cv_summary.json), plots, md/html.

The prediction table itself lives in :mod:`medconvnext.results.table` (re-exported here).

Typical use::

    from medconvnext.reports import read_predictions, summarize, save_summary, write_report

    preds = read_predictions("runs/exp/oof_predictions.csv")
    summary = summarize(preds, n_boot=1000, seed=0)
    save_summary("runs/exp/cv_summary.json", summary)
    write_report("runs/exp", preds, summary, training_logs={"fold_0": "runs/exp/fold_0/metrics.jsonl"})
"""

from medconvnext.reports.render import REPORT_FILES, write_report
from medconvnext.reports.summary import save_summary, summarize
from medconvnext.reports.training_log import read_training_log
from medconvnext.results.table import Predictions, predictions_from_rows, read_predictions, write_predictions

__all__ = [
    "Predictions",
    "REPORT_FILES",
    "predictions_from_rows",
    "read_predictions",
    "read_training_log",
    "save_summary",
    "summarize",
    "write_predictions",
    "write_report",
]
