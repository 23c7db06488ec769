"""One LightningModule per training stage: MNTP, SimCSE, supervised contrastive."""

from llm2vec.stages.mntp import MNTP
from llm2vec.stages.simcse import SimCSE
from llm2vec.stages.supervised import Supervised

__all__ = ["MNTP", "SimCSE", "Supervised"]
