"""Training: objective, loop, checkpoints, Stochastic Length and FLOP counting."""

from genrec.train.flops import FlopCounter
from genrec.train.run import evaluate_run, train
from genrec.train.trainer import Trainer

__all__ = ["FlopCounter", "Trainer", "evaluate_run", "train"]
