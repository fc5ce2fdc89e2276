"""Models from other packages, pruned exactly (``helpers.check_pruning``, pinned in
``zoo_pins.py``): YOLOv8n, YOLO11n and YOLOv8n-seg built by ultralytics from the yaml files
it ships, and a tiny diffusers ``UNet2DConditionModel`` whose denoising step (a DDIM
scheduler step on its noise prediction) is the same for the masked and the applied model.
Nothing is downloaded. ultralytics (AGPL-3.0) is a test dependency only: see README.
"""
import pytest
import torch

from helpers import check_pruning
from zoo_models import YOLO, unet_model, yolo_model


@pytest.mark.parametrize("name", sorted(YOLO))
def test_yolo(name):
    model, x = yolo_model(name)
    check_pruning(model, x, f"ultralytics:{name}")


def test_unet_denoising_step():
    from diffusers import DDIMScheduler

    model, inputs = unet_model()
    pruned = check_pruning(model, inputs, "diffusers:UNet2DConditionModel")
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(100)
    t = int(inputs["timestep"])
    assert t in scheduler.timesteps

    def step(noise: torch.Tensor) -> torch.Tensor:
        return scheduler.step(noise, t, inputs["sample"]).prev_sample

    masked, applied = step(pruned.masked[0]), step(pruned.applied[0])
    assert not torch.equal(masked, inputs["sample"])
    torch.testing.assert_close(applied, masked, atol=1e-5 * max(1.0, float(masked.abs().max())), rtol=0)
