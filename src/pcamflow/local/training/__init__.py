"""Local training: augmentation (:mod:`.augment`), the data path (:mod:`.dataset`), the
training loop (:mod:`.engine`), resumable checkpoints (:mod:`.checkpoint`) and the Trainer
stage with :func:`~.trainer.train_model` (:mod:`.trainer`)."""
