"""The per-cell classifiers' network (PyTorch, workstation): a small depthwise-separable CNN on one
cell's crop (edgehema.smear.cells.CELL_INPUT square, the cell at a fixed physical scale), global
average pooling, one linear layer and a softmax; about 69 k weights at width 1 (the red-cell
shape classifier: width 1.5, about 150 k). Trained by
export.training.cell_classifier; its ONNX form runs on the device (edgehema.smear.cells)."""

from __future__ import annotations

from export.layers import conv, sep


def build_model(n_classes: int, width: float = 1.0):
    import torch
    from torch import nn

    a, b, c, d, e = (int(round(width * k / 8)) * 8 for k in (24, 32, 48, 96, 160))

    class CellTypeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                conv(3, a, 2), sep(a, b),                    # /2
                sep(b, c, 2), sep(c, c),                     # /4
                sep(c, d, 2), sep(d, d),                     # /8
                sep(d, e, 2), sep(e, e))                     # /16
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(e, n_classes)

        def forward(self, x):
            f = self.features(x).mean(dim=(2, 3))
            return torch.softmax(self.head(self.drop(f)), dim=1)

        def logits(self, x):
            return self.head(self.drop(self.features(x).mean(dim=(2, 3))))

    return CellTypeNet()
