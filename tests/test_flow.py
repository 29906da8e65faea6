"""Flow estimators of jdrl.flow: DIS accuracy and convention, the TorchScript backend, errors."""

from __future__ import annotations

import pytest
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from jdrl.flow import DISFlow, FlowEstimator, TorchScriptFlow, build_flow_estimator

SIZE = 128
MARGIN = 12  # border pixels where a shifted image has no counterpart


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    image = skimage.transform.resize(skimage.data.astronaut(), (SIZE, SIZE), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()


def constant_flow(dx: float, dy: float, batch: int = 1) -> torch.Tensor:
    return torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(batch, 2, SIZE, SIZE)


def bilinear_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """SPEC section 5 written with grid_sample, so that these tests do not need the compiled ops."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=image.dtype), torch.arange(width, dtype=image.dtype), indexing="ij"
    )
    grid_x = (xs + flow[:, 0]) / (width - 1) * 2 - 1
    grid_y = (ys + flow[:, 1]) / (height - 1) * 2 - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def shifted(reference: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """``moving(q) = reference(q - d)``, so ``moving(p + d) = reference(p)``: the true flow is ``d``."""
    return bilinear_warp(reference, -constant_flow(dx, dy, reference.shape[0]))


def interior(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


@pytest.mark.parametrize("dx, dy", [(2.5, -1.25), (-3.0, 1.6)])
def test_dis_recovers_a_known_shift(astronaut, dx, dy):
    moving = shifted(astronaut, dx, dy)
    flow = DISFlow()(astronaut, moving)
    assert flow.shape == (1, 2, SIZE, SIZE)
    error = interior(flow - constant_flow(dx, dy))
    assert error[:, 0].abs().median() < 0.2, "x component (channel 0)"
    assert error[:, 1].abs().median() < 0.2, "y component (channel 1)"


def test_dis_flow_aligns_moving_onto_reference_with_flow_warp(astronaut):
    import jdrl_ext

    moving = shifted(astronaut, 3.25, -2.0)
    flow = DISFlow()(astronaut, moving)
    aligned = jdrl_ext.flow_warp(moving, flow)
    error_aligned = interior(aligned - astronaut).abs().mean()
    error_unaligned = interior(moving - astronaut).abs().mean()
    assert error_aligned < 0.3 * error_unaligned


def test_dis_handles_batches_dtypes_and_no_gradients(astronaut):
    reference = torch.cat([astronaut, astronaut]).double().requires_grad_(True)
    moving = torch.cat([shifted(astronaut, 1.5, 0.0), shifted(astronaut, 0.0, -2.5)]).double()
    flow = DISFlow(preset="fast")(reference, moving)
    assert flow.dtype == torch.float64 and flow.device == reference.device
    assert not flow.requires_grad
    medians = interior(flow).flatten(2).median(dim=2).values
    torch.testing.assert_close(medians, torch.tensor([[1.5, 0.0], [0.0, -2.5]], dtype=torch.float64), atol=0.25, rtol=0)


def test_dis_on_identical_images_is_near_zero(astronaut):
    flow = DISFlow()(astronaut, astronaut)
    assert interior(flow).abs().median() < 0.05


def test_dis_accepts_grayscale_and_empty_batches(astronaut):
    gray = astronaut.mean(dim=1, keepdim=True)
    assert DISFlow()(gray, shifted(gray, 1.0, 1.0)).shape == (1, 2, SIZE, SIZE)
    assert DISFlow()(astronaut[:0], astronaut[:0]).shape == (0, 2, SIZE, SIZE)


def test_dis_checks_its_inputs(astronaut):
    with pytest.raises(ValueError, match="reference and moving"):
        DISFlow()(astronaut, astronaut[..., :64])
    with pytest.raises(ValueError, match="preset"):
        DISFlow(preset="slow")
    assert isinstance(DISFlow(), FlowEstimator)


class HalfDifferenceFlow(torch.nn.Module):
    """A stand-in flow network with one parameter, easy to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        difference = (moving - reference).mean(dim=1, keepdim=True)
        return self.scale * torch.cat([difference, -difference], dim=1)


def test_torchscript_backend_runs_a_saved_module_frozen(tmp_path):
    path = tmp_path / "flow.pt"
    torch.jit.script(HalfDifferenceFlow()).save(str(path))
    estimator = build_flow_estimator("torchscript", weights=str(path))
    assert isinstance(estimator, TorchScriptFlow) and isinstance(estimator, FlowEstimator)
    reference = torch.rand(2, 3, 9, 11, requires_grad=True)
    moving = torch.rand(2, 3, 9, 11)
    flow = estimator(reference, moving)
    difference = (moving - reference.detach()).mean(dim=1, keepdim=True)
    torch.testing.assert_close(flow, 0.5 * torch.cat([difference, -difference], dim=1))
    assert not flow.requires_grad
    assert all(not p.requires_grad for p in estimator._module.parameters())
    assert not estimator._module.training


def test_torchscript_backend_checks_the_output_shape(tmp_path):
    class WrongShape(torch.nn.Module):
        def forward(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
            return reference[:, :1]

    path = tmp_path / "wrong.pt"
    torch.jit.script(WrongShape()).save(str(path))
    with pytest.raises(ValueError, match="wrong.pt"):
        TorchScriptFlow(path)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_missing_or_broken_weights_are_errors_naming_the_file(tmp_path):
    missing = tmp_path / "no_such_flow.pt"
    with pytest.raises(FileNotFoundError, match="no_such_flow.pt"):
        build_flow_estimator("torchscript", weights=str(missing))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript archive")
    with pytest.raises(RuntimeError, match="broken.pt"):
        TorchScriptFlow(broken)


def test_build_flow_estimator_checks_its_arguments(tmp_path):
    assert isinstance(build_flow_estimator(), DISFlow)
    with pytest.raises(ValueError, match="weights"):
        build_flow_estimator("dis", weights=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="weights"):
        build_flow_estimator("torchscript")
    with pytest.raises(ValueError, match="'raft'"):
        build_flow_estimator("raft")
