"""Hugging Face encoders, loaded with ``from_pretrained`` (a hub id or a local folder).

Every encoder runs batched on one device, under fp16 autocast on CUDA, and
returns float32 numpy arrays. ``transform`` (the model's own processor: resize,
crop, normalise) runs in the decoding threads; ``encode`` in the main thread.
Shapes: n images or clips, T frames of a clip, d feature size.

| class | default model | output |
|---|---|---|
| `ImageEncoder` | microsoft/resnet-152 | (n, d) pooled output, flattened (ResNet-152: 2048-d global average pool) |
| `VideoEncoder` | MCG-NJU/videomae-base | (n, d) mean over tokens of the last hidden state (768-d) |
| `TokenEncoder` | roberta-base | per caption (n_tokens, d) last hidden state, <s> and </s> included |
| `DualEncoder` | openai/clip-vit-base-patch32 | (n, d) get_image_features / get_text_features (projection, not normalised) |
"""
import contextlib
from dataclasses import dataclass

import torch

from method.extraction.deps import import_optional

# Dual encoders whose text tower pools the last position: they were trained on
# captions padded to the full length, and without an attention mask.
PAD_TO_MAX_LENGTH = ("siglip",)
# Tokenizers without a length limit: above this, model_max_length means "unset".
_UNSET_LENGTH = 10 ** 6


def autocast(device):
    """fp16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def model_config(name_or_path):
    """The transformers config of a model (its config.json only; no weights are loaded)."""
    return import_optional("transformers").AutoConfig.from_pretrained(name_or_path)


def _load_model(name_or_path, device):
    return import_optional("transformers").AutoModel.from_pretrained(name_or_path).to(device).eval()


@torch.inference_mode()
def run_batched(fn, inputs, batch_size, device):
    """``fn(batch)`` on consecutive batches of `inputs` (moved to `device`) -> float32 ndarray, concatenated."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device):
            out.append(fn(batch).float().cpu())
    return torch.cat(out).numpy()


class _LazyModel:
    """An encoder of images: the processor is loaded at once, the model on the first encode (in the
    main thread), so a run whose videos all fail to decode loads no weights."""

    def __init__(self, name_or_path, device, batch_size):
        self.processor = import_optional("transformers").AutoImageProcessor.from_pretrained(name_or_path)
        self.name, self.device, self.batch_size = name_or_path, device, batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = _load_model(self.name, self.device)
        return self._model

    def transform(self, images):
        """List of n PIL images -> float32 Tensor (n, 3, H, W)."""
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


class ImageEncoder(_LazyModel):
    """Frame-level features of an image model: its pooled output, (n, 3, H, W) -> (n, d)."""

    def _pooled(self, batch):
        pooled = self.model(pixel_values=batch).pooler_output
        if pooled is None:
            raise SystemExit(f"--image_model {self.name}: the model returns no pooled output; "
                             f"choose an image model with one (ResNet, ConvNeXt, ViT, ...)")
        return pooled.flatten(1)

    def encode(self, pixels):
        """(n, 3, H, W) -> float32 ndarray (n, d)."""
        return run_batched(self._pooled, pixels, self.batch_size, self.device)


class VideoEncoder(_LazyModel):
    """Clip-level features of a video model: mean over tokens of the last hidden state, (n, T, 3, H, W) -> (n, d).

    T must be the clip length the model was built for (its config's num_frames).
    """

    def transform(self, images):
        """List of n PIL frames -> float32 Tensor (n, 3, H, W) (the video processor works frame by frame)."""
        return self.processor(images, return_tensors="pt")["pixel_values"][0]

    def encode(self, pixels):
        """(n, T, 3, H, W) -> float32 ndarray (n, d)."""
        return run_batched(lambda b: self.model(pixel_values=b).last_hidden_state.mean(1),
                           pixels, self.batch_size, self.device)


class TokenEncoder:
    """Per-token features of a text model (the last layer), special tokens included.

    A caption longer than the model's limit (the tokenizer's model_max_length:
    512 tokens for RoBERTa) is truncated.
    """

    def __init__(self, name_or_path, device):
        self.model = _load_model(name_or_path, device)
        self.tokenizer = import_optional("transformers").AutoTokenizer.from_pretrained(name_or_path)
        limit = self.tokenizer.model_max_length
        if limit > _UNSET_LENGTH:  # RoBERTa's positions start after the padding index
            offset = 2 if "roberta" in self.model.config.model_type else 0
            limit = self.model.config.max_position_embeddings - offset
        self.max_length, self.device = limit, device

    @torch.inference_mode()
    def encode(self, texts):
        """List of n captions -> list of n float32 ndarrays (n_tokens_i, d)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        mask = tokens["attention_mask"].bool()
        with autocast(self.device):
            hidden = self.model(input_ids=tokens["input_ids"].to(self.device),
                                attention_mask=mask.to(self.device)).last_hidden_state
        # the valid tokens of all captions, row after row, cut back into captions
        return [x.numpy() for x in hidden.float().cpu()[mask].split(mask.sum(1).tolist())]


@dataclass
class DualProcessors:
    """The image processor and tokenizer of a dual encoder."""

    image_processor: object
    tokenizer: object


def load_clip(name_or_path, device):
    """A CLIP-like dual encoder (eval mode, on `device`) and its DualProcessors, via transformers Auto classes."""
    transformers = import_optional("transformers")
    model = _load_model(name_or_path, device)
    processors = DualProcessors(transformers.AutoImageProcessor.from_pretrained(name_or_path),
                                transformers.AutoTokenizer.from_pretrained(name_or_path))
    return model, processors


def _projection(output):
    """Projected features from get_*_features: a tensor (transformers 4) or its pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def encode_images(model, pixel_values, device, batch_size):
    """(n, 3, H, W) preprocessed frames -> float32 ndarray (n, projection_dim)."""
    return run_batched(lambda b: _projection(model.get_image_features(pixel_values=b)),
                       pixel_values, batch_size, device)


@torch.inference_mode()
def encode_texts(model, tokenizer, texts, device):
    """List of captions -> float32 ndarray (n, projection_dim).

    Captions are truncated to the text tower's positions (77 for CLIP). Models
    of PAD_TO_MAX_LENGTH (SigLIP) get captions padded to that length and no
    attention mask, as they were trained.
    """
    max_length = model.config.text_config.max_position_embeddings
    full = model.config.model_type in PAD_TO_MAX_LENGTH
    tokens = tokenizer(list(texts), padding="max_length" if full else True, truncation=True,
                       max_length=max_length, return_tensors="pt")
    names = ("input_ids",) if full else ("input_ids", "attention_mask")
    tokens = {k: v.to(device) for k, v in tokens.items() if k in names}
    with autocast(device):
        return _projection(model.get_text_features(**tokens)).float().cpu().numpy()


class DualEncoder(_LazyModel):
    """A CLIP-like teacher: image side on frames, text side on captions (model loaded on first use)."""

    def __init__(self, name_or_path, device, batch_size):
        super().__init__(name_or_path, device, batch_size)
        self.tokenizer = import_optional("transformers").AutoTokenizer.from_pretrained(name_or_path)

    def encode(self, pixels):
        """(n, 3, H, W) -> float32 ndarray (n, projection_dim)."""
        return encode_images(self.model, pixels, self.device, self.batch_size)

    def encode_texts(self, texts):
        """List of n captions -> float32 ndarray (n, projection_dim)."""
        return encode_texts(self.model, self.tokenizer, texts, self.device)
