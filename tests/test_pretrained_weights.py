"""Pretrained part weights in the formats users have them, built from the source libraries' own
model classes (random init), saved the way they ship, loaded through rsvl_train.weights_io."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from torch import nn

from rsvl_train.pretrained import PretrainedWeightsError, read_state_dict
from rsvl_train.weights_io import load_pretrained
from rsvl_train.weights_io.clip import CLIP_TARGETS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ----------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip_sd() -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(0)
    m = open_clip.create_model("ViT-B-16-quickgelu")
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    del m
    gc.collect()
    return sd


@pytest.fixture(scope="module")
def tsmnet() -> nn.Module:
    from rsvl_train import create_model

    torch.manual_seed(1)
    m = create_model("tsmnet", **{"backbone.quick_gelu": True, "text.quick_gelu": True}).eval()
    yield m
    del m
    gc.collect()


def _save_torchscript(sd: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive whose ``state_dict()`` has exactly CLIP's keys (as OpenAI's has)."""
    root = torch.jit.script(_Nested.build(sd))
    root.save(str(path))


class _Nested(nn.Module):
    """Module tree mirroring dotted keys, so the scripted state dict keeps CLIP's key names."""

    @staticmethod
    def build(sd: dict[str, torch.Tensor]) -> nn.Module:
        root = _Nested()
        for k, v in sd.items():
            *path, leaf = k.split(".")
            node: nn.Module = root
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, _Nested())
                node = getattr(node, part)
            node.register_buffer(leaf, v.clone())
        return root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _assert_clip_landed(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    from rsvl_train.models.backbones import resize_pos_embed

    own = model.state_dict()
    n = 0
    for k, v in own.items():
        if not k.startswith(CLIP_TARGETS):
            continue
        if k.startswith("text_encoder.clip."):
            src = sd[k[len("text_encoder.clip."):]]
        else:
            branch, _, rest = k.partition(".vit.")
            src = sd["visual." + rest]
            if rest == "conv1.weight" and branch == "sar_backbone":
                src = src.sum(dim=1, keepdim=True)  # the documented SAR stem
            elif rest == "positional_embedding":
                src = resize_pos_embed(src, (16, 16))  # 224 px (14x14) -> the 256 px tile
        assert torch.equal(v, src.to(v.dtype)), k
        n += 1
    assert n == 2 * 149 + 149  # two vision towers (less ln_post/proj) + the text tower


@pytest.mark.parametrize("fmt", ["open_clip_bin", "safetensors", "wrapped_module", "openai_torchscript",
                                 "openai_state_dict"])
def test_clip_every_tensor_lands(tsmnet, clip_sd, tmp_path, fmt):
    if fmt == "open_clip_bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(clip_sd, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in clip_sd.items()}, str(path))
    elif fmt == "wrapped_module":
        path = tmp_path / "epoch_32.pt"
        torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in clip_sd.items()}}, path)
    else:
        sd = {**clip_sd, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
        path = tmp_path / "ViT-B-16.pt"
        if fmt == "openai_torchscript":
            _save_torchscript(sd, path)
        else:
            torch.save(sd, path)
    for p in tsmnet.parameters():  # make sure the load really writes
        p.data.zero_()
    report = load_pretrained(tsmnet, path)
    _assert_clip_landed(tsmnet, clip_sd)
    assert report.loaded == 2 * 149 + 149
    assert set(report.unused) <= {"visual.ln_post.weight", "visual.ln_post.bias", "visual.proj", "logit_scale",
                                  "input_resolution", "context_length", "vocab_size"}
    assert "logit_scale" in report.unused and "visual.proj" in report.unused
    assert not any(k.startswith(CLIP_TARGETS) for k in report.new)
    assert "text_encoder.ctx" in report.new and "rectify.0.channel_mlp.0.weight" not in report.unused
    assert report.transformed == {"visual.conv1.weight -> sar_backbone": "summed over RGB",
                                  "visual.positional_embedding -> optical_backbone": "resized to 16x16 patches",
                                  "visual.positional_embedding -> sar_backbone": "resized to 16x16 patches"}
    assert report.source == ("openai" if fmt == "openai_torchscript" else "open_clip")


def test_clip_wrong_files_refused(tsmnet, clip_sd, tmp_path, monkeypatch):
    bad = dict(clip_sd)
    bad["visual.conv1.weight"] = torch.zeros(768, 3, 32, 32)
    torch.save(bad, tmp_path / "b32.pt")
    with pytest.raises(PretrainedWeightsError, match=r"b32.pt is a CLIP ViT checkpoint of visual width 768, 12 "
                                                     r"layers, patch 32, but tsmnet needs ViT-B-16 \(width 768"):
        load_pretrained(tsmnet, tmp_path / "b32.pt")
    short = {k: v for k, v in clip_sd.items() if k != "ln_final.weight"}
    torch.save(short, tmp_path / "short.pt")
    with pytest.raises(PretrainedWeightsError, match=r"short.pt is not a complete CLIP .* lacks 1 tensors the "
                                                     r"model needs \(text_encoder.clip.ln_final.weight\)"):
        load_pretrained(tsmnet, tmp_path / "short.pt")
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PretrainedWeightsError, match="other.pt is a state dict of 1 tensors"):
        load_pretrained(tsmnet, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="junk.pt cannot be read as an open_clip CLIP checkpoint"):
        load_pretrained(tsmnet, tmp_path / "junk.pt")
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        load_pretrained(tsmnet, tmp_path / "missing.pt")
    _save_torchscript(clip_sd, tmp_path / "ViT-B-16.pt")
    monkeypatch.setattr("rsvl_train.weights_io.clip._uses_quick_gelu", lambda m: False)
    with pytest.raises(PretrainedWeightsError, match="TorchScript archive .*QuickGELU.*quick_gelu=true"):
        load_pretrained(tsmnet, tmp_path / "ViT-B-16.pt")


