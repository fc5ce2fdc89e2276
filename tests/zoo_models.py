"""The model zoos the tests prune and ``benchmarks/zoo_table.py`` tabulates, in one place.

Every model is built untrained (``weights=None`` / ``pretrained=False``): nothing is
downloaded. Inputs are small (64 px) where the architecture allows; models whose
attention biases or windows fix the resolution get the size they need.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import torch
import torchvision
from torch import nn

SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)

# One representative (the smallest member) of every torchvision classification family.
TORCHVISION_FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121",
    "efficientnet": "efficientnet_b0", "efficientnet_v2": "efficientnet_v2_s", "googlenet": "googlenet",
    "inception": "inception_v3", "maxvit": "maxvit_t", "mnasnet": "mnasnet0_5",
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3": "mobilenet_v3_small", "regnet_x": "regnet_x_400mf",
    "regnet_y": "regnet_y_400mf", "resnet": "resnet18", "resnext": "resnext50_32x4d",
    "shufflenet_v2": "shufflenet_v2_x0_5", "squeezenet": "squeezenet1_0", "swin": "swin_t",
    "swin_v2": "swin_v2_t", "vgg": "vgg11", "vit": "vit_b_32", "wide_resnet": "wide_resnet50_2",
}
TORCHVISION_SIZES = {"inception_v3": 299, "maxvit_t": 224, "vit_b_32": 224, "vit_b_16": 224, "vit_h_14": 224,
                     "vit_l_16": 224, "vit_l_32": 224}


@dataclasses.dataclass(frozen=True)
class TimmModel:
    family: str
    name: str
    size: int | None = None  # a resolution the model needs; None: any (the requested size)
    img_size: bool = False   # tell the model its input size (ViT-style position embeddings)
    kwargs: tuple = ()       # extra create_model arguments, as (key, value) pairs


TIMM = [
    TimmModel("resnet", "resnet18"), TimmModel("resnet-deep-stem", "resnet10t"),
    TimmModel("efficientnet", "efficientnet_b0"), TimmModel("mobilenetv3", "mobilenetv3_small_050"),
    TimmModel("convnext", "convnext_atto"), TimmModel("vit", "vit_tiny_patch16_224", img_size=True),
    TimmModel("deit", "deit_tiny_patch16_224", img_size=True),
    TimmModel("swin", "swin_tiny_patch4_window7_224", size=128, img_size=True, kwargs=(("window_size", 4),)),
    TimmModel("regnet", "regnetx_002"), TimmModel("ghostnet", "ghostnet_050"), TimmModel("ghostnetv2", "ghostnetv2_100"),
    TimmModel("rexnet", "rexnet_100"), TimmModel("dla", "dla46_c"), TimmModel("cspnet", "cspresnet50"),
    TimmModel("levit", "levit_128s", size=128, img_size=True), TimmModel("mixer", "mixer_s32_224", img_size=True),
    TimmModel("poolformer", "poolformer_s12"), TimmModel("mobilevit", "mobilevit_xxs"),
    TimmModel("edgenext", "edgenext_xx_small"), TimmModel("hrnet", "hrnet_w18_small"), TimmModel("dpn", "dpn48b"),
    TimmModel("res2net", "res2net50_26w_4s"), TimmModel("densenet", "densenet121"), TimmModel("repvgg", "repvgg_a0"),
    TimmModel("lcnet", "lcnet_050"), TimmModel("efficientformer", "efficientformer_l1", size=224),
    TimmModel("gernet", "gernet_s"), TimmModel("fastvit", "fastvit_t8"),
    TimmModel("mixnet", "mixnet_s"), TimmModel("nfnet", "nf_regnet_b0"),
]

# The audit's second variant of every timm family issue 16 names, and both variants of the
# vision transformers it names that the test zoo lacks (benchmarks/left_whole_audit.py).
TIMM_AUDIT = [
    TimmModel("nfnet", "nf_resnet26"), TimmModel("mixnet", "mixnet_m"), TimmModel("poolformer", "poolformerv2_s12"),
    TimmModel("dpn", "dpn68"),
    TimmModel("swin", "swinv2_tiny_window8_256", size=128, img_size=True, kwargs=(("window_size", 4),)),
    TimmModel("rexnet", "rexnetr_100"), TimmModel("edgenext", "edgenext_x_small"),
    TimmModel("levit", "levit_128", size=128, img_size=True), TimmModel("cspnet", "cs3darknet_s"),
    TimmModel("eva", "eva02_tiny_patch14_224", size=56, img_size=True, kwargs=(("num_classes", 1000),)),
    TimmModel("eva", "eva02_small_patch14_224", size=56, img_size=True, kwargs=(("num_classes", 1000),)),
    TimmModel("beit", "beit_base_patch16_224", img_size=True), TimmModel("beit", "beitv2_base_patch16_224", img_size=True),
    TimmModel("cait", "cait_xxs24_224", img_size=True), TimmModel("cait", "cait_xxs36_224", img_size=True),
    TimmModel("xcit", "xcit_nano_12_p16_224", img_size=True), TimmModel("xcit", "xcit_nano_12_p8_224", img_size=True),
    TimmModel("pvt_v2", "pvt_v2_b0"), TimmModel("pvt_v2", "pvt_v2_b1"),
]


def image(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def torchvision_model(name: str, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    model = torchvision.models.get_model(name, weights=None)
    return model, image(TORCHVISION_SIZES.get(name, size))


def segmentation_model(name: str, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    """With the auxiliary head where the model has one, so it is pruned too."""
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
    if not name.startswith("lraspp"):
        kwargs["aux_loss"] = True
    return torchvision.models.get_model(name, **kwargs), image(size)


def timm_model(entry: TimmModel, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    import timm

    size = entry.size or size
    kwargs = dict(entry.kwargs)
    if entry.img_size:
        kwargs["img_size"] = size
    return timm.create_model(entry.name, pretrained=False, **kwargs), image(size)


DETECTION = torchvision.models.list_models(module=torchvision.models.detection)


def _fixed_counts(name: str, proposals: int, detections: int) -> dict[str, Any]:
    """Arguments that keep every candidate box (score thresholds 0, NMS IoU thresholds 1,
    which no overlap exceeds), so the number of proposals and detections, and with it the
    work of the per-box heads, is the same before and after pruning."""
    if name.startswith(("ssd", "retinanet", "fcos")):
        return {"score_thresh": 0.0, "nms_thresh": 1.0, "detections_per_img": detections,
                "topk_candidates": proposals}
    return {"rpn_pre_nms_top_n_test": proposals, "rpn_post_nms_top_n_test": proposals,
            "box_detections_per_img": detections, "box_score_thresh": 0.0, "rpn_nms_thresh": 1.0,
            "box_nms_thresh": 1.0}


def detection_model(name: str, size: int = 128, proposals: int = 20,
                    detections: int = 5) -> tuple[nn.Module, tuple]:
    """A torchvision detector in eval mode (in train mode it wants targets), its input one
    ``size``-pixel image, at most ``proposals`` RoIs or candidates per level and
    ``detections`` boxes out. SSD resizes to its own 300 or 320 pixels and gets two images:
    SSDlite's last maps are 1×1, and BatchNorm in train mode (calibration) needs two values."""
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None,
                              **_fixed_counts(name, proposals, detections)}
    images = 1
    if name.startswith("ssd"):
        images = 2
    else:
        kwargs.update(min_size=size, max_size=size)
    model = torchvision.models.get_model(name, **kwargs).eval()
    return model, ([torch.rand(3, size, size) for _ in range(images)],)


