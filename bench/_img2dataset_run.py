"""Runs img2dataset 1.47 on a pair list with settings given as JSON (bench.download's anchor).

Its own process, with the guard img2dataset's distributors need.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network


def main() -> None:
    from img2dataset import download

    settings = json.loads(sys.argv[1])
    download(
        url_list=settings["input"],
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="webdataset",
        output_folder=settings["output"],
        processes_count=settings["processes"],
        thread_count=settings["threads"],
        image_size=settings["image_size"],
        resize_mode=settings["resize_mode"],
        encode_format="jpg",
        encode_quality=settings["encode_quality"],
        number_sample_per_shard=settings["samples_per_shard"],
        distributor="multiprocessing",
        enable_wandb=False,
        timeout=10,
        retries=0,
    )


if __name__ == "__main__":
    main()
