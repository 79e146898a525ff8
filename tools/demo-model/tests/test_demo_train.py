"""The training script on a toy budget: it saves a registered pipeline, is reproducible from a
seed, and a run killed mid-way resumes to the very same weights."""

from __future__ import annotations

import pytest

from imagegen_gpu_worker.adapters import registry

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
train = pytest.importorskip("imagegen_demo_model.train")

TOY = ["--scenes", "64", "--vae-steps", "6", "--unet-steps", "6", "--batch", "2"]
WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def run(tmp_path, name, seed=0, processes=1):
    out = tmp_path / name
    train.main(
        [
            *TOY,
            "--processes",
            str(processes),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--state",
            str(tmp_path / f"{name}-state"),
            "--report",
            str(tmp_path / f"{name}.json"),
        ]
    )
    return registry.verify(out)


@pytest.fixture(autouse=True)
def small_snapshots(monkeypatch):
    monkeypatch.setattr(train, "SAVE_EVERY", 2)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a, b, c = run(tmp_path, "a"), run(tmp_path, "b"), run(tmp_path, "c", seed=1)
    assert a.files == b.files
    assert all(a.files[w] != c.files[w] for w in WEIGHTS)
    assert a.id == "shapes-demo" and a.family == "sd15"


def test_the_vae_in_its_own_process_gives_the_same_weights(tmp_path):
    """``--processes 2`` (the default) trains the VAE in a child process at the same time as
    the UNet; every stage uses one thread, so the weights are those of a run in one process."""
    assert run(tmp_path, "two", processes=2).files == run(tmp_path, "one").files


def test_a_failed_vae_process_stops_the_run_at_the_next_unet_snapshot(tmp_path, monkeypatch):
    real_start = train.start_vae_process

    def failing_child(argv):
        child = real_start(["--no-such-option"])  # argparse exits 2 at once
        child.wait()
        return child

    monkeypatch.setattr(train, "start_vae_process", failing_child)
    args = [*TOY, "--unet-steps", "40", "--out", str(tmp_path / "m"), "--state"]
    with pytest.raises(SystemExit, match="the VAE stage failed"):
        train.main([*args, str(tmp_path / "state"), "--report", str(tmp_path / "r.json")])
    snapshot = torch.load(tmp_path / "state" / "unet-state.pt", weights_only=False)
    assert snapshot["value"]["step"] == 2  # the first snapshot, not the end of the stage
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kill_after_saves", [1, 4])  # in the VAE stage, in the UNet stage
def test_a_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch, kill_after_saves):
    whole = run(tmp_path, "whole")
    saves = {"n": 0}
    real_save = train.Snapshots.save

    def save_then_die(self, name, value):
        real_save(self, name, value)
        saves["n"] += 1
        if saves["n"] == kill_after_saves:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train.Snapshots, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed")
    monkeypatch.setattr(train.Snapshots, "save", real_save)
    resumed = run(tmp_path, "resumed")
    assert resumed.files == whole.files
