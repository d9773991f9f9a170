"""Run by test_loop.py under torchrun: one epoch of DDP training, each rank saves its weights."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from smoothapi.training.loop import TrainConfig, fit


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
    )
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(images, torch.zeros(64, dtype=torch.long))

    def loss_fn(net, x, _labels, generator, _step):
        noise = torch.randn(x.shape, generator=generator)
        return torch.nn.functional.mse_loss(net(x + 0.3 * noise), x)

    config = TrainConfig(epochs=2, batch_size=8, progress=False)
    fit(model, data, loss_fn, config, Path(out_dir) / "run")
    rank = torch.distributed.get_rank()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(out_dir) / f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
