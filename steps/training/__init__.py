"""The ResNet classifier's training code, used by ``steps/train.py`` and ``bench/train.py``.

- ``config``: the run's hyperparameters (``TrainConfig``), logged as run params.
- ``data``: reads the cleaned data and decodes each cleaned JPEG once into memory.
- ``transforms``: the train preset (batched augmentation) and the eval preset.
- ``model``: builds the ResNet, resolves ``--weights``, freezes layers.
- ``distributed``: device choice, mixed precision and PyTorch DDP under ``torchrun``.
- ``loop``: batches, one epoch of training, evaluation, optimiser, scheduler, early stopping.
- ``checkpoint``: per-epoch checkpoints as run artifacts, and resuming from them.

The test-split evaluation (metrics, confusion matrix, per-class report) is
:mod:`steps.evaluation`, shared with the sklearn baselines.
"""
