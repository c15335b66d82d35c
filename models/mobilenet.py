"""MobileNet v1 and v2 (width multiplier 1.0), written for small inputs.

With ``small_input=True`` (the default, for 28x28 / 32x32 images) the stem conv has
stride 1 instead of 2, so the network downsamples 16x instead of 32x and a 28x28 image
still has a 2x2 map before global pooling. With ``small_input=False`` the layout is the
ImageNet one from the papers.
"""

from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

# MobileNet v1: (output channels, stride) of each depthwise-separable block after the stem.
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

# MobileNet v2: (expansion t, output channels c, repeats n, first stride s) per stage.
_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ReLU6(HybridBlock):
    """min(max(x, 0), 6)."""

    def hybrid_forward(self, F, x):
        return F.clip(x, 0.0, 6.0)


def _conv_bn(
    out: nn.HybridSequential,
    channels: int,
    kernel: int,
    stride: int,
    groups: int = 1,
    in_channels: int = 0,
    act: str | None = "relu",
) -> None:
    """Append conv (no bias) -> batch norm -> activation (``relu``, ``relu6`` or None)."""
    out.add(
        nn.Conv2D(
            channels,
            kernel_size=kernel,
            strides=stride,
            padding=kernel // 2,
            groups=groups,
            in_channels=in_channels,
            use_bias=False,
        )
    )
    out.add(nn.BatchNorm())
    if act == "relu":
        out.add(nn.Activation("relu"))
    elif act == "relu6":
        out.add(ReLU6())


class MobileNetV1(HybridBlock):
    """MobileNet v1: a 3x3 conv stem then 13 depthwise-separable conv blocks."""

    def __init__(self, classes: int = 10, small_input: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                _conv_bn(self.features, 32, 3, 1 if small_input else 2)
                in_ch = 32
                for out_ch, stride in _V1_BLOCKS:
                    # depthwise 3x3, then pointwise 1x1
                    _conv_bn(self.features, in_ch, 3, stride, groups=in_ch, in_channels=in_ch)
                    _conv_bn(self.features, out_ch, 1, 1, in_channels=in_ch)
                    in_ch = out_ch
                self.features.add(nn.GlobalAvgPool2D(), nn.Flatten())
            self.output = nn.Dense(classes, in_units=in_ch)

    def hybrid_forward(self, F, x):
        """Return class scores (logits) of shape (batch, classes)."""
        return self.output(self.features(x))


class InvertedResidual(HybridBlock):
    """MobileNet v2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    Adds the input back when the block keeps both the resolution and the channel count.
    """

    def __init__(
        self, in_channels: int, channels: int, expansion: int, stride: int, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.use_shortcut = stride == 1 and in_channels == channels
        hidden = in_channels * expansion
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            with self.body.name_scope():
                if expansion != 1:
                    _conv_bn(self.body, hidden, 1, 1, in_channels=in_channels, act="relu6")
                _conv_bn(
                    self.body, hidden, 3, stride, groups=hidden, in_channels=hidden, act="relu6"
                )
                _conv_bn(self.body, channels, 1, 1, in_channels=hidden, act=None)

    def hybrid_forward(self, F, x):
        out = self.body(x)
        return out + x if self.use_shortcut else out


class MobileNetV2(HybridBlock):
    """MobileNet v2: a 3x3 conv stem, 17 inverted-residual blocks and a 1x1 conv to 1280."""

    def __init__(self, classes: int = 10, small_input: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                _conv_bn(self.features, 32, 3, 1 if small_input else 2, act="relu6")
                in_ch = 32
                for expansion, out_ch, repeats, first_stride in _V2_STAGES:
                    for i in range(repeats):
                        stride = first_stride if i == 0 else 1
                        self.features.add(InvertedResidual(in_ch, out_ch, expansion, stride))
                        in_ch = out_ch
                _conv_bn(self.features, 1280, 1, 1, in_channels=in_ch, act="relu6")
                self.features.add(nn.GlobalAvgPool2D(), nn.Flatten())
            self.output = nn.Dense(classes, in_units=1280)

    def hybrid_forward(self, F, x):
        """Return class scores (logits) of shape (batch, classes)."""
        return self.output(self.features(x))


def mobilenet_v1(classes: int = 10, small_input: bool = True) -> MobileNetV1:
    """Build an uninitialised MobileNet v1 (width 1.0)."""
    return MobileNetV1(classes=classes, small_input=small_input)


def mobilenet_v2(classes: int = 10, small_input: bool = True) -> MobileNetV2:
    """Build an uninitialised MobileNet v2 (width 1.0)."""
    return MobileNetV2(classes=classes, small_input=small_input)
