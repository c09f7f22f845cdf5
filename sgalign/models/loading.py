"""Loading SD1.5 / SDXL (+ SG encoder) from local folders in the Hugging Face layouts -- never from a hub.

Layouts checked (the files every component needs; extra folders such as ``safety_checker/`` or ``vae_1_0/`` are
ignored):

* ``sd15`` (``stable-diffusion-v1-5``): model_index.json, scheduler/, text_encoder/, tokenizer/, unet/, vae/;
* ``sdxl`` (``stable-diffusion-xl-base-1.0``): the same plus text_encoder_2/ and tokenizer_2/;
* SG encoder: a ``sg_encoder/`` folder (config.json + diffusion_pytorch_model.safetensors), a folder given
  explicitly, or LAION-SG's ``.pt`` checkpoint (faithful mode, loaded strictly).

Weights must be safetensors (plain, ``.{variant}`` or sharded with an ``.index.json``). A missing file raises
``MissingModelFileError`` naming every missing file and what it is for.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .sg_encoder import SGEncoder

_TRANSFORMERS_WEIGHTS = "model"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"

# component -> (what it is for, weights file stem or None)
_COMPONENTS = {
    "scheduler": ("the noise scheduler", None),
    "text_encoder": ("the (first) CLIP text encoder", _TRANSFORMERS_WEIGHTS),
    "tokenizer": ("the (first) CLIP tokenizer", None),
    "unet": ("the denoising UNet", _DIFFUSERS_WEIGHTS),
    "vae": ("the VAE (latents <-> images)", _DIFFUSERS_WEIGHTS),
    "text_encoder_2": ("SDXL's second CLIP text encoder (OpenCLIP bigG, with projection)", _TRANSFORMERS_WEIGHTS),
    "tokenizer_2": ("SDXL's second CLIP tokenizer", None),
}
ARCH_COMPONENTS = {
    "sd15": ("scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sdxl": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"),
}


class MissingModelFileError(UserError, FileNotFoundError):
    """A model folder lacks files; the message lists each one and what it is for (exit 2 in every command)."""


def detect_arch(path: str | Path) -> str:
    """"sdxl" if the folder has a second text encoder (folder or model_index entry), else "sd15"."""
    path = Path(path)
    index = path / "model_index.json"
    if index.is_file():
        return "sdxl" if "text_encoder_2" in json.loads(index.read_text()) else "sd15"
    return "sdxl" if (path / "text_encoder_2").is_dir() else "sd15"


def _weights_present(folder: Path, stem: str, variant: str | None) -> bool:
    names = [f"{stem}.safetensors", f"{stem}.safetensors.index.json"]
    if variant:
        names += [f"{stem}.{variant}.safetensors", f"{stem}.safetensors.index.{variant}.json"]
    return any((folder / n).is_file() for n in names)


def missing_files(path: str | Path, arch: str, variant: str | None = None) -> list[str]:
    """Every file of the ``arch`` layout that ``path`` lacks, as "relative/path (what it is for)"."""
    if arch not in ARCH_COMPONENTS:
        raise ValueError(f"arch must be one of {tuple(ARCH_COMPONENTS)}, got {arch!r}")
    path = Path(path)
    missing = []
    if not (path / "model_index.json").is_file():
        missing.append("model_index.json (the pipeline's component index)")
    for name in ARCH_COMPONENTS[arch]:
        what, stem = _COMPONENTS[name]
        folder = path / name
        if name == "scheduler":
            if not (folder / "scheduler_config.json").is_file():
                missing.append(f"scheduler/scheduler_config.json ({what})")
        elif name.startswith("tokenizer"):
            if not ((folder / "tokenizer.json").is_file() or
                    ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
                missing.append(f"{name}/vocab.json + {name}/merges.txt or {name}/tokenizer.json ({what})")
        else:
            if not (folder / "config.json").is_file():
                missing.append(f"{name}/config.json ({what}: configuration)")
            if not _weights_present(folder, stem, variant):
                v = f" or {stem}.{variant}.safetensors" if variant else ""
                missing.append(f"{name}/{stem}.safetensors{v} ({what}: weights, safetensors)")
    return missing


def check_layout(path: str | Path, arch: str | None = None, variant: str | None = None) -> str:
    """Raise ``MissingModelFileError`` unless ``path`` is a complete ``arch`` folder; returns the arch."""
    path = Path(path)
    if not path.is_dir():
        raise MissingModelFileError(f"model folder not found: {path}")
    arch = arch or detect_arch(path)
    missing = missing_files(path, arch, variant)
    if missing:
        layout = "stable-diffusion-xl-base-1.0" if arch == "sdxl" else "stable-diffusion-v1-5"
        raise MissingModelFileError(f"model folder {path} is not a complete {arch} folder ({layout} layout); "
                                    f"missing: {'; '.join(missing)}")
    return arch


def load_components(path: str | Path, arch: str | None = None, *, torch_dtype: Any = None,
                    variant: str | None = None) -> dict[str, Any]:
    """The base components of a local ``sd15``/``sdxl`` folder, each loaded by its own class (offline)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    arch = check_layout(path, arch, variant)

    def var(name: str) -> str | None:  # use the variant only where the plain file is absent
        stem = _COMPONENTS[name][1]
        return None if _weights_present(path / name, stem, None) else variant

    sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    sched_cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None)
    if sched_cls is None:
        raise ValueError(f"{path / 'scheduler' / 'scheduler_config.json'}: unknown scheduler class "
                         f"{sched_cfg.get('_class_name')!r}")
    dt = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    comps: dict[str, Any] = {
        "scheduler": sched_cls.from_config(sched_cfg),
        "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True),
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True,
                                                      variant=var("text_encoder"), **dt),
        "unet": UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True, variant=var("unet"), **dt),
        "vae": AutoencoderKL.from_pretrained(path / "vae", local_files_only=True, variant=var("vae"), **dt),
    }
    if arch == "sdxl":
        comps["tokenizer_2"] = CLIPTokenizer.from_pretrained(path / "tokenizer_2", local_files_only=True)
        comps["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            path / "text_encoder_2", local_files_only=True, variant=var("text_encoder_2"), **dt)
    for m in ("text_encoder", "text_encoder_2"):
        if m in comps:
            comps[m].eval()
    return comps


def load_sg_encoder(spec: str | Path, **overrides: Any) -> SGEncoder:
    """An SG encoder from a ``sg_encoder/`` folder (ours) or LAION-SG's ``.pt``/``.pth`` checkpoint."""
    spec = Path(spec)
    if spec.is_dir():
        for name, what in (("config.json", "configuration"),
                           ("diffusion_pytorch_model.safetensors", "weights, safetensors")):
            if not (spec / name).is_file():
                raise MissingModelFileError(f"SG encoder folder {spec} lacks {name} ({what})")
        return SGEncoder.from_pretrained(spec, local_files_only=True)
    if spec.suffix in (".pt", ".pth"):
        return SGEncoder.from_laion_checkpoint(spec, **overrides)
    raise MissingModelFileError(f"SG encoder not found: {spec} (expected a sg_encoder/ folder with config.json and "
                                "diffusion_pytorch_model.safetensors, or LAION-SG's baseline3_100.pt)")
