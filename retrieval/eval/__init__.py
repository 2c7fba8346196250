"""`mmsearch eval`: pairs files, the runner (Recall@K, MRR, robustness), the report."""
