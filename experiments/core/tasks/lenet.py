"""LeNet-5, as MindSpore's model zoo writes it (models/official/cv/lenet), on MNIST.

The zoo's network reads 32x32 images through 5x5 `valid` convolutions; MNIST's digits are
28x28, so the first convolution pads by 2, which gives the zoo's shapes from there on:
6 x 28 x 28, pooled to 14 x 14, 16 x 10 x 10, pooled to 5 x 5, then Dense 400 -> 120 -> 84
-> 10. `model.channels` scales both convolutions (6 and 16 in the zoo, at 1.0).
"""

from mindspore import nn

keys = {"width": (1.0, 0.25, 4.0)}


class LeNet5(nn.Cell):
    def __init__(self, width: float = 1.0, num_class: int = 10) -> None:
        super().__init__()
        c1, c2 = max(1, round(6 * width)), max(1, round(16 * width))
        self.conv1 = nn.Conv2d(1, c1, 5, pad_mode="pad", padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, pad_mode="valid")
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Dense(c2 * 5 * 5, 120)
        self.fc2 = nn.Dense(120, 84)
        self.fc3 = nn.Dense(84, num_class)

    def construct(self, x):
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def network(config):
    return LeNet5(config.settings["width"])
