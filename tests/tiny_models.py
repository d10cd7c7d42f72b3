"""Tiny randomly initialised Hugging Face models and small generated videos, saved locally (nothing downloaded).

Each ``make_tiny_*`` saves a model with its processor or tokenizer to a folder
and returns the folder, which ``from_pretrained`` then loads as it would a hub
model. Used by tests/test_prepare.py and bench/prepare_speed.py.
"""
import os

import av
import numpy as np
import torch
import transformers
from PIL import Image
from test_extract_teacher import make_tiny_clip  # noqa: F401  (re-exported: the teacher tests' tiny CLIP)
from tokenizers import ByteLevelBPETokenizer, Tokenizer, models, pre_tokenizers

VIDEO_DIM, IMAGE_DIM, TEXT_DIM, SIGLIP_DIM = 32, 16, 24, 20
VIDEO_FRAMES = 4  # the tiny VideoMAE's clip length
WORDS = ("a the person man woman dog opens closes door runs sits down walks in room red blue green box "
         "picks up throws ball looks at camera then leaves").split()


def make_tiny_resnet(folder):
    """ResNet (2 stages, 16-d pooled output) with a ConvNeXt-style processor at 32 px, as resnet-152 ships."""
    torch.manual_seed(1)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, IMAGE_DIM], depths=[1, 1],
                                       layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(folder)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return str(folder)


def make_tiny_videomae(folder):
    """VideoMAE for 4-frame 32 px clips (tubelets of 2 frames, 16 px patches: 8 tokens), 32-d."""
    torch.manual_seed(2)
    config = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=VIDEO_FRAMES, tubelet_size=2,
                                         hidden_size=VIDEO_DIM, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64)
    transformers.VideoMAEModel(config).save_pretrained(folder)
    transformers.VideoMAEImageProcessor(size={"shortest_edge": 32},
                                        crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def make_tiny_roberta(folder, texts=WORDS):
    """RoBERTa (1 layer, 24-d) with a byte-level BPE tokenizer trained on `texts` (<s> ... </s> around each caption)."""
    os.makedirs(folder, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    # Positional paths: vocab_file / merges_file in transformers 4, vocab / merges in 5.
    tokenizer = transformers.RobertaTokenizerFast(os.path.join(folder, "vocab.json"),
                                                  os.path.join(folder, "merges.txt"), model_max_length=64)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(3)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=66)
    transformers.RobertaModel(config).save_pretrained(folder)
    return str(folder)


def make_tiny_siglip(folder, words=WORDS):
    """SigLIP (1-layer towers, 20-d) with a word-level tokenizer of `words` and its 32 px image processor."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>"] + sorted(set(words)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                         eos_token="</s>", model_max_length=16).save_pretrained(folder)
    special = dict(pad_token_id=0, bos_token_id=None, eos_token_id=2)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=SIGLIP_DIM, intermediate_size=40, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, projection_size=SIGLIP_DIM, **special),
        vision_config=dict(hidden_size=SIGLIP_DIM, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16))
    torch.manual_seed(4)
    transformers.SiglipModel(config).save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def make_tiny_models(folder):
    """All tiny models in sub-folders of `folder` -> dict role -> folder."""
    return {"video": make_tiny_videomae(os.path.join(folder, "tiny_videomae")),
            "image": make_tiny_resnet(os.path.join(folder, "tiny_resnet")),
            "text": make_tiny_roberta(os.path.join(folder, "tiny_roberta")),
            "teacher": make_tiny_clip(os.path.join(folder, "tiny_clip")),
            "siglip": make_tiny_siglip(os.path.join(folder, "tiny_siglip"))}


def pattern_frame(i, width, height, seed):
    """Frame i of a moving pattern: a coloured bar sliding over a colour gradient, (height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    base, bar = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    x = np.arange(width)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = ((base[None, :] + x[:, None] * 2 + i * 3) % 256).astype(np.uint8)[None]
    left = (i * 4 + seed * 7) % width
    frame[:, left:left + width // 6] = bar
    return frame


def write_pattern_video(path, seconds, fps=10, codec="mpeg4", width=64, height=48, seed=0):
    """Encode `seconds` of a moving pattern at `fps` (mpeg4 or libx264)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height, seed), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_pattern_frames(folder, n_frames, width=64, height=48, seed=0):
    """A frame folder of a moving pattern: 00001.png, 00002.png, ... (TVQA style)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n_frames):
        Image.fromarray(pattern_frame(i, width, height, seed)).save(os.path.join(folder, f"{i + 1:05d}.png"))
