"""BLIP-VQA through transformers (``BlipForQuestionAnswering``) from a local folder: P(yes)/P(no) from the first
decoder step, and free-form answers by generation.

``yes_no_probs`` follows T2I-CompBench's ``vqa_prob``: image -> ViT, question -> text encoder cross-attending to
the image, then the decoder is run once on the bos token (``[DEC]``, ``text_config.bos_token_id``) with the
question states; the first-step logits are softmaxed over the full vocabulary and the entries of the "yes" and
"no" tokens are returned (2748 / 2053 in BLIP's bert-base-uncased vocabulary).

Differences from the official scorer, as options: ``image_size=480`` (official; the HF port was converted at 384,
so the position embeddings are re-interpolated -- close, not bit-exact) and ``first_token="enc"`` (official
overwrites the question's [CLS] with [ENC], id 30523; HF keeps [CLS]). Both are recorded in ``info.details``.

Questions are batched by token length, never padded: transformers' BLIP text model drops the cross-attention mask
(``BlipTextAttention`` does not forward ``encoder_attention_mask``), so a padded question would let the decoder
attend to its pads and drift from the unbatched (official) value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from ..provenance import BackendInfo
from ._hf import CONFIG, PREPROCESSOR, WEIGHTS, fingerprint, is_random_init, pick_device, require_transformers, \
    version_string
from .manifest import Manifest, RequiredFile
from .protocols import VQAQuery

MANIFEST = Manifest("blip-vqa", (
    CONFIG, WEIGHTS, PREPROCESSOR,
    RequiredFile.of("tokenizer.json", "vocab.txt", purpose="BERT tokenizer"),
), origin="a BlipForQuestionAnswering checkpoint saved with save_pretrained, e.g. Salesforce/blip-vqa-capfilt-large")


class BlipVQA:
    def __init__(self, model, tokenizer, image_processor, info: BackendInfo, image_size: int | None = None,
                 first_token: str = "cls", enc_token_id: int | None = None, yes_token: str = "yes",
                 no_token: str = "no", max_question_tokens: int = 35, max_answer_tokens: int = 10,
                 num_beams: int = 1):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.info = info
        self.image_size = image_size
        self.first_token = first_token
        self.enc_token_id = enc_token_id
        self.max_question_tokens, self.max_answer_tokens, self.num_beams = max_question_tokens, max_answer_tokens, \
            num_beams
        vocab = tokenizer.get_vocab()
        missing = [t for t in (yes_token, no_token) if t not in vocab]
        if missing:
            raise ValueError(f"blip-vqa: the tokenizer has no single token for {missing}; cannot read P(yes)")
        self.yes_id, self.no_id = vocab[yes_token], vocab[no_token]

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, image_size: int | None = None,
                        first_token: str = "cls", enc_token_id: int | None = None, dtype=None,
                        **kwargs) -> "BlipVQA":
        """Load from a local folder (checked against ``MANIFEST`` first; never downloads).
        ``image_size=480, first_token="enc"`` approximate the official T2I-CompBench run."""
        root = MANIFEST.check(path)
        require_transformers(MANIFEST.backend)
        # heavy: the rewards import without transformers and torch
        from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessor

        if first_token not in ("cls", "enc"):
            raise ValueError(f"first_token must be 'cls' or 'enc', got {first_token!r}")
        model = BlipForQuestionAnswering.from_pretrained(root, local_files_only=True,
                                                         **({"dtype": dtype} if dtype else {}))
        model.to(pick_device(device)).eval()
        tok = AutoTokenizer.from_pretrained(root, local_files_only=True)
        proc = BlipImageProcessor.from_pretrained(root, local_files_only=True)
        if first_token == "enc" and enc_token_id is None:
            enc_token_id = tok.convert_tokens_to_ids("[ENC]") if "[ENC]" in tok.get_vocab() else 30523
        random_init = is_random_init(model.config)
        info = BackendInfo("blip-vqa", version_string(model.config), "real", fallback=random_init, details={
            **fingerprint(root), "folder": root.name, "image_size": image_size or "processor default",
            "first_token": first_token, "random_init": random_init,
            "bos_token_id": model.config.text_config.bos_token_id})
        return cls(model, tok, proc, info, image_size, first_token, enc_token_id, **kwargs)

    # ---- internals -------------------------------------------------------------------------------------------
    def _pixels(self, image: Image.Image):
        kw = {}
        if self.image_size is not None:
            kw["size"] = {"height": self.image_size, "width": self.image_size}
        pv = self.image_processor(images=image.convert("RGB"), return_tensors="pt", **kw).pixel_values
        return pv.to(self.model.device, self.model.dtype)

    def _interpolate(self) -> bool:
        return self.image_size is not None and self.image_size != self.model.config.vision_config.image_size

    def _questions(self, queries: Sequence[VQAQuery]):
        enc = self.tokenizer([q.text for q in queries], padding="longest", truncation=True,
                             max_length=self.max_question_tokens, return_tensors="pt")
        ids = enc.input_ids.clone()
        if self.first_token == "enc":
            ids[:, 0] = self.enc_token_id
        return ids.to(self.model.device), enc.attention_mask.to(self.model.device)

    def _length_groups(self, queries: Sequence[VQAQuery]):
        """(indices, ids, mask) per question length, without padding (see the module note)."""
        ids, mask = self._questions(queries)
        lengths = mask.sum(dim=1).tolist()
        for n in sorted(set(lengths)):
            idx = [k for k, m in enumerate(lengths) if m == n]
            yield idx, ids[idx, :n], mask[idx, :n]

    # ---- protocol --------------------------------------------------------------------------------------------
    def yes_no_probs(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[tuple[float, float]]:
        import torch  # heavy: as transformers

        if not queries:
            return []
        m = self.model
        with torch.no_grad():
            # the image is encoded once for all questions
            image_embeds = m.vision_model(pixel_values=self._pixels(image),
                                          interpolate_pos_encoding=self._interpolate()).last_hidden_state
            out: list[tuple[float, float]] = [(0.0, 0.0)] * len(queries)
            for idx, ids, mask in self._length_groups(queries):
                b = ids.shape[0]
                emb = image_embeds.expand(b, -1, -1)
                image_mask = torch.ones(emb.shape[:-1], dtype=torch.long, device=ids.device)
                q_states = m.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=emb,
                                          encoder_attention_mask=image_mask, return_dict=True).last_hidden_state
                bos = torch.full((b, 1), m.config.text_config.bos_token_id, dtype=torch.long, device=ids.device)
                logits = m.text_decoder(input_ids=bos, encoder_hidden_states=q_states, encoder_attention_mask=mask,
                                        return_dict=True).logits[:, 0, :]
                probs = logits.float().softmax(dim=-1)
                for k, p in zip(idx, probs):
                    out[k] = (float(p[self.yes_id]), float(p[self.no_id]))
        return out

    def answer(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[str]:
        import torch  # heavy: as transformers

        if not queries:
            return []
        pixels = self._pixels(image)
        answers: list[str] = [""] * len(queries)
        for idx, ids, mask in self._length_groups(queries):
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, pixel_values=pixels.expand(ids.shape[0], -1, -1, -1),
                                          attention_mask=mask, interpolate_pos_encoding=self._interpolate(),
                                          max_new_tokens=self.max_answer_tokens, num_beams=self.num_beams)
            for k, text in zip(idx, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[k] = text.strip()
        return answers
