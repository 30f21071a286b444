"""dist-lacl: language-agnostic multilingual dense retrieval with contrastive learning, on DeepSpeed."""

__version__ = "0.1.0"
