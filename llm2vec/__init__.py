"""LLM2Vec: large language models as text encoders (BehnamGhader et al., 2024)."""

from llm2vec.bidirectional import disable_bidirectional, enable_bidirectional
from llm2vec.encoder import LLM2Vec
from llm2vec.pooling import POOLING_MODES, Pooling

__all__ = ["LLM2Vec", "Pooling", "POOLING_MODES", "enable_bidirectional", "disable_bidirectional"]
