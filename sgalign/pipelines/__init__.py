"""diffusers pipelines for scene-graph-conditioned generation: SD1.5-SG and SDXL-SG."""
from .sd15_sg import StableDiffusionSGPipeline
from .sdxl_sg import StableDiffusionXLSGPipeline
from .sg_pipeline import SGPipelineBase

__all__ = ["StableDiffusionSGPipeline", "StableDiffusionXLSGPipeline", "SGPipelineBase"]
