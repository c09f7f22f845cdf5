"""Open-vocabulary detection through transformers (OWL-ViT or OWLv2, by the folder's ``config.json``) from a
local folder: the detector behind 3-in-1's S when UniDet/detectron2 is not available.

Not the official detector (UniDet RS200, 722 closed labels): S numbers from it are labelled by ``info.name``.
The queries are the object words the scorer looks for; each detection's ``label`` is its query string, so
the official exact-label match works unchanged. Boxes come back in the input image's pixels (OWLv2 pads the image
to a square at the bottom/right, so its boxes are scaled by the padded side), sorted by descending score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from ..provenance import BackendInfo
from ._hf import CONFIG, PREPROCESSOR, WEIGHTS, fingerprint, is_random_init, pick_device, require_transformers, \
    version_string
from .manifest import Manifest, RequiredFile
from .protocols import Detection

MANIFEST = Manifest("owl-detector", (
    CONFIG, WEIGHTS, PREPROCESSOR,
    RequiredFile.of("tokenizer.json", "vocab.json", purpose="CLIP BPE vocabulary"),
    RequiredFile.of("tokenizer.json", "merges.txt", purpose="CLIP BPE merges"),
), origin="an OwlViTForObjectDetection / Owlv2ForObjectDetection checkpoint saved with save_pretrained, "
          "e.g. google/owlv2-base-patch16-ensemble")


class OwlDetector:
    vocabulary = None  # open vocabulary: detects the queried words

    def __init__(self, model, processor, info: BackendInfo, threshold: float = 0.1):
        self.model, self.processor, self.info, self.threshold = model, processor, info, threshold
        self.pads_to_square = model.config.model_type == "owlv2"

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, threshold: float = 0.1) -> "OwlDetector":
        root = MANIFEST.check(path)
        require_transformers(MANIFEST.backend)
        # heavy: the rewards import without transformers and torch
        from transformers import AutoConfig, Owlv2ForObjectDetection, Owlv2Processor, OwlViTForObjectDetection, \
            OwlViTProcessor

        model_type = AutoConfig.from_pretrained(root, local_files_only=True).model_type
        if model_type == "owlv2":
            model_cls, proc_cls = Owlv2ForObjectDetection, Owlv2Processor
        elif model_type == "owlvit":
            model_cls, proc_cls = OwlViTForObjectDetection, OwlViTProcessor
        else:
            raise ValueError(f"owl-detector: {root}/config.json has model_type {model_type!r}, expected owlvit/owlv2")
        model = model_cls.from_pretrained(root, local_files_only=True)
        model.to(pick_device(device)).eval()
        proc = proc_cls.from_pretrained(root, local_files_only=True)
        random_init = is_random_init(model.config)
        info = BackendInfo("owl-detector", version_string(model.config), "real", fallback=random_init, details={
            **fingerprint(root), "folder": root.name, "model_type": model_type, "threshold": threshold,
            "random_init": random_init})
        return cls(model, proc, info, threshold)

    def detect(self, image: Image.Image, queries: Sequence[str]) -> list[Detection]:
        import torch  # heavy: as transformers

        queries = list(queries)
        if not queries:
            return []
        image = image.convert("RGB")
        inputs = self.processor(text=[queries], images=image, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        with torch.no_grad():
            outputs = self.model(**inputs)
        w, h = image.size
        target = (max(w, h), max(w, h)) if self.pads_to_square else (h, w)
        post = getattr(self.processor, "post_process_grounded_object_detection", None)
        if post is not None:
            res = post(outputs=outputs, threshold=self.threshold, target_sizes=[target], text_labels=[queries])[0]
        else:  # transformers < 4.51: same boxes/scores/labels (labels index the queries), older name
            res = self.processor.post_process_object_detection(outputs=outputs, threshold=self.threshold,
                                                               target_sizes=[target])[0]
        dets = [Detection(queries[int(lab)], float(s), tuple(float(v) for v in box.tolist()))
                for s, lab, box in zip(res["scores"], res["labels"], res["boxes"])]
        return sorted(dets, key=lambda d: -d.score)