def test_clip_small_open_clip_config_same_layout(tmp_path):
    """open_clip's ViT-S-16 has ViT-B-16's key layout at a third of the size: the same loader."""
    import open_clip

    from rsvl_train import create_model

    torch.manual_seed(6)
    sd = {k: v.contiguous() for k, v in open_clip.create_model("ViT-S-16").state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "vit_s16.pt")
    model = create_model("tsmnet", **{"backbone.model": "ViT-S-16", "text.clip_model": "ViT-S-16", "embed_dim": 384,
                                      "neck_dim": 32, "context_decoder.width": 32, "context_decoder.layers": 1})
    report = load_pretrained(model, tmp_path / "vit_s16.pt")
    assert report.loaded == 2 * 149 + 149
    own = model.state_dict()
    assert torch.equal(own["sar_backbone.vit.conv1.weight"], sd["visual.conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(own["optical_backbone.vit.transformer.resblocks.11.mlp.c_fc.weight"],
                       sd["visual.transformer.resblocks.11.mlp.c_fc.weight"])
    assert torch.equal(own["text_encoder.clip.text_projection"], sd["text_projection"])
    del model
    gc.collect()


# ----------------------------------------------------------------------------------------- Swin
@pytest.fixture(scope="module")
def swin_sd() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(2)
    m = timm.create_model("swin_base_patch4_window12_384", pretrained=False, num_classes=21841)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    del m
    gc.collect()
    return sd


@pytest.fixture(scope="module")
def cadformer_b() -> nn.Module:
    from rsvl_train import create_model

    torch.manual_seed(3)
    m = create_model("cadformer", **{"text.encoder": "minilm"}).eval()  # Swin-B, window 15, 480 px
    yield m
    del m
    gc.collect()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_swin_every_tensor_lands(cadformer_b, swin_sd, tmp_path, fmt):
    from timm.models.swin_transformer import resize_rel_pos_bias_table

    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(swin_sd, str(path))
    else:
        path = tmp_path / "swin_base_patch4_window12_384_22k.pth"
        torch.save({"model": swin_sd}, path)
    swin = cadformer_b.image.swin
    for p in swin.parameters():
        p.data.zero_()
    report = load_pretrained(cadformer_b, path)
    own = swin.state_dict()
    tables = 0
    for k, v in own.items():
        src = swin_sd[k]
        if k.endswith("relative_position_bias_table"):
            assert src.shape == (23 * 23, v.shape[1]) and v.shape == (29 * 29, v.shape[1])
            src = resize_rel_pos_bias_table(src, new_window_size=(15, 15), new_bias_shape=v.shape)
            tables += 1
        assert torch.equal(v, src), k
    assert tables == 24 and report.loaded == len(own) == 325
    assert len(report.transformed) == 24 and all("window 12 -> 15" in t for t in report.transformed.values())
    assert sorted(report.unused) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    assert not any(k.startswith("image.swin.") for k in report.new) and "image.align.0.gamma_v" not in report.unused


def test_swin_wrong_size_refused(cadformer_b, tmp_path):
    import timm

    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    torch.save(m.state_dict(), tmp_path / "x.pth")
    del m
    with pytest.raises(PretrainedWeightsError, match=r"x.pth is a timm Swin-T checkpoint \(embed 96, depths "
                                                     r"2,2,6,2, heads 3,6,12,24\) but cadformer needs Swin-B "
                                                     r"\(embed 128, depths 2,2,18,2\)"):
        load_pretrained(cadformer_b, tmp_path / "x.pth")


# ----------------------------------------------------------------------------------------- BERT
def test_bert_folder_every_tensor_lands_via_export(tmp_path):
    """rsvl-export --pretrained FOLDER: every BERT tensor lands; the manifest entry names the file."""
    from transformers import BertConfig, BertModel

    from rsvl_export.pipeline import ExportOptions, load_model
    from rsvl_runtime.files import sha256_file
    from rsvl_runtime.manifest import WeightsEntry

    torch.manual_seed(4)
    src = BertModel(BertConfig())  # with its pooler, as bert-base-uncased ships
    src.save_pretrained(tmp_path / "bert-base-uncased")
    ref = {k: v.detach().clone() for k, v in src.state_dict().items()}
    del src
    model, weights = load_model(ExportOptions(model="cadformer-tiny", pretrained=str(tmp_path / "bert-base-uncased"),
                                              overrides={"text.encoder": "bert-base"}))
    own = model.text.bert.state_dict()
    assert len(own) == 197 and all(torch.equal(v, ref[k]) for k, v in own.items())
    assert model.text.pretrained_weights is True
    entry = WeightsEntry.from_dict({"file": "weights.safetensors", **weights})
    assert entry.source == "pretrained" and entry.trained is False and len(entry.pretrained) == 1
    src_entry = entry.pretrained[0]
    assert (src_entry.source, src_entry.kind, src_entry.tensors) == ("huggingface", "bert", 197)
    assert src_entry.sha256 == sha256_file(tmp_path / "bert-base-uncased" / "model.safetensors")
    assert WeightsEntry.from_dict(entry.to_dict()) == entry
    del model
    gc.collect()


def test_bert_report_lists_unused_pooler(tmp_path):
    from transformers import BertConfig, BertModel

    from rsvl_train import create_model

    cfg = BertConfig(hidden_size=768, num_hidden_layers=12)
    BertModel(cfg).save_pretrained(tmp_path / "b")
    model = create_model("cadformer-tiny", **{"text.encoder": "bert-base"})
    report = load_pretrained(model, tmp_path / "b")
    assert report.loaded == 197 and sorted(report.unused) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert not any(k.startswith("text.bert.") for k in report.new) and "text.proj.weight" in report.new
    # the config route (text.path) goes through the same strict loader: equal tensors, or a refusal
    via_config = create_model("cadformer-tiny", **{"text.encoder": "bert-base", "text.path": str(tmp_path / "b")})
    assert all(torch.equal(v, model.text.bert.state_dict()[k]) for k, v in via_config.text.bert.state_dict().items())
    with pytest.raises(PretrainedWeightsError, match="is a BERT of another size"):
        from rsvl_train.pretrained import minilm_path

        create_model("cadformer-tiny", **{"text.encoder": "bert-base", "text.path": str(minilm_path())})
    # rsvl-train --pretrained FOLDER: the record kept in the checkpoint info
    from rsvl_train.train import Trainer

    rec = Trainer._load_pretrained(via_config, str(tmp_path / "b"))
    assert rec["tensors"] == 197 and rec["path"] == str(tmp_path / "b") and rec["sha256"] is None
    del model, via_config
    gc.collect()


def test_bert_wrong_folder_refused(tmp_path):
    from rsvl_train import create_model
    from rsvl_train.pretrained import minilm_path

    model = create_model("cadformer-tiny", **{"text.encoder": "bert-base"})
    with pytest.raises(PretrainedWeightsError, match=r"is a BERT of another size: hidden_size 384 \(needs 768\), "
                                                     r"num_hidden_layers 6 \(needs 12\)"):
        load_pretrained(model, minilm_path())
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(PretrainedWeightsError, match="is a HuggingFace 'roberta' model"):
        load_pretrained(model, tmp_path / "roberta")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedWeightsError, match="no config.json"):
        load_pretrained(model, tmp_path / "empty")


