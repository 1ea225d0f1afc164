"""Training: the model-agnostic loop, its batches, and checkpoints that resume bit-for-bit."""

from mahn.training.batches import epoch_order, make_batch, training_users
from mahn.training.checkpoints import load_run, load_weights, save_weights
from mahn.training.loop import make_optimizer, train, train_epoch

__all__ = ["epoch_order", "load_run", "load_weights", "make_batch", "make_optimizer", "save_weights", "train",
           "train_epoch", "training_users"]
