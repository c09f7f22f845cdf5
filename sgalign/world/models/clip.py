"""world-CLIP: a small ``transformers.CLIPModel`` trained contrastively on (render, serialised graph) pairs.

Architecture: vision ViT on the 64x64 render (patch 8 -> 64 patches + CLS, width 128, 4 layers); text
transformer with the real 49,408-token CLIP BPE vocabulary (``sgalign.scene_graph.clip_tokenizer``), width 64,
4 layers, 77 positions, EOS pooling; projections to 64-d. The text width is 64 because the token embedding dominates
the size (49,408 x 64 fp32 = 12.6 MB; width 128 would be 25 MB on its own, and the text tower is copied into
every pipeline folder that uses it as its text encoder).

Training (NegCLIP-style): the symmetric InfoNCE loss of CLIP, plus, for every image, one corrupted caption of
each kind in ``data.CORRUPTIONS`` (wrong colour, wrong relation, swapped relation direction) as extra negatives
in the image->text softmax. In-batch negatives alone let a text encoder get away with a bag of words; the hard
negatives force it to read which object carries which attribute and which way a relation points.

Folder layout written by ``save_world_clip`` (no tensor is stored twice)::

    config.json                     CLIPConfig               -> CLIPModel.from_pretrained(dir)
    model.safetensors.index.json    shard map: text_model.* -> text_encoder/model.safetensors, rest -> vision file
    model-vision.safetensors        vision tower, projections, logit_scale
    text_encoder/                   CLIPTextModel config + weights -> CLIPTextModel.from_pretrained(dir/text_encoder)
    tokenizer/                      CLIPTokenizer (real vocabulary, pad = <|endoftext|>)
    preprocessor_config.json        CLIPImageProcessor: 64x64, OpenAI CLIP mean/std
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...diffusion.loop import Loop, warmup_cosine
from ...scene_graph import CLIP_VOCAB_SIZE, clip_tokenizer
from ..render import render_array
from ..sampler import WorldScene, sample_split
from .data import CORRUPTIONS, caption, corrupt, render_stream, to_tensor

WORLD_CLIP_DIR = Path(__file__).resolve().parent.parent / "weights" / "world-clip"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP pixel statistics (as sgalign.evaluation.fid)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_SHARD = "text_encoder/model.safetensors"
VISION_SHARD = "model-vision.safetensors"


def world_clip_config(text_width: int = 64, vision_width: int = 128, layers: int = 4, projection_dim: int = 64):
    from transformers import CLIPConfig  # heavy (~1 s): keeps pretrain_clip.py --help and world.models light

    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=text_width, intermediate_size=4 * text_width,
                num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=layers,
                  num_attention_heads=4, image_size=64, patch_size=8, num_channels=3, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, 64, 64] in [0, 1] (or uint8) -> CLIP-normalised pixel values."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _pooled(out) -> torch.Tensor:
    # transformers >= 5 returns a model output from get_*_features; older versions return the tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_embeds(model, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected image embeddings of [N, 3, 64, 64] images in [0, 1]."""
    return F.normalize(_pooled(model.get_image_features(pixel_values=pixel_values(images))), dim=-1)


def text_embeds(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised projected text embeddings (padding to the longest text; EOS pooling ignores padding)."""
    tok = tokenizer(list(texts), padding="longest", truncation=True, max_length=77, return_tensors="pt")
    out = model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    return F.normalize(_pooled(out), dim=-1)


def clip_loss(model, tokenizer, images: torch.Tensor, scenes: Sequence[WorldScene], rng: np.random.Generator,
              hard_negatives: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE; with ``hard_negatives`` each image's softmax also covers its corrupted captions."""
    b = len(scenes)
    texts = [caption(s) for s in scenes]
    if hard_negatives:
        texts += [caption(corrupt(s, kind, rng)) for kind in CORRUPTIONS for s in scenes]
    img = image_embeds(model, images)
    txt = text_embeds(model, tokenizer, texts)
    scale = model.logit_scale.exp().clamp(max=100.0)
    target = torch.arange(b)
    logits_i = scale * img @ txt.T  # [B, B (+ 3B hard negatives)]
    logits_t = scale * txt[:b] @ img.T  # [B, B]
    loss = (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target)) / 2
    with torch.no_grad():
        stats = {"loss": float(loss), "acc_i2t": float((logits_i.argmax(1) == target).float().mean()),
                 "scale": float(scale)}
    return loss, stats


@dataclass
class ClipTrainArgs:
    steps: int = 1200
    batch: int = 64
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    hard_negatives: bool = True


