"""The per-cell classifiers' network (PyTorch, workstation): a small depthwise-separable CNN on one
cell's crop (edgehema.smear.cells.CELL_INPUT square, the cell at a fixed physical scale), global
average pooling, one linear layer and a softmax; about 60 k weights. Trained by
export.training.cell_classifier; its ONNX form runs on the device (edgehema.smear.cells)."""

from __future__ import annotations

from export.layers import conv, sep


def build_model(n_classes: int):
    import torch
    from torch import nn

    class CellTypeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                conv(3, 24, 2), sep(24, 32),                 # /2
                sep(32, 48, 2), sep(48, 48),                 # /4
                sep(48, 96, 2), sep(96, 96),                 # /8
                sep(96, 160, 2), sep(160, 160))              # /16
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(160, n_classes)

        def forward(self, x):
            f = self.features(x).mean(dim=(2, 3))
            return torch.softmax(self.head(self.drop(f)), dim=1)

        def logits(self, x):
            return self.head(self.drop(self.features(x).mean(dim=(2, 3))))

    return CellTypeNet()
