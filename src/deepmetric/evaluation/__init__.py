"""Zero-shot retrieval metrics (Recall@K, MAP@R, NMI) on top of a chunked faiss kNN helper."""

from deepmetric.evaluation.metrics import evaluate_embeddings, map_at_r, nmi, recall_at_k

__all__ = ["evaluate_embeddings", "map_at_r", "nmi", "recall_at_k"]
