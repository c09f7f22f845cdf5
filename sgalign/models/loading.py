"""Loading SD1.5 / SDXL (+ SG encoder) from local folders in the Hugging Face layouts -- never from a hub.

``load_model(path)`` is the one model loader: the components of a folder, its SG encoder and its pipeline settings
as ``ModelComponents`` (``sgalign.pipelines.build_pipeline`` makes the pipeline object of them). Everything that
loads a model -- trainer, SG pre-training, world recipe, evaluation, build_pairs, benchmarks -- goes through it;
``load_component`` / ``load_sg_encoder`` load one part from its own folder (a config that names parts).

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

import importlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import diffusers
import transformers
from accelerate import init_empty_weights

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


# component -> (module, class) that loads it from its own folder; the scheduler is built by its config's
# _class_name, the SG encoder by ``load_sg_encoder``
_CLASSES = {
    "text_encoder": ("transformers", "CLIPTextModel"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
}


class ModelComponents(dict):
    """The modules of one model, by component name (``scheduler``, ``tokenizer``, ``text_encoder``, ``unet``,
    ``vae``; SDXL adds ``tokenizer_2`` / ``text_encoder_2``; an SG model ``sg_encoder``; a plain SD1.5 folder that
    lists one, ``feature_extractor``), so ``Pipeline(**components)`` works, plus what the folder says beyond them:

    * ``arch``: ``"sd15"`` or ``"sdxl"``;
    * ``path``: the folder (None when assembled from parts);
    * ``settings``: ``model_index.json``'s pipeline settings (its entries that are neither components nor
      ``_``-private, e.g. ``initial_noise_mean_scale``), which a pipeline built from these components takes as
      ``from_pretrained`` would pass them (``sgalign.pipelines.build_pipeline``)."""

    def __init__(self, modules: dict[str, Any] | None = None, *, arch: str = "sd15", path: str | Path | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        super().__init__(modules or {})
        self.arch = arch
        self.path = None if path is None else Path(path)
        self.settings = dict(settings or {})

    @property
    def sg_encoder(self) -> SGEncoder | None:
        return self.get("sg_encoder")


def pipeline_settings(path: str | Path) -> dict[str, Any]:
    """``model_index.json``'s entries that are pipeline settings (not components, not ``_``-private); {} without
    an index."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return {}
    data = json.loads(index.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_") and not _is_component_entry(v)}


def _is_component_entry(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(x is None or isinstance(x, str) for x in v)


def load_component(name: str, folder: str | Path, *, torch_dtype: Any = None, variant: str | None = None) -> Any:
    """One component from its own folder (offline), by the class its name stands for: ``text_encoder(_2)``,
    ``tokenizer(_2)``, ``unet``, ``vae``, ``scheduler`` (its config's ``_class_name``), ``sg_encoder``
    (``load_sg_encoder``: a folder or LAION-SG's ``.pt``). Text encoders come back in eval mode."""
    folder = Path(folder)
    if name == "sg_encoder":
        enc = load_sg_encoder(folder)
        return enc if torch_dtype is None else enc.to(torch_dtype)
    if name == "scheduler":
        cfg_file = folder / "scheduler_config.json"
        sched_cfg = json.loads(cfg_file.read_text())
        sched_cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None)
        if sched_cls is None:
            raise ValueError(f"{cfg_file}: unknown scheduler class {sched_cfg.get('_class_name')!r}")
        return sched_cls.from_config(sched_cfg)
    if name not in _CLASSES:
        raise ValueError(f"unknown component {name!r}; one of {sorted({*_CLASSES, 'scheduler', 'sg_encoder'})}")

    module, cls_name = _CLASSES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    if name.startswith("tokenizer"):
        return cls.from_pretrained(folder, local_files_only=True)
    dt = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    model = cls.from_pretrained(folder, local_files_only=True, variant=variant, **dt)
    return model.eval() if name.startswith("text_encoder") else model


def _base_components(path: Path, arch: str | None, torch_dtype: Any, variant: str | None,
                     parts: dict[str, str | Path | None] | None) -> tuple[str, dict[str, Any]]:
    """(arch, the base components of a local ``sd15``/``sdxl`` folder), each loaded by its own class (offline);
    ``parts``: {component: folder} loaded from that folder instead of ``path``'s (``load_component``, no
    variant)."""
    arch = check_layout(path, arch, variant)
    parts = {k: v for k, v in (parts or {}).items() if v}

    def load(name: str) -> Any:
        if name in parts:
            return load_component(name, parts[name])
        stem = _COMPONENTS[name][1]  # the variant only where the plain file is absent
        var = None if stem is None or _weights_present(path / name, stem, None) else variant
        return load_component(name, path / name, torch_dtype=None if stem is None else torch_dtype, variant=var)

    comps = {name: load(name) for name in ("scheduler", "tokenizer", "text_encoder", "unet", "vae")}
    if arch == "sdxl":
        comps["tokenizer_2"] = load("tokenizer_2")
        comps["text_encoder_2"] = load("text_encoder_2")
    unknown = sorted(set(parts) - set(comps))
    if unknown:
        raise ValueError(f"parts {unknown}: not components of a {arch} folder ({', '.join(sorted(comps))}); the SG "
                         "encoder is load_model's sg_encoder argument")
    return arch, comps


def load_model(path: str | Path, arch: str | None = None, *, sg_encoder: SGEncoder | str | Path | None = None,
               require_sg_encoder: bool = False, text_only: bool = False, init_sg_encoder: dict | None = None,
               parts: dict[str, str | Path | None] | None = None, torch_dtype: Any = None,
               variant: str | None = None) -> ModelComponents:
    """THE model loader: every component of the local model folder ``path`` (its layout and weights checked
    first, ``check_layout``), the SG encoder included, as ``ModelComponents``. The trainer, the SG pre-training,
    the world recipe, the evaluation sampler, build_pairs and the pipelines (``sgalign.pipelines.load_pipeline``)
    all load through it; the conditioning of what it returns is ``models.conditioning``'s, the only one.

    * ``arch``: ``"sd15"`` / ``"sdxl"`` to insist on (None: detected);
    * SG encoder, the first that applies: none with ``text_only`` (the text path of an SG folder); ``sg_encoder``
      (a module, an ``sg_encoder/`` folder or LAION-SG's ``.pt``); the folder's own ``sg_encoder/``; a fresh
      random-init encoder sized to the text encoders when ``init_sg_encoder`` (its config overrides) is given;
      else none, or ``MissingModelFileError`` with ``require_sg_encoder``;
    * ``parts``: {component: folder} replacing the folder's own (e.g. the trainer's ``model.unet_init``, the SG
      pre-training's ``model.vae``); None values are ignored;
    * ``torch_dtype`` / ``variant``: as diffusers' (weights of ``variant`` are used where the plain file is
      absent); ``torch_dtype`` also casts the SG encoder.
    """
    path = Path(path)
    arch, base = _base_components(path, arch, torch_dtype, variant, parts)
    comps = ModelComponents(base, arch=arch, path=path, settings=pipeline_settings(path))
    index = path / "model_index.json"
    listed = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    fe = listed.get("feature_extractor")
    if _is_component_entry(fe) and fe[1] and (path / "feature_extractor").is_dir():
        # a plain SD1.5 folder's image processor, loaded as from_pretrained would
        comps["feature_extractor"] = getattr(transformers, fe[1]).from_pretrained(path / "feature_extractor",
                                                                                  local_files_only=True)
    enc = None
    if text_only:
        pass
    elif isinstance(sg_encoder, SGEncoder):
        enc = sg_encoder
    elif sg_encoder is not None:
        enc = load_sg_encoder(sg_encoder)
    elif (path / "sg_encoder").exists():
        enc = load_sg_encoder(path / "sg_encoder")
    elif init_sg_encoder is not None:
        text_dim = sum(comps[k].config.hidden_size for k in ("text_encoder", "text_encoder_2") if k in comps)
        enc = SGEncoder(**{"text_dim": text_dim, **init_sg_encoder})
    elif require_sg_encoder:
        raise MissingModelFileError(
            f"{path} has no sg_encoder/ folder (config.json + diffusion_pytorch_model.safetensors) and no SG "
            "encoder was given: pass one (a sg_encoder/ folder or LAION-SG's .pt: model.sg_encoder, or "
            "sg_encoder=...), or init_sg_encoder={} for a random-init encoder")
    if enc is not None:
        comps["sg_encoder"] = enc if torch_dtype is None else enc.to(torch_dtype)
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
