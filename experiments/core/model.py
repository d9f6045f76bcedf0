"""The seed's network: Flatten, then Dense 784->512, ReLU, Dense 512->512, ReLU, Dense 512->10."""

from __future__ import annotations

from mindspore import nn


class Network(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dense_relu_sequential = nn.SequentialCell(
            nn.Dense(28 * 28, 512),
            nn.ReLU(),
            nn.Dense(512, 512),
            nn.ReLU(),
            nn.Dense(512, 10),
        )

    def construct(self, x):
        x = self.flatten(x)
        return self.dense_relu_sequential(x)