def test_read_state_dict_refuses_non_dict(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PretrainedWeightsError, match=r"list.pt cannot be read|list.pt holds no state dict"):
        read_state_dict(tmp_path / "list.pt")


# ------------------------------------------------------------------------- official TSMNet
def _official_fixture() -> dict:
    from pathlib import Path

    return json.loads((Path(__file__).parent / "fixtures" / "tsmnet_official_keys.json").read_text())


def test_official_keys_map_one_to_one_and_back():
    from rsvl_train.official import TRAINING_ONLY, to_official, to_ours

    keys = _official_fixture()["keys"]
    assert len(keys) == 772
    mapped = {k: to_ours(k) for k in keys}
    dropped = sorted({k.split(".")[0] for k, v in mapped.items() if v is None})
    assert dropped == sorted(TRAINING_ONLY) == sorted(_official_fixture()["training_only"])
    ours = [v for v in mapped.values() if v is not None]
    assert len(ours) == len(set(ours)) == 668
    assert all(to_official(v) == k for k, v in mapped.items() if v is not None)
    with pytest.raises(KeyError):
        to_ours("some_new_module.weight")


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    g = torch.Generator().manual_seed(5)
    sd = {}
    for k, shape in _official_fixture()["keys"].items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.randint(0, 100, shape, generator=g)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5  # variances are positive
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    path = tmp_path_factory.mktemp("official") / "TSMNet_vit-b_SWJTU_iter_100.pth"
    torch.save({"meta": {"mmseg_version": "0.20.2", "CLASSES": ["background"] * 7}, "state_dict": sd}, path)
    yield path, sd
    path.unlink(missing_ok=True)  # 1.1 GB: not kept for the rest of the session


