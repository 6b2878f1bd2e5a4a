"""timm Swin weights (e.g. ``swin_base_patch4_window12_384.ms_in22k``) -> CADFormer's Swin encoder.

Accepted files: a timm ``.safetensors`` / ``.pth`` (``model.safetensors``, ``pytorch_model.bin``)
or an original Microsoft ``.pth`` (``{"model": ...}``, downsample at the end of each stage).
The keys go through timm's own ``swin_transformer.checkpoint_filter_fn`` against our
``image.swin`` module: it renames the Microsoft layout, drops the non-persistent buffers and
resizes every ``relative_position_bias_table`` to our window (``resize_rel_pos_bias_table``)
where the config's window differs from the checkpoint's (e.g. 12 -> 15 for ``cadformer``).

Mapping: the filtered keys -> ``image.swin.*``. Intentionally unused: ``norm.*`` and ``head.*``
(classification). Intentionally new: everything outside ``image.swin`` (alignment, stage norms,
decoder, text encoder). A Swin of another size (embed dim, depths or heads) is refused naming
both.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..pretrained import LoadReport, PretrainedWeightsError, check_keys, read_state_dict
from .identify import block_counts, describe, is_swin, swin_name

__all__ = ["load_swin_into_cadformer"]

SWIN_UNUSED_PREFIXES = ("norm.", "head.")
TARGET = "image.swin."


def load_swin_into_cadformer(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a local timm Swin checkpoint into CADFormer's image encoder; returns the report."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    p = Path(path)
    sd = read_state_dict(p, "a timm Swin checkpoint")
    name = p.name
    swin = model.image.swin
    want_embed = int(swin.patch_embed.proj.weight.shape[0])
    want_depths = tuple(len(layer.blocks) for layer in swin.layers)
    want = f"{swin_name(want_embed, want_depths)} (embed {want_embed}, depths {','.join(map(str, want_depths))})"
    cfg_name = model.config.get("name", "cadformer")
    if not is_swin(sd):
        raise PretrainedWeightsError(f"{name} is {describe(sd)}, but {cfg_name}'s --pretrained file must be a timm "
                                     f"Swin checkpoint: {cfg_name} needs {want}")
    embed = int(sd["patch_embed.proj.weight"].shape[0])
    depths = tuple(block_counts(sd, r"layers\.(\d+)\.blocks\.(\d+)\."))
    heads = tuple(int(sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
                  for i in range(len(depths)))
    want_heads = tuple(int(layer.blocks[0].attn.num_heads) for layer in swin.layers)
    if (embed, depths, heads) != (want_embed, want_depths, want_heads):
        raise PretrainedWeightsError(
            f"{name} is a timm {swin_name(embed, depths)} checkpoint (embed {embed}, depths "
            f"{','.join(map(str, depths))}, heads {','.join(map(str, heads))}) but {cfg_name} needs {want}, heads "
            f"{','.join(map(str, want_heads))}")
    report = LoadReport(source="timm", kind="swin", path=str(p))
    for k, v in sd.items():
        if k.endswith("relative_position_bias_table"):
            n_old = round(v.shape[0] ** 0.5)
            m = swin.get_submodule(k[: -len(".relative_position_bias_table")])
            if m.relative_position_bias_table.shape != v.shape:
                report.transformed[k] = f"window {(n_old + 1) // 2} -> {m.window_size[0]} (timm resize_rel_pos_bias_table)"
    filtered = checkpoint_filter_fn(sd, swin)
    own = swin.state_dict()
    out = {k: v for k, v in filtered.items() if k in own}
    unused = [k for k in filtered if k not in own]
    unexpected = [k for k in unused if not k.startswith(SWIN_UNUSED_PREFIXES)]
    missing = [k for k in own if k not in out]
    check_keys(name, f"timm Swin checkpoint for {cfg_name}", missing, unexpected)
    for k, v in out.items():
        if v.shape != own[k].shape:
            raise PretrainedWeightsError(f"{name}: tensor {k} has shape {tuple(v.shape)} after timm's filter, the "
                                         f"model expects {tuple(own[k].shape)}")
    swin.load_state_dict({k: v.to(own[k].dtype) for k, v in out.items()}, strict=True)
    report.loaded = len(out)
    report.unused = unused
    report.new = [k for k in model.state_dict() if not k.startswith(TARGET)]
    return report
