"""Evaluating MIMO: ``mimo-assistant eval --model PATH --data FOLDER_OR_MANIFEST --out report.json``.

* :mod:`.metrics`: Dice, IoU, naming through the terminology, closed-answer exact match,
  false masks (pure functions);
* :mod:`.predictors`: the model, LiteMedSAM and a reference (perfect) predictor;
* :mod:`.runner`: samples and baseline comparisons, image by image, and their aggregation;
* :mod:`.differences`: paired differences between two systems with a group-bootstrap interval;
* :mod:`.report`: report.json, report.md and the Dice-per-target chart;
* :mod:`.cli`: ``add_eval_arguments`` / ``run_eval`` for ``mimo.cli``.
"""
