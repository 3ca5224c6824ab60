"""Run under `accelerate launch`: the real trainer; at each snapshot (where the trainer runs its own cross-rank
check) every rank writes `rank<r>-snap<k>.safetensors`: the full state of its G and D, parameters and buffers
(w_avg, the noise maps), and of the family's loss terms (the path-length mean)."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

import distgan.ddp
import distgan.training
import distgan.training.actions
from distgan.config import load_config

out = Path(sys.argv[1])
cfg = load_config(sys.argv[2], sys.argv[3:])
snapshots = 0
real_check = distgan.ddp.check_consistent
real_snapshot = distgan.training.actions.RunActions.snapshot


def snapshot(self, step, signals):
    global snapshots
    rank, snapshots = PartialState().process_index, snapshots + 1
    modules = {"G": self.state.g_module, "D": self.state.d_module, "family": self.state.loss_terms}
    tensors = {f"{name}.{key}": t.detach().cpu().contiguous()
               for name, module in modules.items() for key, t in module.state_dict().items()}
    save_file(tensors, str(out / f"rank{rank}-snap{snapshots}.safetensors"))
    return real_snapshot(self, step, signals)


distgan.training.actions.RunActions.snapshot = snapshot
distgan.training.train(cfg)
