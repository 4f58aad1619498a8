"""LeanK mask training: synthetic retrieval data, the trainer's attention, and the two-stage trainer."""

from .data import PromptAnswerData, SyntheticRetrievalData
from .trainer import train_masks

__all__ = ["PromptAnswerData", "SyntheticRetrievalData", "train_masks"]
