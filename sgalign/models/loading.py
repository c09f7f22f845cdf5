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
import math
from collections import Counter
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
    for name in ARCH_COMPONENTS[arch]:
        if _COMPONENTS[name][1] is not None:
            check_weights(path / name)
    return arch


class BadWeightsError(UserError, ValueError):
    """A weights file is truncated, not safetensors, or holds another architecture than its config (exit 2)."""


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), checked against the file's
    size: a truncated or padded file, or one that is no safetensors file, raises ``BadWeightsError``."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size or n > 100 * 2 ** 20:
            raise BadWeightsError(f"{path}: not a safetensors file (bad header length; truncated?); replace it")
        try:
            table = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise BadWeightsError(f"{path}: safetensors header is not valid JSON (truncated or corrupt); "
                                  "replace it") from None
    if not isinstance(table, dict):
        raise BadWeightsError(f"{path}: safetensors header is not a tensor table; replace it")
    table.pop("__metadata__", None)
    try:
        end = max((int(t["data_offsets"][1]) for t in table.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise BadWeightsError(f"{path}: safetensors header lacks data_offsets; replace it") from None
    if 8 + n + end != size:
        raise BadWeightsError(f"{path}: {size} bytes, but its header describes {8 + n + end} (truncated or "
                              "corrupt); replace it")
    return table


def _expected_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes the component's config.json builds (on the meta device: no memory, no weights read);
    None when the class is not one we can build here."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    with init_empty_weights():
        if cfg.get("_class_name") == "SGEncoder":
            model = SGEncoder.from_config(cfg)
        elif isinstance(cfg.get("_class_name"), str) and hasattr(diffusers, cfg["_class_name"]):
            model = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
        elif cfg.get("architectures") and hasattr(transformers, cfg["architectures"][0]):
            conf = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            model = getattr(transformers, cfg["architectures"][0])._from_config(conf)
        else:
            return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(folder: str | Path) -> None:
    """Every safetensors file of a component folder is complete (``safetensors_header``) and, for an unsharded
    file, holds the tensors its config.json builds with their shapes: a truncated file or another architecture's
    weights is a one-line ``BadWeightsError`` before anything is loaded or sampled."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    tables = {f: safetensors_header(f) for f in files}
    if len(files) != 1 or not (folder / "config.json").is_file():
        return  # sharded or variant files: each checked for completeness above
    try:
        want = _expected_shapes(folder)
    except Exception as e:  # a config the class rejects is reported by the loader itself
        raise BadWeightsError(f"{folder / 'config.json'}: cannot build the model it describes "
                              f"({type(e).__name__}: {str(e)[:120]}); replace it") from None
    if want is None:
        return
    (f, table), = tables.items()
    # compared by element counts, not names or shapes: library versions rename keys (transformers' text_model.
    # prefix) and reshape some on load (diffusers' old 1x1-conv attention), while another architecture's weights
    # (other widths, depths or vocabulary) cannot supply a tensor of every size the config needs
    have = Counter(math.prod(t.get("shape", [])) for t in table.values())
    for name, shape in want.items():
        n = math.prod(shape)
        if have[n] <= 0:
            raise BadWeightsError(f"{f}: no tensor of {n} values for {name} {shape}, which "
                                  f"{folder.name}/config.json needs (weights of another architecture?); replace "
                                  "the file or its config")
        have[n] -= 1


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
        check_weights(spec)
        return SGEncoder.from_pretrained(spec, local_files_only=True)
    if spec.suffix in (".pt", ".pth"):
        return SGEncoder.from_laion_checkpoint(spec, **overrides)
    raise MissingModelFileError(f"SG encoder not found: {spec} (expected a sg_encoder/ folder with config.json and "
                                "diffusion_pytorch_model.safetensors, or LAION-SG's baseline3_100.pt)")
