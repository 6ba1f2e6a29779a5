"""The building blocks the smear networks share (PyTorch, workstation): a 3 x 3 convolution and a
depthwise-separable one, each with batch norm and ReLU."""

from __future__ import annotations


def conv(cin: int, cout: int, stride: int = 1):
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def sep(cin: int, cout: int, stride: int = 1):
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))
