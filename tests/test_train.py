"""The training entry point on CPU: a tiny synthetic ImageFolder, loss falls, a checkpoint resumes exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convfirst.params import ParameterError
from convfirst.train import EpochOrder, SeededSamples, TrainConfig, lr_factor, parse_args, train

IMG = 32
MODEL = "convfirstnet_p"


def write_synthetic_imagefolder(root: Path, per_class: int = 16, val_per_class: int = 4, seed: int = 0) -> Path:
    """Two classes told apart by colour (reddish vs bluish noise), as PNG files in train/ and val/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tint = {"red": np.array([200, 40, 40]), "blue": np.array([40, 40, 200])}
    for split, n in (("train", per_class), ("val", val_per_class)):
        for name, colour in tint.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(colour + rng.normal(0, 40, (IMG, IMG, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_imagefolder(tmp_path_factory.mktemp("synthetic"))


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=MODEL, epochs=3, batch_size=8, lr=4e-3 * 4096 / 8 / 4,
                warmup_epochs=0.0, drop_path=0.0, label_smoothing=0.0, img_size=IMG, workers=0, device="cpu",
                save_every=1000, log_every=1, eval=False)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_on_a_separable_synthetic_set(data_dir, tmp_path):
    torch.set_num_threads(2)
    summary = train(tiny_config(data_dir, tmp_path / "run", max_steps=8, eval=True, epochs=2))
    losses = summary["losses"]
    assert len(losses) == 8
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2]), losses
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["event"] == "train"] == list(range(1, 9))
    assert any(r["event"] == "eval" and r["val_images"] == 8 for r in records)
    assert (tmp_path / "run" / "last.pt").exists()


def test_interrupted_and_resumed_run_equals_uninterrupted(data_dir, tmp_path):
    torch.set_num_threads(2)
    straight = train(tiny_config(data_dir, tmp_path / "straight", max_steps=6, drop_path=0.1))
    first = train(tiny_config(data_dir, tmp_path / "resumed", max_steps=3, drop_path=0.1))  # stops mid-epoch 1
    second = train(tiny_config(data_dir, tmp_path / "resumed", max_steps=6, drop_path=0.1))  # resume auto
    assert first["global_step"] == 3 and second["global_step"] == 6
    # the resumed run continued where the first stopped, and saw the same batches as the straight run
    np.testing.assert_allclose(first["losses"] + second["losses"], straight["losses"], rtol=1e-5)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6


def test_epoch_order_shards_without_overlap_and_resumes_mid_epoch():
    ranks = [EpochOrder(10, rank=r, world_size=3, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    shards = [s.indices() for s in ranks]
    assert all(len(x) == 3 for x in shards)
    assert len(set(sum(shards, []))) == 9
    again = EpochOrder(10, rank=1, world_size=3, seed=1)
    again.set_epoch(2, start=2)
    assert again.indices() == shards[1][2:] and len(again) == 1
    ranks[0].set_epoch(3)
    assert ranks[0].indices() != shards[0]


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededSamples(Noise(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[2]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, ds[2]) and not torch.equal(a, ds[1])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2])


def test_learning_rate_schedule_warms_up_then_decays_to_floor():
    assert lr_factor(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.01) == pytest.approx(0.01)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_bad_configuration_names_the_parameter(tmp_path):
    with pytest.raises(ParameterError, match="data="):
        TrainConfig(data=str(tmp_path / "missing")).check()
    (tmp_path / "train").mkdir()
    with pytest.raises(ParameterError, match="batch_size"):
        TrainConfig(data=str(tmp_path), batch_size=0).check()
    with pytest.raises(ParameterError, match="device"):
        TrainConfig(data=str(tmp_path), device="tpu").check()


def test_command_line_flags_map_to_the_config():
    cfg = parse_args(["--data", "/d", "--batch-size", "16", "--no-amp", "--max-steps", "5", "--model", "convfirstnet_h"])
    assert (cfg.data, cfg.batch_size, cfg.amp, cfg.max_steps, cfg.model) == ("/d", 16, False, 5, "convfirstnet_h")
    assert cfg.channels_last is True


def test_torchrun_two_processes_with_gloo(data_dir, tmp_path):
    """DDP under torchrun on CPU (gloo): both ranks step together and rank 0 writes the checkpoint."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "convfirst.train", "--data", str(data_dir), "--out", str(out), "--model", MODEL,
           "--batch-size", "4", "--img-size", str(IMG), "--workers", "0", "--device", "cpu", "--max-steps", "2",
           "--log-every", "1", "--no-eval", "--epochs", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["event"] == "train"] == [1, 2]
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["global_step"] == 2 and state["config"]["batch_size"] == 4
