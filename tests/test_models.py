"""Every registered FER architecture builds, trains a step and loads local ImageNet weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer

from fersynth.errors import FersynthError
from fersynth.models import create_model, get_model_entry, list_models, model_flops, model_info
from fersynth.models.transformers import swin_window_size

# (num_classes, in_chans, img_size): between them every value the brief asks for is covered
# by each model, at two builds per model so the heavy ones stay cheap.
CONFIGS = [(7, 1, 48), (8, 3, 64)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # batch-2 passes gain nothing from a second thread, and on a busy machine OpenMP's
    # spin-waiting makes them several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _step(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % num_classes).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None for g in grads.values())
    for name, g in grads.items():
        assert g is None or torch.isfinite(g).all(), f"non-finite grad in {name}"
    return out.detach()


@pytest.mark.parametrize("name", list_models())
def test_builds_forward_backward(name):
    """Forward and backward in train mode, and in eval mode (backward there at 48 px only, to
    keep the suite fast); eval mode is deterministic."""
    torch.manual_seed(0)
    for i, (num_classes, in_chans, img_size) in enumerate(CONFIGS):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        x = torch.randn(2, in_chans, img_size, img_size)
        _step(model.train(), x, num_classes)
        model.eval()
        if i == 0:
            out = _step(model, x, num_classes)
        else:
            with torch.no_grad():
                out = model(x)
            assert out.shape == (2, num_classes) and torch.isfinite(out).all()
        with torch.no_grad():
            assert torch.equal(out, model(x)), "eval mode must be deterministic"


@pytest.mark.parametrize("name", list_models())
def test_registry_entry(name):
    entry = get_model_entry(name)
    assert entry.description
    assert entry.default_img_size >= 32
    assert entry.default_in_chans in (1, 3)


def test_unknown_model_suggests_close_name():
    with pytest.raises(FersynthError) as exc:
        create_model("vgg_19")
    assert "vgg19" in (exc.value.hint or "")


def test_unknown_option_is_refused():
    with pytest.raises(FersynthError, match="unknown option"):
        create_model("fernet_s", widht=3)


def test_pretrained_refused_where_absent(tmp_path):
    with pytest.raises(FersynthError, match="'fernet_s' has no pretrained initialisation"):
        create_model("fernet_s", pretrained_path=str(tmp_path / "w.safetensors"))


@pytest.mark.parametrize(
    ("name", "img_size"), [("fernet_s", 112), ("vgg19", 100), ("ir50", 100), ("resnet18", 100)]
)
def test_other_input_sizes(name, img_size):
    model = create_model(name, img_size=img_size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, img_size, img_size)).shape == (1, 7)


def test_swin_window_divides_token_grid():
    assert swin_window_size(48) == 6
    assert swin_window_size(64) == 4
    assert swin_window_size(100) == 5
    assert swin_window_size(112) == 7
    assert swin_window_size(224) == 7


def test_resnet_small_stem_only_for_small_inputs():
    small = create_model("resnet18", img_size=48)
    big = create_model("resnet18", img_size=112)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)


def test_ir50_refuses_other_input_size():
    model = create_model("ir50", img_size=48).eval()
    with pytest.raises(FersynthError, match="built for 48x48"):
        model(torch.randn(1, 1, 64, 64))


# ------------------------------------------------------------------ ImageNet weights from disk


@pytest.fixture(scope="module")
def resnet18_imagenet(tmp_path_factory):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)  # ImageNet-shaped: 3 channels, 1000 classes
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file(sd, str(path))
    return path, sd


def test_resnet18_pretrained_roundtrip(resnet18_imagenet):
    path, sd = resnet18_imagenet
    model = create_model("resnet18", in_chans=1, img_size=112, pretrained_path=str(path))
    msd = model.state_dict()
    assert torch.allclose(msd["conv1.weight"], sd["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer3.1.conv2.weight", "layer4.0.downsample.1.running_var", "bn1.bias"):
        assert torch.equal(msd[key], sd[key]), key
    assert model.fc.weight.shape == (7, 512)  # classifier not taken from the checkpoint
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 1, 112, 112))).all()


def test_resnet18_pretrained_small_stem_and_torch_file(resnet18_imagenet, tmp_path):
    _, sd = resnet18_imagenet
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": sd}, path)
    model = create_model("resnet18", in_chans=3, img_size=48, pretrained_path=str(path))
    msd = model.state_dict()
    assert msd["conv1.weight"].shape == (64, 3, 3, 3)
    # resampling 7x7 -> 3x3 keeps each kernel's sum (its response to a flat image)
    assert torch.allclose(
        msd["conv1.weight"].sum((2, 3)), sd["conv1.weight"].sum((2, 3)), atol=1e-4
    )
    assert torch.equal(msd["layer2.0.conv1.weight"], sd["layer2.0.conv1.weight"])


def test_pretrained_wrong_architecture_is_a_clear_error(resnet18_imagenet):
    path, _ = resnet18_imagenet
    with pytest.raises(FersynthError, match="does not fit model 'resnet50'"):
        create_model("resnet50", pretrained_path=str(path))


def test_pretrained_missing_or_corrupt_file(tmp_path):
    with pytest.raises(FersynthError, match="not found"):
        create_model("resnet18", pretrained_path=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FersynthError, match="cannot read"):
        create_model("resnet18", pretrained_path=str(bad))


def test_vgg19_features_load_from_torchvision_layout(tmp_path):
    torch.manual_seed(2)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"], batch_norm=True)
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # ImageNet head: skipped whatever its shape
    path = tmp_path / "vgg19_bn.safetensors"
    save_file(sd, str(path))
    model = create_model("vgg19", in_chans=1, pretrained_path=str(path))
    msd = model.state_dict()
    assert torch.allclose(msd["features.0.weight"], sd["features.0.weight"].sum(1, keepdim=True))
    assert torch.equal(msd["features.49.weight"], sd["features.49.weight"])


def test_swin_t_pretrained_roundtrip(tmp_path):
    torch.manual_seed(3)
    ref = SwinTransformer(  # swin_tiny_patch4_window7_224 as published: 224, RGB, 1000 classes
        img_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
    )
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "swin_t.safetensors"
    save_file(sd, str(path))
    model = create_model("swin_t", in_chans=1, img_size=48, pretrained_path=str(path))
    msd = model.state_dict()
    assert torch.allclose(
        msd["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    for key in (
        "layers.2.blocks.3.mlp.fc1.weight",
        "layers.3.downsample.reduction.weight",
        "norm.weight",
    ):
        assert torch.equal(msd[key], sd[key]), key
    table = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert msd[table].shape == ((2 * 6 - 1) ** 2, 3)  # resized from the 7x7 window's 169 rows
    assert sd[table].shape == (169, 3)
    assert model.head.fc.weight.shape == (7, 768)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 1, 48, 48))).all()


# ------------------------------------------------------------------ cost


def test_model_flops_counts_multiply_adds_twice():
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    assert model_flops(conv, img_size=10, in_chans=1) == 2 * 10 * 10 * 8 * 9
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    assert model_flops(lin, img_size=4, in_chans=1) == 2 * 16 * 5


def test_fernet_s_stays_in_cpu_budget():
    info = model_info("fernet_s")
    assert info["img_size"] == 48 and info["in_chans"] == 1
    assert 0.05 <= info["gflops"] <= 0.15
    assert info["params"] < 2_000_000


def test_fernet_channels_last_matches():
    torch.manual_seed(4)
    model = create_model("fernet_s").eval()
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert torch.allclose(ref, out, atol=1e-4)
