"""Run under `accelerate launch`: the real trainer, with rank 1's loader starting with 5 skipped samples
(as if it had stepped over part of a bad shard with data.on_corrupt=skip)."""

import sys

from accelerate import PartialState

import distgan.training
import distgan.training.loop
from distgan.config import load_config

cfg = load_config(sys.argv[1], sys.argv[2:])


class Rank1Skipped(distgan.training.loop.ShardLoader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if PartialState().process_index == 1:
            self.skipped = 5


distgan.training.loop.ShardLoader = Rank1Skipped
distgan.training.train(cfg)