def train_world_clip(args: ClipTrainArgs, tokenizer=None,
                     progress: Callable[[int, dict[str, float]], None] | None = None):
    """Train world-CLIP from scratch on the train-split render stream. Returns (model, tokenizer, history)."""
    from transformers import CLIPModel  # heavy: as in world_clip_config

    tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
    torch.manual_seed(args.seed)
    model = CLIPModel(world_clip_config()).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(min(args.warmup, max(args.steps // 10, 1)),
                                                                 args.steps))
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 7]))  # corruption choices
    stream = render_stream("train", args.seed, args.batch)

    def step_loss(_: int):
        scenes, images = next(stream)
        return clip_loss(model, tokenizer, images, scenes, rng, args.hard_negatives)

    history = Loop({"clip": model}, opt, sched, max_grad_norm=1.0).run(
        args.steps, step_loss, on_step=None if progress is None else lambda done, stats: progress(done - 1, stats))
    return model.eval(), tokenizer, history


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, scenes: Sequence[WorldScene], seed: int = 0,
                       batch: int = 250) -> dict[str, float]:
    """Composition and retrieval accuracy on ``scenes`` (rendered here).

    * ``vs_<kind>``: fraction of images whose true caption scores above a corrupted caption of that kind;
    * ``vs_all``: the true caption beats all three corrupted captions;
    * ``i2t_r1`` / ``t2i_r1``: top-1 retrieval among all ``len(scenes)`` true captions / images.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    negs = {kind: [corrupt(s, kind, rng) for s in scenes] for kind in CORRUPTIONS}
    img, true, neg = [], [], {k: [] for k in CORRUPTIONS}
    for i in range(0, len(scenes), batch):
        part = list(scenes[i:i + batch])
        img.append(image_embeds(model, to_tensor(render_array(part))))
        true.append(text_embeds(model, tokenizer, [caption(s) for s in part]))
        for k in CORRUPTIONS:
            neg[k].append(text_embeds(model, tokenizer, [caption(s) for s in negs[k][i:i + batch]]))
    img, true = torch.cat(img), torch.cat(true)
    pos = (img * true).sum(-1)
    out, beats_all = {"n": len(scenes)}, torch.ones_like(pos, dtype=torch.bool)
    for k in CORRUPTIONS:
        wins = pos > (img * torch.cat(neg[k])).sum(-1)
        out[f"vs_{k}"] = float(wins.float().mean())
        beats_all &= wins
    out["vs_all"] = float(beats_all.float().mean())
    sim = img @ true.T
    target = torch.arange(len(scenes))
    out["i2t_r1"] = float((sim.argmax(1) == target).float().mean())
    out["t2i_r1"] = float((sim.argmax(0) == target).float().mean())
    return out


def evaluate_world_clip(model, tokenizer, n: int = 500, seed: int = 0) -> dict[str, float]:
    """``retrieval_accuracy`` on the first ``n`` test-split graphs of sampler seed ``seed``."""
    return retrieval_accuracy(model, tokenizer, sample_split("test", n, seed=seed), seed=seed)


TOKEN_TABLE = "text_model.embeddings.token_embedding.weight"


def store_token_table_fp16(shard: str | Path) -> None:
    """Rewrite a text-tower safetensors shard with its token table in float16, every other tensor unchanged.

    Why: CLIP's 49,408 x 64 token table is 12.6 MB of the ~13 MB text tower, and world text uses 22 of its rows,
    so fp32 storage made the world models too big to ship twice (world-CLIP, and the base's jointly trained copy).
    The configs say float32, so ``from_pretrained`` loads it back as float32; on world text the text states move by
    1.2e-4 relative (measured on 512 test graphs)."""
    shard = Path(shard)
    state = load_file(shard)
    if TOKEN_TABLE not in state:
        raise KeyError(f"{shard}: no {TOKEN_TABLE}; not a CLIP text tower shard")
    state[TOKEN_TABLE] = state[TOKEN_TABLE].to(torch.float16)
    tmp = shard.with_name(shard.name + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    tmp.replace(shard)


def save_world_clip(model, tokenizer, out: str | Path) -> Path:
    """Write the folder layout of the module docstring (text tower stored once, shared via the shard index)."""
    from transformers import CLIPImageProcessor  # heavy: as in world_clip_config

    out = Path(out)
    (out / "text_encoder").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    text = {k: v for k, v in state.items() if k.startswith("text_model.")}
    rest = {k: v for k, v in state.items() if not k.startswith("text_model.")}
    model.config.save_pretrained(out)
    model.config.text_config.save_pretrained(out / "text_encoder")
    # keys keep the "text_model." prefix: CLIPTextModel.from_pretrained strips it, CLIPModel needs it
    save_file(text, out / TEXT_SHARD, metadata={"format": "pt"})
    store_token_table_fp16(out / TEXT_SHARD)
    save_file(rest, out / VISION_SHARD, metadata={"format": "pt"})
    total = sum(v.numel() * (2 if k == TOKEN_TABLE else v.element_size()) for k, v in state.items())
    index = {"metadata": {"total_size": total},
             "weight_map": {k: TEXT_SHARD if k in text else VISION_SHARD for k in sorted(state)}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out / "tokenizer")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=list(CLIP_MEAN),
                       image_std=list(CLIP_STD), do_convert_rgb=True).save_pretrained(out)
    return out


def load_world_clip(path: str | Path = WORLD_CLIP_DIR):
    """(CLIPModel, CLIPTokenizer) from a ``save_world_clip`` folder (default: the shipped world-CLIP)."""
    from transformers import CLIPModel, CLIPTokenizer  # heavy: as in world_clip_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no world-CLIP checkpoint (config.json missing); train one with "
                                "`python scripts/pretrain_clip.py --out DIR`")
    return CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path / "tokenizer")

