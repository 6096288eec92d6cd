"""Label-quality evaluation: error-injection sets, ProcessBench files and scores, signal runs.

- :mod:`labelers.evaluation.inject` builds solutions with a known earliest wrong step from
  GSM8K reference solutions (plus untouched correct ones), in the ProcessBench layout.
- :mod:`labelers.evaluation.processbench` reads/writes ProcessBench-format files and scores
  earliest-error predictions (acc_err, acc_cor, F1; per-step precision/recall of negatives).
- :mod:`labelers.evaluation.runner` labels a set's steps with one signal (tool, lean, mc,
  hybrid) and turns the labels into predictions.
"""
