"""The smear detector's network (PyTorch, workstation): a depthwise-separable backbone (strides 2-16),
a light feature pyramid back to stride 4, and CenterNet's three heads (a heat map per class, box
width/height, sub-pixel offset); about 0.2 M weights. Trained by export.training.smear_detector;
its ONNX form is what the device runs (edgehema.smear.learned)."""

from __future__ import annotations

from edgehema.smear.detections import SMEAR_CLASSES as CLASSES
from export.layers import conv, sep


def build_model():
    import torch
    from torch import nn

    class CellNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv(3, 16, 2), sep(16, 24))          # /2
            self.s2 = nn.Sequential(sep(24, 32, 2), sep(32, 32))             # /4
            self.s3 = nn.Sequential(sep(32, 64, 2), sep(64, 64))             # /8
            self.s4 = nn.Sequential(sep(64, 96, 2), sep(96, 96), sep(96, 96))  # /16
            self.lat3 = nn.Conv2d(64, 64, 1)
            self.lat2 = nn.Conv2d(32, 64, 1)
            self.top = nn.Conv2d(96, 64, 1)
            self.mix3 = sep(64, 64)
            self.mix2 = sep(64, 64)
            self.hm = nn.Sequential(conv(64, 48), nn.Conv2d(48, len(CLASSES), 1))
            self.wh = nn.Sequential(conv(64, 32), nn.Conv2d(32, 2, 1))
            self.off = nn.Sequential(conv(64, 32), nn.Conv2d(32, 2, 1))
            self.hm[-1].bias.data.fill_(-2.19)  # CenterNet's prior: sigmoid = 0.1

        def forward(self, x):
            f2 = self.s2(self.stem(x))
            f3 = self.s3(f2)
            f4 = self.s4(f3)
            p3 = self.mix3(self.lat3(f3) + nn.functional.interpolate(self.top(f4), size=f3.shape[2:], mode="nearest"))
            p2 = self.mix2(self.lat2(f2) + nn.functional.interpolate(p3, size=f2.shape[2:], mode="nearest"))
            return torch.sigmoid(self.hm(p2)), self.wh(p2), self.off(p2)

    return CellNet()
