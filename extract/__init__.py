"""Stage one: datasets, the synthetic default, backbones, proposers and feature extraction."""