# YOLO models built from the yaml files ultralytics ships (nothing downloaded).
YOLO = {"yolov8n": "DetectionModel", "yolo11n": "DetectionModel", "yolov8n-seg": "SegmentationModel"}


def yolo_model(name: str, size: int = 32) -> tuple[nn.Module, torch.Tensor]:
    """At 32 px (1×1 at stride 32, hence a batch of 2 for BatchNorm in train mode)."""
    # ultralytics writes a settings file when imported and may look online: keep both local
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "pruneconf-ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics.nn.tasks

    return getattr(ultralytics.nn.tasks, YOLO[name])(f"{name}.yaml", verbose=False), image(size)


def unet_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A tiny diffusers ``UNet2DConditionModel`` (cross-attention to 5 text tokens) and one
    denoising step's inputs: noisy latents, a timestep and the text states."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    return model, {"sample": torch.randn(1, 4, 16, 16), "timestep": torch.tensor([10]),
                   "encoder_hidden_states": torch.randn(1, 5, 32)}


def unet2d_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A tiny unconditional diffusers ``UNet2DModel`` (attention in its middle block)."""
    from diffusers import UNet2DModel

    model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8)
    return model, {"sample": torch.randn(1, 3, 16, 16), "timestep": torch.tensor([10])}


VIDEO = torchvision.models.list_models(module=torchvision.models.video)
# (frames, pixels) a video model needs: MViT's position embeddings fix 16×224×224, S3D's
# final pooling wants 224 px; the others take small clips.
VIDEO_SIZES = {"mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224), "s3d": (16, 224)}


def video_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    frames, size = VIDEO_SIZES.get(name, (8, 64))
    batch = 1 if name in VIDEO_SIZES else 2
    return torchvision.models.get_model(name, weights=None), torch.randn(batch, 3, frames, size, size)


OPTICAL_FLOW = torchvision.models.list_models(module=torchvision.models.optical_flow)


def flow_model(name: str, size: int = 128, updates: int = 3) -> tuple[nn.Module, tuple]:
    """RAFT on two ``size``-pixel frames (a batch of 2), ``updates`` refinement steps."""
    return torchvision.models.get_model(name, weights=None), (image(size), image(size), updates)


class BiLSTMClassifier(nn.Module):
    """A speech/text-style model: Linear → 2-layer bidirectional LSTM → Linear on the last step."""

    def __init__(self, features: int = 40, hidden: int = 96, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(features, 64)
        self.rnn = nn.LSTM(64, hidden, num_layers=2, bidirectional=True, batch_first=True, dropout=0.1)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.inp(x))
        return self.head(y[:, -1])


# The models issue 4 names, at their usual input sizes (batch 2).
HEADLINE = {
    "shufflenet_v2_x1_0": lambda: torchvision_model("shufflenet_v2_x1_0", 224),
    "swin_t": lambda: torchvision_model("swin_t", 224),
    "vit_b_16": lambda: torchvision_model("vit_b_16", 224),
    "convnext_tiny": lambda: torchvision_model("convnext_tiny", 224),
    "inception_v3": lambda: torchvision_model("inception_v3", 299),
    "deeplabv3_resnet50": lambda: segmentation_model("deeplabv3_resnet50", 224),
    "lraspp_mobilenet_v3_large": lambda: segmentation_model("lraspp_mobilenet_v3_large", 224),
    "bilstm (2 layers)": lambda: (BiLSTMClassifier(), torch.randn(2, 50, 40)),
}
