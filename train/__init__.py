"""Stage two: the IA-GCN heads and their training on the feature cache."""
