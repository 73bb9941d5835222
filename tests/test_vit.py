"""Issue 35: the DPT segmenter on timm's DINOv2 ViTs (random weights, tiny sizes), ``dinov2``
weights from the caches, and the UniMatch V2 recipe's teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from s4seg.errors import CheckpointError, ConfigError
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.config import load_config
from s4seg.training.models import segmenter_from_arch
from s4seg.training.models.dpt import DPTSegmenter, complementary_masks
from s4seg.training.models.vit import ViTEncoder
from s4seg.training.models.vit_weights import load_vit_weights
from s4seg.workflows.cli import main

TINY_VIT = {"name": "dpt", "num_classes": 5, "encoder": "vit_tiny_patch14"}
# The tiny preset at test sizes: crops on the patch grid (TINY_TRAINING's 48 is not).
VIT_TRAINING = [
    *TINY_TRAINING,
    "data.crop_size=[56, 56]",
    "train.val_every=100",
    "unimatch.unlabeled_batch_size=2",
]


@pytest.mark.parametrize("size", [(56, 84), (50, 77)])
def test_the_vit_segmenter_answers_at_the_input_size_and_trains_its_encoder(size) -> None:
    torch.manual_seed(0)
    model = segmenter_from_arch(TINY_VIT)
    logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)  # 50 x 77 is padded to the grid and cropped back
    logits.square().mean().backward()
    vit = model.backbone.vit
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.head.classifier[-1].weight.grad.abs().sum() > 0


def test_an_input_off_the_grid_is_answered_as_its_zero_padded_self_cropped() -> None:
    """50 x 77 is padded at the bottom and right to 56 x 84 (zeros: the mean colour after
    normalisation), and the logits cropped back to the top-left 50 x 77."""
    torch.manual_seed(0)
    model = segmenter_from_arch(TINY_VIT).eval()
    x = torch.randn(1, 3, 50, 77)
    padded = torch.zeros(1, 3, 56, 84)
    padded[..., :50, :77] = x
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :50, :77], atol=1e-5)


def test_complementary_masks_keep_each_channel_in_exactly_one_view() -> None:
    torch.manual_seed(0)
    masks = complementary_masks(8, 16, torch.device("cpu"))
    first, second = masks[:8], masks[8:]
    both = (first == 1) & (second == 1)
    kept_whole = both.all(1)
    assert kept_whole.sum() == 4  # int(0.5 * batch) images keep every channel in both views
    split = first[~kept_whole] + second[~kept_whole]
    assert torch.equal(split, torch.full_like(split, 2.0))  # x2 in one view, 0 in the other
    assert set(first[~kept_whole].unique().tolist()) == {0.0, 2.0}


def test_complementary_dropout_changes_only_the_strong_views_pass() -> None:
    torch.manual_seed(0)
    model = segmenter_from_arch(TINY_VIT).eval()
    x = torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        plain = model(x)
        dropped = model(x, complementary=True)
    assert plain.shape == dropped.shape
    assert not torch.allclose(plain, dropped)


def test_a_dpt_crop_off_the_patch_grid_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"data.crop_size \[48, 48\].*multiples of .*14"):
        load_config("synthetic-vit-tiny", ["data.crop_size=[48, 48]"])
    assert load_config("voc-unimatch-v2").model.backbone == "vit_base_patch14_dinov2"
    assert load_config("cityscapes-unimatch-v2").data.crop_size == (392, 392)


def _meta_file(encoder: ViTEncoder, path: Path) -> dict[str, torch.Tensor]:
    """Meta's release format: timm's keys plus the ``mask_token`` timm drops."""
    state = {k: torch.randn_like(v) for k, v in encoder.vit.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "mask_token": torch.zeros(1, encoder.embed_dim)}, path)
    return state


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_dinov2_weights_offline_and_missing_say_which_file_its_size_and_where(
    empty_caches: Path,
) -> None:
    encoder = ViTEncoder("vit_small_patch14_dinov2")
    with pytest.raises(CheckpointError) as error:
        load_vit_weights(encoder, "dinov2", "vit_small_patch14_dinov2")
    message = str(error.value)
    assert "dinov2_vits14_pretrain.pth" in message
    assert "about 88 MB" in message
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in message
    assert "models--timm--vit_small_patch14_dinov2.lvd142m" in message
    with pytest.raises(CheckpointError, match="random weights only"):
        load_vit_weights(ViTEncoder("vit_tiny_patch14"), "dinov2", "vit_tiny_patch14")


def test_dinov2_weights_placed_in_torchs_cache_load(empty_caches: Path) -> None:
    encoder = ViTEncoder("vit_small_patch14_dinov2")
    file = empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    state = _meta_file(encoder, file)
    report = load_vit_weights(encoder, "dinov2", "vit_small_patch14_dinov2")
    assert report.path == str(file) and report.matched == report.total
    loaded = encoder.vit.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_dinov2_weights_in_the_hugging_face_cache_come_first(empty_caches: Path) -> None:
    from safetensors.torch import save_file

    encoder = ViTEncoder("vit_small_patch14_dinov2")
    snapshot = empty_caches / "hf" / "models--timm--vit_small_patch14_dinov2.lvd142m"
    file = snapshot / "snapshots" / "0123abc" / "model.safetensors"
    file.parent.mkdir(parents=True)
    state = {k: torch.randn_like(v).contiguous() for k, v in encoder.vit.state_dict().items()}
    save_file(state, str(file))
    # Meta's file in torch's cache too, under its own name: the Hugging Face one wins.
    _meta_file(
        encoder, empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    )
    assert load_vit_weights(encoder, "dinov2", "vit_small_patch14_dinov2").path == str(file)
    assert torch.equal(encoder.vit.pos_embed, state["pos_embed"])


def test_a_weight_file_of_another_vit_is_refused_naming_it(tmp_path: Path) -> None:
    small = ViTEncoder("vit_small_patch14_dinov2")
    _meta_file(ViTEncoder("vit_tiny_patch14"), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match=r"tiny.pth does not fit vit_small_patch14_dinov2"):
        load_vit_weights(small, tmp_path / "tiny.pth", "vit_small_patch14_dinov2")


def _train_v2(synth_root: Path, out: Path, *extra: str) -> None:
    settings = [*VIT_TRAINING, f"data.root={synth_root}", f"train.out_dir={out}", *extra]
    args = ["train", "unimatch-v2", "--config", "synthetic-vit-tiny"]
    assert main([*args, *[f"--set={s}" for s in settings]]) == 0


@pytest.mark.trains
def test_the_teacher_follows_the_student_as_the_recipe_says(
    synth_root: Path, tmp_path: Path
) -> None:
    """m = min(1 - 1/(t+1), 0.996): after step 0 the teacher is the student; after step 1 it is
    the mean of the teacher it was and the student now. The student is what the optimiser
    moved; the checkpoint's model (export's) is the teacher."""
    _train_v2(synth_root, tmp_path, "train.iterations=3", "train.snapshot_every=1")
    snaps = [Checkpoint.load(tmp_path / "snapshots" / f"iter_00000{i}.pt") for i in (1, 2, 3)]
    assert all(s.trainer == "unimatch-v2" and s.student is not None for s in snaps)
    one, two, three = snaps
    assert one.student is not None and two.student is not None and three.student is not None
    for key, teacher in one.model.items():
        assert torch.equal(teacher, one.student[key]), key
    moved = 0
    for key, teacher in two.model.items():
        expected = 0.5 * one.model[key] + 0.5 * two.student[key]
        assert torch.allclose(teacher, expected, atol=1e-6), key
        moved += not torch.equal(two.student[key], one.student[key])
    assert moved > 10  # the optimiser moved the student
    key = "head.classifier.2.weight"
    expected = 2 / 3 * two.model[key] + 1 / 3 * three.student[key]
    assert torch.allclose(three.model[key], expected, atol=1e-6)
    assert not torch.equal(three.model[key], three.student[key])


@pytest.mark.trains
def test_unimatch_v2_resumes_bit_exact(synth_root: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train_v2(synth_root, straight, "train.iterations=4", "train.snapshot_every=2")
    snapshot = straight / "snapshots" / "iter_000002.pt"
    assert (
        main(["train", "unimatch-v2", "--resume", str(snapshot), f"--set=train.out_dir={resumed}"])
        == 0
    )
    a, b = Checkpoint.load(straight / "last.pt"), Checkpoint.load(resumed / "last.pt")
    assert a.iteration == b.iteration == 4
    for name in ("model", "student"):
        ours, theirs = getattr(a, name), getattr(b, name)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    state_a, state_b = a.optimizer["state"], b.optimizer["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


@pytest.mark.trains
def test_unimatch_v2_takes_flexmatch_thresholds(synth_root: Path, tmp_path: Path, capsys) -> None:
    """``unimatch.threshold_rule=flexmatch`` reaches V2's unlabeled terms: at initialisation
    no teacher pixel reaches 0.95, so only the class-wise warm-up trains on them."""
    _train_v2(synth_root, tmp_path / "fixed", "train.iterations=1")
    assert "threshold_fg" not in capsys.readouterr().err
    _train_v2(
        synth_root, tmp_path / "flex", "train.iterations=1", "unimatch.threshold_rule=flexmatch"
    )
    assert "threshold_fg 0 " in capsys.readouterr().err
    fixed, flex = (Checkpoint.load(tmp_path / n / "last.pt").student for n in ("fixed", "flex"))
    assert fixed is not None and flex is not None
    assert any(not torch.equal(fixed[k], flex[k]) for k in fixed)


def test_dpt_is_a_segmenter_the_trainers_build() -> None:
    cfg = load_config("synthetic-vit-tiny")
    from s4seg.training.models import segmenter_arch

    model = segmenter_from_arch(segmenter_arch(cfg.model, 7))
    assert isinstance(model, DPTSegmenter)
    groups = model.param_groups(1e-3, 40.0)
    assert [g["lr"] for g in groups] == [1e-3, 4e-2]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
