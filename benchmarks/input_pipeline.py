"""Input pipeline speed: the device-resident loader vs torch DataLoader + torchvision transforms.

Both make the same training batches (shuffle, 4-px translation, flip, normalisation) from the same
uint8 tensors of CIFAR shape; each is timed over whole epochs (median), synchronised on CUDA.

    python benchmarks/input_pipeline.py [--device auto] [--images 50000] [--workers 4] [--quick]
"""

from __future__ import annotations

import statistics
import time

import arg_types
import pandas as pd
import torch
from arg_types import count
from train_speed import sync  # a sibling script: benchmarks/ is on sys.path when a benchmark runs

from sdexp.data import DeviceLoader, TorchLoader
from sdexp.environment import resolve_device
from sdexp.errors import reported
from sdexp.models import IMAGE_SIZE


def images_per_second(loader: DeviceLoader | TorchLoader, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first epoch warms up (worker start, kernel caches)
        start = time.perf_counter()
        seen = sum(len(y) for _x, y in loader)
        sync(device)
        times.append(time.perf_counter() - start)
    return seen / statistics.median(times[1:])


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--device", type=arg_types.device, default="auto")
    parser.add_argument("--images", type=count, default=None, help="(50000)")
    parser.add_argument("--batch-size", type=count, default=128)
    parser.add_argument(
        "--workers", type=arg_types.workers, default=None, help="DataLoader worker processes (4)"
    )
    parser.add_argument("--repeats", type=count, default=None, help="(3)")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: checks the script runs")
    args = parser.parse_args()
    arg_types.fill(
        args, {"images": 2048, "repeats": 1, "workers": 0}, {"images": 50_000, "repeats": 3, "workers": 4}
    )
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    common = {"mean": [0.5] * 3, "std": [0.25] * 3, "device": device, "train": True, "augment": True}
    fast = images_per_second(DeviceLoader(x, y, args.batch_size, **common), device, args.repeats)
    torch_path = images_per_second(
        TorchLoader(x, y, args.batch_size, num_workers=args.workers, **common), device, args.repeats
    )
    print(f"\n{args.images} images, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads), "
          f"DataLoader workers {args.workers}, median of {args.repeats} epochs")  # fmt: skip
    table = pd.DataFrame({"loader": ["device-resident (fast)", "DataLoader + torchvision"],
                          "images/s": [fast, torch_path], "ratio": [fast / torch_path, 1.0]})  # fmt: skip
    print(table.to_markdown(index=False, floatfmt=(None, ",.0f", ".1f")))


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