def test_official_checkpoint_every_key_lands(official_file):
    """rsvl-export --checkpoint X --checkpoint-format official: every key lands, none is left."""
    from rsvl_export.pipeline import ExportOptions, load_model
    from rsvl_runtime.files import sha256_file
    from rsvl_runtime.manifest import WeightsEntry
    from rsvl_train.official import map_official, to_ours

    path, sd = official_file
    model, weights = load_model(ExportOptions(model="tsmnet-official", checkpoint=str(path),
                                              checkpoint_format="official"))
    own = model.state_dict()
    assert len(own) == 668
    for k, v in sd.items():
        ours = to_ours(k)
        if ours is not None:
            assert torch.equal(own[ours], v.to(own[ours].dtype)), k
    _, report = map_official(model, sd, str(path))
    assert report.loaded == 668 and len(report.unused) == 772 - 668
    entry = WeightsEntry.from_dict({"file": "weights.safetensors", **weights})
    assert entry.checkpoint_format == "official" and entry.sha256 == sha256_file(path) and entry.trained is True
    ids, mask = model.tokenize(model.prompts(model.class_names))
    assert ids.shape == (7, 69)
    with torch.no_grad():
        t = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
        out = model.forward_image(torch.randn(1, 3, 256, 256), torch.randn(1, 1, 256, 256), t)
    assert t.shape == (7, 512) and out["logits"].shape == (1, 7, 256, 256)
    assert out["score_map"].shape == (1, 7, 16, 16) and torch.isfinite(out["logits"]).all()
    del model
    gc.collect()


