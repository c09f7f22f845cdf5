"""diffusers pipelines for scene-graph-conditioned generation: SD1.5-SG and SDXL-SG, and building any pipeline
object from ``models.loading.load_model``'s components (``build_pipeline`` / ``load_pipeline``)."""
from .assemble import build_pipeline, load_pipeline, pipeline_class
from .sd15_sg import StableDiffusionSGPipeline
from .sdxl_sg import StableDiffusionXLSGPipeline
from .sg_pipeline import SGPipelineBase

__all__ = ["StableDiffusionSGPipeline", "StableDiffusionXLSGPipeline", "SGPipelineBase", "build_pipeline",
           "load_pipeline", "pipeline_class"]
