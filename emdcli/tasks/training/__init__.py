"""The parts of meta-training, one concern per module; :func:`emdcli.tasks.train.train` runs them.

- :mod:`.settings`: TrainSettings (what a run does) and the records a run reports
- :mod:`.views`: the frozen trunk on each view of the images, its maps cached on disk
- :mod:`.head`: the EMD head in torch (logits, episode loss), its features and their validation
- :mod:`.checkpoints`: the state of an unfinished run, written and read back
- :mod:`.model_folder`: MODEL_DIR before a run, the trained model's name and its training record

Nothing here imports torch at import time (each function asks :func:`~emdcli.model.trainable.require_torch`).
"""
