"""facebench metrics (torchmetrics style): ``Metric`` objects in modules by job, pure functions in
:mod:`~facebench.lightning_modules.metrics.functional`.

* :mod:`~facebench.lightning_modules.metrics.task`: :class:`TaskMetrics`, every metric of a task's targets
  (the metric names are listed there), and :func:`evaluate` from saved predictions;
* :mod:`~facebench.lightning_modules.metrics.agreement`: :class:`FleissKappa`, :class:`RaterAgreement`
  (rater agreement and the human ceiling; the maths is :mod:`facebench.core.agreement`);
* :mod:`~facebench.lightning_modules.metrics.operating_point`: per-class thresholds at a false-positive rate;
* :mod:`~facebench.lightning_modules.metrics.subgroups`: :class:`SubgroupMetrics`, per-group accuracy, TPR,
  worst-group accuracy and equal-opportunity gaps against a protected attribute;
* :mod:`~facebench.lightning_modules.metrics.functional`: metric-name conventions, summaries, threshold
  tuning, Cohen's kappa of a confusion matrix, ordinal bin centres.
"""

from facebench.lightning_modules.metrics.agreement import FleissKappa, RaterAgreement
from facebench.lightning_modules.metrics.functional import (COLUMNS, LOWER_IS_BETTER, SUMMARY_METRICS, THRESHOLD_CRITERIA,
                                                  ages_of, bin_centres, kappa_from_confusion, lower_is_better,
                                                  summarize, tune_thresholds, votes_of)
from facebench.lightning_modules.metrics.operating_point import MulticlassOperatingPoint, MultilabelOperatingPoint
from facebench.lightning_modules.metrics.subgroups import SubgroupMetrics, subgroup_rows
from facebench.lightning_modules.metrics.task import MISSING, TaskMetrics, evaluate

__all__ = ["COLUMNS", "LOWER_IS_BETTER", "MISSING", "SUMMARY_METRICS", "THRESHOLD_CRITERIA", "FleissKappa",
           "MulticlassOperatingPoint", "MultilabelOperatingPoint", "RaterAgreement", "SubgroupMetrics", "TaskMetrics", "ages_of",
           "bin_centres", "evaluate", "kappa_from_confusion", "lower_is_better", "subgroup_rows", "summarize",
           "tune_thresholds", "votes_of"]
