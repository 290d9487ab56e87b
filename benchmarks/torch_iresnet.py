"""The same IResNet in PyTorch, only for the side-by-side timing in train_step.py."""

import torch
from torch import nn

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class _Block(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.body = nn.Sequential(
        nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
    self.down = None
    if stride != 1 or cin != cout:
      self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    return self.body(x) + (self.down(x) if self.down is not None else x)


def make_iresnet(depth, width, emb, image_size, classes):
  w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
  layers = [nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.PReLU(w[0])]
  cin = w[0]
  for n, c in zip(_BLOCKS[depth], w):
    for i in range(n):
      layers.append(_Block(cin, c, 2 if i == 0 else 1))
      cin = c
  h, wd = image_size
  for _ in range(4):
    h, wd = (h + 1) // 2, (wd + 1) // 2
  layers += [nn.BatchNorm2d(cin), nn.Flatten(), nn.Linear(cin * h * wd, emb), nn.BatchNorm1d(emb)]
  return nn.Sequential(*layers), nn.Parameter(torch.randn(emb, classes) * 0.01)
