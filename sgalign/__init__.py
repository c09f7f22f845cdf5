"""sgalign: preference alignment of (scene-graph-conditioned) diffusion models."""
__version__ = "0.1.0"
