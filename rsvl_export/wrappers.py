"""Export-only wrappers (kept apart from the models, as SAM does): each wraps one graph of the
split with the ONNX input/output names of docs/internals.md, plus example inputs and the dynamic
axes. The torch reference backend of the runtime runs these same wrappers, so eager, ONNX and
TensorRT see one definition of each graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class SemanticText(nn.Module):
    """``input_ids, attention_mask [K, L] -> text_emb [K, D]`` (context tokens included)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class SemanticImage(nn.Module):
    """``optical [B,3,H,W], sar [B,1,H,W], text_emb [K,D] -> logits [B,K,H,W]`` (``tau * cosine``
    for both TSMNet heads; the ``paper`` head's K is fixed at export, see :func:`graph_specs`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, optical: torch.Tensor, sar: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.model.forward_image(optical, sar, text_emb)["logits"]


class SemanticImageOptical(nn.Module):
    """Optical-only export: ``optical, text_emb -> logits`` (SAR is the missing-modality zeros)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, optical: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.model.forward_image(optical, None, text_emb)["logits"]


class ReferringText(nn.Module):
    """``input_ids, attention_mask [B, L] -> word_feats [B,L,D], sentence_emb [B,D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words, sentence = self.model.encode_text(input_ids, attention_mask)
        return words, sentence


class ReferringImage(nn.Module):
    """``optical [B,3,H,W], word_feats, sentence_emb, attention_mask -> logits [B,2,H,W]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, optical: torch.Tensor, word_feats: torch.Tensor, sentence_emb: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.forward_image(optical, word_feats, sentence_emb, attention_mask)["logits"]


@dataclass
class GraphSpec:
    """One graph to export: the wrapper, example inputs and which axes are dynamic."""

    name: str  # "text" | "image"
    module: nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def _example_tokens(model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    names = [c["name"] for c in model.config.get("classes", [])] or ["water", "building", "road"]
    ids, mask = model.tokenize([names[i % len(names)] for i in range(n)])
    return torch.from_numpy(ids), torch.from_numpy(mask)


def graph_specs(model: nn.Module, tile: int, modalities: tuple[str, ...] = ("optical", "sar"),
                example_batch: int = 2, example_vocab: int = 3) -> list[GraphSpec]:
    """The text graph and the image graph of ``model`` at tile size ``tile``.

    Example sizes are ≥ 2 on every dynamic axis: an example of size 1 freezes the axis under the
    dynamo exporter (``docs/export-notes.md``, Exporter).
    """
    if example_batch < 2 or example_vocab < 2:
        raise ValueError("example batch and vocabulary sizes must be >= 2 (size 1 freezes the axis)")
    model = model.eval()
    g = torch.Generator().manual_seed(0)
    task = model.config.get("task", "semantic")
    if task == "semantic":
        # the paper head concatenates the K-channel score map into the FPN input: K is a static axis
        fixed_k = getattr(model, "num_classes", None) if model.config.get("head") == "paper" else None
        if fixed_k:
            example_vocab = int(fixed_k)
        ids, mask = _example_tokens(model, example_vocab)
        with torch.no_grad():
            text_emb = model.encode_text(ids, mask)
        text = GraphSpec("text", SemanticText(model), {"input_ids": ids, "attention_mask": mask}, ["text_emb"],
                         {"input_ids": {0: "K"}, "attention_mask": {0: "K"}})
        optical = torch.randn(example_batch, 3, tile, tile, generator=g)
        sar = torch.randn(example_batch, 1, tile, tile, generator=g)
        k_axis = {} if fixed_k else {"text_emb": {0: "K"}}
        if modalities == ("optical",):
            image = GraphSpec("image", SemanticImageOptical(model), {"optical": optical, "text_emb": text_emb},
                              ["logits"], {"optical": {0: "B"}, **k_axis})
        else:
            image = GraphSpec("image", SemanticImage(model), {"optical": optical, "sar": sar, "text_emb": text_emb},
                              ["logits"], {"optical": {0: "B"}, "sar": {0: "B"}, **k_axis})
        return [text, image]
    # referring: text batch == image batch (one expression per tile)
    ids, mask = _example_tokens(model, example_batch)
    with torch.no_grad():
        words, sentence = model.encode_text(ids, mask)
    text = GraphSpec("text", ReferringText(model), {"input_ids": ids, "attention_mask": mask},
                     ["word_feats", "sentence_emb"], {"input_ids": {0: "B"}, "attention_mask": {0: "B"}})
    optical = torch.randn(example_batch, 3, tile, tile, generator=g)
    image = GraphSpec("image", ReferringImage(model),
                      {"optical": optical, "word_feats": words, "sentence_emb": sentence, "attention_mask": mask},
                      ["logits"], {"optical": {0: "B"}, "word_feats": {0: "B"}, "sentence_emb": {0: "B"},
                                   "attention_mask": {0: "B"}})
    return [text, image]
