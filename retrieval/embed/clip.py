"""CLIP (open_clip): texts and images in one vector space, from a checkpoint file the user gives.

No package ships CLIP weights and nothing here downloads any: open_clip is only ever given a
built-in architecture name and an absolute file path (`pretrained=PATH`), never a tag such as
"openai" (which open_clip would fetch from a hub) nor an `hf-hub:` model name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.config import default_device
from retrieval.errors import ModelMissing, RetrievalError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
NEEDS_CHECKPOINT = (
    "CLIP needs a checkpoint file (an open_clip .safetensors or .pt state dict for the chosen "
    "architecture); no package ships CLIP weights and nothing is downloaded"
)

TORCHSCRIPT = "a TorchScript archive, like OpenAI's original .pt: save its state_dict() as .safetensors once"


def checkpoint_digest(path: Path) -> str:
    """sha256 of the file's bytes: vectors change when the weights do, whatever the file is called."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _batches(items: Sequence[Any], size: int, progress: bool, unit: str) -> Iterator[Sequence[Any]]:
    from tqdm import tqdm

    with tqdm(total=len(items), disable=not progress, unit=unit, desc="clip") as bar:
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            yield batch
            bar.update(len(batch))


class ClipEmbedder:
    """An open_clip model and its own preprocessing, loaded from a local checkpoint.

    Vectors are float32 and L2-normalised, so text-to-image, image-to-image and text-to-text
    similarities are all inner products. On CUDA the forward pass runs under fp16 autocast;
    on the CPU it is fp32 and deterministic (eval mode, inference mode).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        checkpoint: str | Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
    ) -> None:
        import open_clip

        if model not in open_clip.list_models():
            raise ModelMissing(
                f"unknown CLIP model {model!r}: give an open_clip architecture such as ViT-B-32, ViT-B-16 or ViT-L-14"
            )
        if checkpoint is None:
            raise ModelMissing(NEEDS_CHECKPOINT, hint="clip_checkpoint")
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise ModelMissing(f"{checkpoint}: CLIP checkpoint file not found")

        self.name = f"clip:{model}"
        self.model_name = model
        self.checkpoint = path
        self.device = device or default_device()
        self.batch_size = batch_size
        self.dim = int(open_clip.get_model_config(model)["embed_dim"])
        self.model_id = f"{self.name}:{checkpoint_digest(path)[:16]}"
        try:
            # An absolute path is never mistaken for a pretrained tag, so open_clip cannot download;
            # weights_only keeps a .pt from running pickled code.
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=str(path), device=self.device, weights_only=True
            )
        # open_clip, torch and safetensors raise a zoo of types for a bad file (RuntimeError, KeyError,
        # UnpicklingError, SafetensorError, StopIteration...): all mean "not a usable checkpoint".
        except Exception as e:
            reason = TORCHSCRIPT if "TorchScript" in str(e) else _first_line(e)
            raise ModelMissing(f"{checkpoint}: not a usable {model} checkpoint ({reason})") from None
        try:
            self.tokenizer: Callable[[list[str]], torch.Tensor] = open_clip.get_tokenizer(model)
        except Exception as e:  # some models use a hub tokenizer, which is not available offline
            raise ModelMissing(f"CLIP model {model}: no tokenizer offline ({_first_line(e)})") from None
        self.model.eval()
        self.logit_scale = float(self.model.logit_scale.exp().item())
        log.info("CLIP %s loaded from %s on %s", model, path, self.device)

    def record(self) -> dict[str, Any]:
        """What an index records about this model, so queries and adds find the same one."""
        return {
            "name": self.name,
            "dim": self.dim,
            "model": self.model_name,
            "checkpoint": str(self.checkpoint),
            "model_id": self.model_id,
        }

    def check_built_with(self, built: Mapping[str, Any], where: Path) -> None:
        """Refuse to mix vectors of two checkpoints: `built` is an index's image embedder entry."""
        if built["model_id"] != self.model_id:
            raise RetrievalError(
                f"{where}: image vectors were made by {built['model_id']}, not {self.model_id};"
                " give the checkpoint the index was built with"
            )

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Texts -> (n, dim) float32 rows of unit length; CLIP keeps the first 77 tokens of each."""
        return self._run(texts, lambda batch: self.tokenizer(list(batch)), self.model.encode_text, progress, "text")

    def encode_images(self, images: Sequence[Image.Image], *, progress: bool = False) -> np.ndarray:
        """RGB images -> (n, dim) float32 rows of unit length, in the same space as `encode`."""
        import torch

        def pixels(batch: Sequence[Image.Image]) -> torch.Tensor:
            return torch.stack([self.preprocess(image) for image in batch])

        return self._run(images, pixels, self.model.encode_image, progress, "img")

    def _run(
        self,
        items: Sequence[Any],
        prepare: Callable[[Sequence[Any]], torch.Tensor],
        forward: Callable[[torch.Tensor], torch.Tensor],
        progress: bool,
        unit: str,
    ) -> np.ndarray:
        import torch

        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        cuda = self.device.startswith("cuda")
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            for batch in _batches(items, self.batch_size, progress, unit):
                features = forward(prepare(batch).to(self.device, non_blocking=cuda))
                out.append(features.float().cpu().numpy())
        vectors = np.concatenate(out)
        # Normalise in float32 here (not in fp16 on the GPU) so every row has unit length to 1e-6.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def save_checkpoint(model: Any, path: str | Path) -> Path:
    """Write an open_clip model's weights as .safetensors (or .pt), via a temporary file then a rename.

    For tests and for converting a checkpoint once; loading is `ClipEmbedder(model, path)`.
    """
    import torch

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    tmp.replace(path)
    return path


def clip_for(
    checkpoint: str | Path | None, model: str | None = None, built: Mapping[str, Any] | None = None
) -> ClipEmbedder | None:
    """The CLIP model asked for or, for an index with image vectors (`built`: its manifest's image
    embedder entry), the one it was built with while that file is still there; None when there is
    neither, which means text only."""
    built = built or {}
    if checkpoint is None and built.get("checkpoint") and Path(built["checkpoint"]).is_file():
        checkpoint = built["checkpoint"]
    if checkpoint is None:
        return None
    return ClipEmbedder(model or built.get("model") or DEFAULT_MODEL, Path(checkpoint))
