"""Training MIMO: ``mimo-assistant train CONFIG``.

* :mod:`.config`: the configuration file (JSON or YAML) and its checks;
* :mod:`.samples`: samples from a data-builder folder or an open2d manifest;
* :mod:`.phrasings`: question and answer phrasings for manifest-built samples;
* :mod:`.features`: the disk cache of frozen-encoder features (one encode per image);
* :mod:`.augment`: box jitter, mirroring where anatomy allows, rephrasing;
* :mod:`.batches`: perspective-mixed, reproducible batches;
* :mod:`.trainer`: the accelerate training loop (checkpoints, resume, logs, NaN stop);
* :mod:`.synthetic`: a small generated data folder and tiny model for tests and smoke runs;
* :mod:`.cli`: ``add_train_arguments`` / ``run_train`` for ``mimo.cli``.

Example accelerate launcher configurations and the CPU training configuration are in
``configs/``. Importing this package imports neither torch nor accelerate.
"""
