"""The seed's network as a task: Flatten, Dense 784->512, ReLU, Dense 512->512, ReLU,
Dense 512->10, trained with cross-entropy. The runner's default (`task: mlp`)."""

from experiments.core.model import Network


def network(config):
    return Network()
