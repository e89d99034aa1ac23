"""The trainer's checkpoints: everything a run needs to continue exactly, saved along the way and
read back by a resume (a mixin of :class:`.trainer.Trainer`; the folders are :mod:`.checkpoints`)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import LoraLabError
from . import checkpoints
from .data import stable_seed


class TrainerCheckpoints:
    """Saving and reading back checkpoints (a mixin: it reads the Trainer's state)."""

    def _checkpoint(self, step: int) -> None:
        from accelerate.utils import gather_object

        root = self.job.path / "checkpoints"
        tmp = root / f"step-{step:06d}.tmp"
        # rank 0 writes every rank's RNG state: the other ranks may run on nodes without the folder
        rngs = gather_object([_rng_state()])
        try:
            if self.main:
                checkpoints.staging(root, step)
                for rank, rng in enumerate(rngs):
                    torch.save(rng, tmp / f"rng-{rank}.pt")
                torch.save({"adapters": self._adapter_state(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.lr_scheduler.state_dict()}, tmp / "training.pt")
                state = {"step": step, "family": self.family, "config": self._fingerprint()}
                if self.validating:
                    state["validation"] = self._validation_state()
                final = checkpoints.commit(tmp, state, self.cfg.save.keep_last, self.best_step)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            last = checkpoints.latest(root)
            kept = f"{last[0].name} is intact" if last else "there is no earlier one"
            raise LoraLabError(f"could not save the checkpoint at step {step} ({e}); {kept}") from None
        self.acc.wait_for_everyone()  # no rank ends (a stop) before the checkpoint is complete
        if self.main:
            self.emit({"type": "checkpoint", "step": step,
                       "path": str(final.relative_to(self.job.path))})

    def _adapter_state(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().clone() for k, v in self.acc.unwrap_model(m).named_parameters()
                 if v.requires_grad} for m in self.models]

    def _read_checkpoint(self) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
        """The latest checkpoint as rank 0 reads it from the job folder, sent to every rank
        (the others may run on nodes without the folder), each with its own RNG state."""
        from accelerate.utils import broadcast_object_list

        found: Any = None
        if self.main:
            try:
                found = self._load_checkpoint()
            except LoraLabError as e:
                found = str(e)  # every rank raises it: none waits for the others in vain
        found = broadcast_object_list([found])[0]
        if isinstance(found, str):
            raise LoraLabError(found)
        if found is None:
            return None
        path, state, saved = found
        saved["rng"] = saved.pop("rngs")[self.acc.process_index]
        return path, state, saved

    def _load_checkpoint(self) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
        found = checkpoints.latest(self.job.path / "checkpoints")
        if found is None:
            return None
        path, state = found
        if state.get("family") != self.family:
            raise LoraLabError(f"cannot resume from {path.name}: it trained a "
                               f"{state.get('family')} model, the config names a {self.family} one")
        if state["config"] != self._fingerprint():
            raise LoraLabError(f"cannot resume from {path.name}: the training settings changed "
                               "since it was saved (only [sample], [validation] but the images it holds "
                               "out, and save.every_n_steps/keep_last may change, and the process "
                               "count must match, and on the CPU the thread count)")
        try:  # on the CPU: sent to the other ranks, then placed where each rank trains
            saved = torch.load(path / "training.pt", map_location="cpu", weights_only=True)
            saved["rngs"] = [torch.load(path / f"rng-{rank}.pt", weights_only=True)
                             for rank in range(self.acc.num_processes)]
        except Exception as e:  # torch raises many types for a damaged file
            raise LoraLabError(f"checkpoint {path} is damaged ({str(e).splitlines()[0]}); "
                               "delete that folder to resume from the one before it") from None
        return path, state, saved

    def _apply_checkpoint(self, path: Path, state: dict[str, Any], saved: dict[str, Any]) -> int:
        with torch.no_grad():
            for model, adapters in zip(self.models, saved["adapters"]):
                params = dict(self.acc.unwrap_model(model).named_parameters())
                for name, value in adapters.items():
                    params[name].copy_(value)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        self._restore_validation(state.get("validation"))
        self.emit({"type": "log", "level": "info", "message": f"resumed from {path.name}"})
        return state["step"]

    def _fingerprint(self) -> str:
        d = self.cfg.to_dict()
        d.pop("sample")
        d.pop("track")  # where the run is recorded, not what it learns
        d["dataset"].pop("cache_text")  # memory, not what is learned
        d["train"].pop("device")  # where, not what: checkpoints saved before it existed resume
        for key in ("every_n_steps", "keep_last"):
            d["save"].pop(key)
        held = d.pop("validation")  # only the images it holds out change what is learned
        if held["split"] or held["images"]:
            d["held_out"] = [held["split"], held["images"]]
        # CPU threads change a CPU run's sums, not a GPU run's: that one resumes on a node with
        # other cores (a Ray cluster's)
        threads = 0 if self.on_gpu else torch.get_num_threads()
        return f"{stable_seed(d, self.acc.num_processes, threads):08x}"


def _rng_state() -> dict[str, torch.Tensor]:
    """The global generators LoRA dropout draws from (everything else is seeded per draw)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
