"""World models: world-CLIP (``clip``) and the world VAE (``vae``), trained on renders streamed from the sampler.

Shipped checkpoints: ``sgalign/world/weights/world-clip`` and ``.../world-vae`` (see docs/WORLD_MODELS.md).
"""
from .clip import WORLD_CLIP_DIR, load_world_clip
from .data import CORRUPTIONS, caption, corrupt, render_stream, scene_stream_batch, to_tensor
from .vae import WORLD_VAE_DIR, load_world_vae

__all__ = ["WORLD_CLIP_DIR", "WORLD_VAE_DIR", "load_world_clip", "load_world_vae", "CORRUPTIONS", "caption",
           "corrupt", "render_stream", "scene_stream_batch", "to_tensor"]
