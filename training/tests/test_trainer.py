"""Trainer smoke test (tiny config, well under a minute) and export round trip."""
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import torch

from training import safetensors
from training.check import compare, model_from_package
from training.export import golden
from training.train import REPO, train

SMOKE = REPO / "training/configs/smoke.json"


class TrainerSmokeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(REPO / "training/runs/smoke", ignore_errors=True)
        cls.result = train(SMOKE, fresh=True, export=True)
        cls.package = REPO / "training/runs/smoke/package"

    def test_loss_falls(self):
        curve = [row["loss"] for row in self.result["summary"]["history"]["train"]]
        self.assertLess(curve[-1], curve[0] - 1.0, f"loss did not fall: {curve}")

    def test_package_files(self):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "golden.json",
                     "training.json"):
            self.assertTrue((self.package / name).is_file(), name)
        config = json.loads((self.package / "config.json").read_text())
        self.assertEqual(config["model_type"], "olmoe")
        self.assertEqual(config["num_experts_per_tok"], 1)
        self.assertFalse(config["norm_topk_prob"])

    def test_export_round_trip(self):
        """The written safetensors reload into a fresh model that reproduces golden.json."""
        expected = json.loads((self.package / "golden.json").read_text())
        self.assertEqual(compare(expected, golden(model_from_package(self.package))), [])

    def test_round_trip_detects_corruption(self):
        """The check is not vacuous: a perturbed weight is caught."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "pkg"
            shutil.copytree(self.package, copy)
            tensors = safetensors.load(copy / "model.safetensors")
            tensors["lm_head.weight"] += 0.05
            safetensors.save(tensors, copy / "model.safetensors")
            expected = json.loads((copy / "golden.json").read_text())
            self.assertNotEqual(compare(expected, golden(model_from_package(copy))), [])

    def test_resume_continues_from_checkpoint(self):
        """A resumed run reaches the same weights as the uninterrupted one (data depends only on seed and step)."""
        run_dir = "training/runs/smoke-resume"
        shutil.rmtree(REPO / run_dir, ignore_errors=True)
        train(SMOKE, fresh=True, export=False, stop_at=30, run_dir=run_dir)
        self.assertEqual(torch.load(REPO / run_dir / "checkpoint.pt")["step"], 30)
        resumed = train(SMOKE, export=False, run_dir=run_dir)["model"].state_dict()
        for name, tensor in self.result["model"].state_dict().items():
            torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-5, msg=name)


if __name__ == "__main__":
    unittest.main()
