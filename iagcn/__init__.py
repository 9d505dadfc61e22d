"""IA-GCN: shared plumbing for the stage packages (`extract`, `cache`, `train`, `evaluate`) and the `iagcn` CLI."""

__version__ = "0.1.0"