def test_official_wrong_files_refused(official_file, tmp_path):
    from rsvl_train.factory import get_model_config
    from rsvl_train.models.tsmnet_official import TSMNetOfficial
    from rsvl_train.official import load_official_checkpoint, map_official

    _, sd = official_file
    torch.save({"visual.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}, tmp_path / "clip.pt")
    with pytest.raises(PretrainedWeightsError, match="clip.pt is a CLIP checkpoint .* not an official TSMNet"):
        load_official_checkpoint(tmp_path / "clip.pt")  # refused before any model is built
    model = TSMNetOfficial(get_model_config("tsmnet-official"))
    short = {k: v for k, v in sd.items() if k != "gamma"}
    with pytest.raises(PretrainedWeightsError, match=r"short.pth is not a complete official TSMNet .* lacks 1 "
                                                     r"tensors the model needs \(gamma\)"):
        map_official(model, short, "short.pth")
    extra = {**sd, "new_head.weight": torch.zeros(1)}
    with pytest.raises(PretrainedWeightsError, match=r"has 1 tensors the model has no place for \(new_head.weight\)"):
        map_official(model, extra, "extra.pth")
    six = {**sd, "decode_head.conv_seg.weight": torch.zeros(6, 256, 1, 1), "decode_head.conv_seg.bias": torch.zeros(6)}
    with pytest.raises(PretrainedWeightsError, match=r"decode_head.conv_seg.weight has shape \(6, 256, 1, 1\).*"
                                                     r"the checkpoint has 6 classes"):
        map_official(model, six, "six.pth")
    del model
    gc.collect()


# ------------------------------------------------------------------------- export options + manifest
def test_export_options_refused_in_one_line():
    from rsvl_export.pipeline import ExportOptions, load_model

    with pytest.raises(ValueError, match="--checkpoint-format official needs --checkpoint PATH"):
        load_model(ExportOptions(model="tsmnet-official", checkpoint_format="official"))
    with pytest.raises(ValueError, match="give one of them"):
        load_model(ExportOptions(model="tsmnet", checkpoint="x.safetensors", pretrained="clip.bin"))
    with pytest.raises(ValueError, match="--checkpoint-format 'mmseg': expected 'rsvl' or 'official'"):
        load_model(ExportOptions(model="tsmnet", checkpoint_format="mmseg"))


def test_weights_entry_old_and_new_manifests():
    from rsvl_runtime.manifest import BundleError, WeightsEntry

    old = {"file": "weights.safetensors", "source": "runs/x/best.safetensors", "trained": True, "metrics": {"miou": 0.5}}
    e = WeightsEntry.from_dict(old)
    assert e.pretrained == () and e.sha256 is None and e.to_dict() == old  # old manifests round-trip unchanged
    new = {**old, "sha256": "ab" * 32, "checkpoint_format": "rsvl",
           "pretrained": [{"source": "open_clip", "kind": "clip", "path": "clip.bin", "sha256": "cd" * 32,
                           "tensors": 447}]}
    e = WeightsEntry.from_dict(new)
    assert e.pretrained[0].tensors == 447 and e.to_dict() == new
    with pytest.raises(BundleError, match=r"weights.pretrained\[0\]"):
        WeightsEntry.from_dict({**old, "pretrained": [{"source": "timm"}]})
