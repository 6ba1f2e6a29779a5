"""What the smear recipes' training runs share (torch, workstation): deterministic kernels for a
seed, one optimiser step, the checkpoint a stopped run resumes from, and the chosen weights saved
with their float ONNX graph."""

from __future__ import annotations

from pathlib import Path


def deterministic(seed: int) -> None:
    import cv2
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    # Deterministic kernels (oneDNN's weight-gradient reductions included). Two runs in one long
    # process can still differ in the last bits (float sums in MKL/oneDNN depend on memory
    # alignment): a recipe is reproducible run for run, as a command.
    torch.use_deterministic_algorithms(True)
    cv2.setRNGSeed(seed)


def step(opt, sched, loss) -> float:
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def resume(ckpt: Path, settings: dict, model, opt, sched, log) -> dict:
    """The run's state from ``ckpt`` where it was written with the same settings, else a new one."""
    import torch

    state = {"epoch": 0, "history": [], "best": None, "seconds": 0.0}
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        if saved["settings"] == settings:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            state = saved["state"]
            log(f"resuming after epoch {state['epoch']}")
    return state


def checkpoint(ckpt: Path, settings: dict, model, opt, sched, state: dict) -> None:
    import torch

    torch.save({"settings": settings, "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "state": state}, ckpt)


def save(model, out: Path, input_shape: tuple[int, ...], outputs: list[str]) -> None:
    """The chosen weights as cellnet.pt and the float ONNX graph the export quantizes (batch 1)."""
    import torch

    torch.save(model.state_dict(), out / "cellnet.pt")
    torch.onnx.export(model, torch.zeros(*input_shape), str(out / "model-float.onnx"), input_names=["image"],
                      output_names=outputs, opset_version=17, dynamo=False)
