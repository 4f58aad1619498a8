"""LeanK mask training: synthetic retrieval data, the trainer's attention, its settings and the two-stage trainer."""

from .data import PromptAnswerData, SyntheticRetrievalData
from .settings import TrainSettings
from .trainer import MaskTrainer, train_masks

__all__ = ["MaskTrainer", "PromptAnswerData", "SyntheticRetrievalData", "TrainSettings", "train_masks"]
