"""Sparsity toolbox: mask upkeep, SET/RigL updates, magnitude pruning, rewinding, distillation loss, the
sparse-bitmask package round trip and fine-tuning with fixed masks (tiny shapes; a few seconds in all)."""
import json
import math
import shutil
import unittest
from pathlib import Path

import torch

from training import safetensors
from training.data import build_corpus
from training.export import validation_record
from training.finetune import finetune, load_config, train_step
from training.lottery import lottery
from training.distill import distill
from training.sparse_train import initial_masks, sparse_settings, sparse_train
from training.model import ModelConfig, SwitchOlmoe
from training.sparse_package import pack_bitmask, read_package, unpack_bitmask, write_package
from training.sparsity import (apply_masks, density, distillation_loss, imp_schedule, is_update_step,
                               magnitude_mask, mask_gradients, masks_from_weights, random_mask, rewind,
                               rigl_update, set_update, update_fraction)
from training.train import REPO, make_optimizer

torch.set_num_threads(1)
FINETUNE_SMOKE = REPO / "training/configs/finetune-smoke.json"


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_matrix(rows=24, cols=20, keep=0.4, seed=0):
    g = generator(seed)
    mask = random_mask((rows, cols), keep, g)
    weight = torch.randn(rows, cols, generator=g) * mask
    return weight, mask


class ScheduleTest(unittest.TestCase):
    def test_cosine_update_fraction(self):
        self.assertAlmostEqual(update_fraction(0, 0.3, 100), 0.3)
        self.assertAlmostEqual(update_fraction(50, 0.3, 100), 0.15)
        self.assertAlmostEqual(update_fraction(25, 0.3, 100), 0.15 * (1 + math.cos(math.pi / 4)))
        self.assertEqual(update_fraction(100, 0.3, 100), 0.0)
        self.assertEqual(update_fraction(150, 0.3, 100), 0.0)

    def test_update_steps(self):
        self.assertEqual([s for s in range(0, 40) if is_update_step(s, 10, 30)], [10, 20])

    def test_imp_schedule_reaches_target_with_equal_ratios(self):
        targets = imp_schedule(0.9, 3)
        self.assertAlmostEqual(targets[-1], 0.9)
        kept = [1.0] + [1 - t for t in targets]
        ratios = [b / a for a, b in zip(kept, kept[1:])]
        for r in ratios:
            self.assertAlmostEqual(r, ratios[0])


class MaskTest(unittest.TestCase):
    def test_random_mask_exact_density(self):
        mask = random_mask((64, 32), 0.25, generator(3))
        self.assertEqual(int(mask.sum()), 512)

    def test_masks_from_weights_only_experts(self):
        weights = {"model.layers.0.mlp.experts.3.up_proj.weight": torch.tensor([[0.0, 1.0], [2.0, 0.0]]),
                   "model.layers.0.mlp.gate.weight": torch.zeros(2, 2)}
        masks = masks_from_weights(weights)
        self.assertEqual(list(masks), ["model.layers.0.mlp.experts.3.up_proj.weight"])
        self.assertEqual(masks["model.layers.0.mlp.experts.3.up_proj.weight"].tolist(), [[False, True], [True, False]])
        self.assertAlmostEqual(density(masks), 0.5)

    def test_apply_and_mask_gradients(self):
        w = torch.nn.Parameter(torch.ones(3, 4))
        mask = torch.rand(3, 4, generator=generator(1)) > 0.5
        (w * 2).sum().backward()
        mask_gradients({"w": w}, {"w": mask})
        apply_masks({"w": w}, {"w": mask})
        self.assertTrue(torch.equal(w.grad, 2.0 * mask))
        self.assertTrue(torch.equal(w.detach(), mask.float()))

    def test_magnitude_mask_keeps_largest(self):
        w = torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]])
        mask = magnitude_mask(w, 0.5)
        self.assertEqual(mask.tolist(), [[False, True, False, True], [False, False, True, True]])
        deeper = magnitude_mask(w, 0.75, mask)  # iterative: only among the survivors
        self.assertEqual(int(deeper.sum()), 2)
        self.assertTrue(bool((deeper <= mask).all()))
        with self.assertRaises(ValueError):
            magnitude_mask(w, 0.25, deeper)  # pruning never regrows


class SparseUpdateTest(unittest.TestCase):
    def check_update(self, weight, mask, new_weight, new_mask, k):
        self.assertGreater(k, 0)
        self.assertEqual(int(new_mask.sum()), int(mask.sum()), "density changed")
        dropped = mask & ~new_mask
        grown = new_mask & ~mask
        self.assertEqual(int(dropped.sum()), int(grown.sum()), "drop and regrow counts differ")
        self.assertLessEqual(int(dropped.sum()), k)
        self.assertTrue(bool((new_weight[grown] == 0).all()), "regrown weights must start at zero")
        self.assertTrue(bool((new_weight[~new_mask] == 0).all()), "inactive weights must be zero")
        kept = mask & new_mask
        # A survivor keeps its value, unless it was dropped and regrown in the same update (then it starts at 0).
        changed = kept & (new_weight != weight)
        self.assertTrue(bool((new_weight[changed] == 0).all()), "surviving weights must be unchanged")
        self.assertLessEqual(int(dropped.sum()) + int(changed.sum()), k)
        # The dropped weights are the smallest active magnitudes.
        if int(dropped.sum()):
            self.assertLessEqual(float(weight[dropped].abs().max()), float(weight[kept & ~changed].abs().min()))

    def test_set_keeps_density_over_a_schedule(self):
        weight, mask = sparse_matrix()
        g = generator(5)
        start = int(mask.sum())
        for step in range(10, 100, 10):
            fraction = update_fraction(step, 0.3, 100)
            new_weight, new_mask, k = set_update(weight, mask, fraction, g)
            self.check_update(weight, mask, new_weight, new_mask, k)
            self.assertEqual(k, int(fraction * start))
            # train a little: surviving and regrown weights move
            weight = (new_weight + 0.1 * torch.randn(weight.shape, generator=g)) * new_mask
            mask = new_mask
        self.assertEqual(int(mask.sum()), start)

    def test_rigl_grows_by_gradient(self):
        weight, mask = sparse_matrix(seed=2)
        grad = torch.randn(weight.shape, generator=generator(9))
        new_weight, new_mask, k = rigl_update(weight, mask, grad, 0.3)
        self.check_update(weight, mask, new_weight, new_mask, k)
        grown = new_mask & ~mask
        # Every grown position has a larger |gradient| than every inactive position left out.
        candidates_left = ~new_mask
        self.assertGreaterEqual(float(grad[grown].abs().min()), float(grad[candidates_left].abs().max()))

    def test_rigl_keeps_density_over_a_schedule(self):
        weight, mask = sparse_matrix(seed=4)
        g = generator(6)
        start = int(mask.sum())
        for step in range(0, 60, 5):
            grad = torch.randn(weight.shape, generator=g)
            new_weight, new_mask, k = rigl_update(weight, mask, grad, update_fraction(step, 0.3, 75))
            self.check_update(weight, mask, new_weight, new_mask, k)
            weight = (new_weight + 0.1 * torch.randn(weight.shape, generator=g)) * new_mask
            mask = new_mask
            self.assertEqual(int(mask.sum()), start)


class RewindTest(unittest.TestCase):
    def test_rewind_restores_saved_weights_under_mask(self):
        model = SwitchOlmoe(ModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_experts=2, max_position_embeddings=16))
        params = dict(model.named_parameters())
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for p in params.values():
                p.add_(1.0)
        masks = {n: magnitude_mask(saved[n], 0.8) for n in masks_from_weights(saved)}
        rewind(params, saved, masks)
        for name, p in params.items():
            expected = saved[name] * masks[name] if name in masks else saved[name]
            self.assertTrue(torch.equal(p.detach(), expected), name)
        self.assertAlmostEqual(density(masks), 0.2, places=2)


class DistillationTest(unittest.TestCase):
    def test_zero_for_identical_student(self):
        logits = torch.randn(2, 5, 258, generator=generator(1)) * 3
        targets = torch.randint(0, 258, (2, 5), generator=generator(2))
        for temperature in (1.0, 2.0, 4.0):
            total, kd, ce = distillation_loss(logits, logits.clone(), targets, temperature, kd_weight=1.0)
            self.assertEqual(float(kd), 0.0)
            self.assertEqual(float(total), 0.0)
            self.assertGreater(float(ce), 0.0)

    def test_mixture_and_positive_for_different_student(self):
        student = torch.randn(3, 4, 10, generator=generator(3))
        teacher = torch.randn(3, 4, 10, generator=generator(4))
        targets = torch.randint(0, 10, (3, 4), generator=generator(5))
        total, kd, ce = distillation_loss(student, teacher, targets, 2.0, kd_weight=0.7)
        self.assertGreater(float(kd), 0.0)
        self.assertAlmostEqual(float(total), 0.7 * float(kd) + 0.3 * float(ce), places=5)
        # T² · KL against the definition
        p = torch.softmax(teacher / 2, -1)
        kl = (p * (torch.log_softmax(teacher / 2, -1) - torch.log_softmax(student / 2, -1))).sum(-1).mean()
        self.assertAlmostEqual(float(kd), 4 * float(kl), places=5)


class BitmaskTest(unittest.TestCase):
    def test_round_trip_and_bit_order(self):
        weight, mask = sparse_matrix(rows=5, cols=13, keep=0.5)
        mask[0, 0] = True
        weight[0, 0] = 0.0  # a kept weight that is exactly zero is still stored
        parts = pack_bitmask(weight, mask)
        self.assertEqual(list(parts["bitmask"].shape), [5, 2])
        self.assertEqual(parts["bitmask"].dtype, torch.uint8)
        # bit (c & 7) of byte (c >> 3), as experts/pruning/bitmask.ts packs it
        for c in range(13):
            self.assertEqual(bool(parts["bitmask"][1, c >> 3] >> (c & 7) & 1), bool(mask[1, c]))
        self.assertEqual(parts["row_offsets"].tolist(), [0] + torch.cumsum(mask.sum(1), 0)[:-1].tolist())
        dense, back = unpack_bitmask(parts["compressed"], parts["bitmask"], parts["shape"])
        self.assertTrue(torch.equal(back, mask))
        self.assertTrue(torch.equal(dense, weight * mask))


def smoke_model() -> SwitchOlmoe:
    cfg = load_config(FINETUNE_SMOKE)
    torch.manual_seed(cfg["seed"])
    return SwitchOlmoe(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_experts=4, max_position_embeddings=64))


def write_pruned_smoke_package() -> dict:
    """A magnitude-pruned (70 %) random smoke model as a sparse-bitmask package, where finetune-smoke.json reads it."""
    cfg = load_config(FINETUNE_SMOKE)
    model = smoke_model()
    params = dict(model.named_parameters())
    masks = {n: magnitude_mask(params[n].detach(), 0.7) for n in masks_from_weights(params)}
    apply_masks(params, masks)
    out = REPO / cfg["package"]
    shutil.rmtree(REPO / cfg["run_dir"], ignore_errors=True)
    from training.export import hf_config
    write_package(model, masks, hf_config(model.cfg), out, "switchyard_pruning",
                  {"method": "magnitude", "sparsity": 0.7, "structure": "unstructured", "experts": []})
    corpus = build_corpus(REPO / "node_modules", Path(cfg["fortunes_dir"]),
                          cfg["source_weights"], cfg["max_bytes_per_source"])
    (out / "validation.json").write_text(json.dumps(validation_record(corpus.val_windows(32, 2), 32)))
    return masks


class FinetuneTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.masks = write_pruned_smoke_package()
        cls.cfg = load_config(FINETUNE_SMOKE)

    def test_package_reads_back_masks(self):
        model, hf, masks = read_package(REPO / self.cfg["package"])
        self.assertEqual(hf["quantization_config"]["sparsity_config"]["format"], "sparse-bitmask")
        self.assertEqual(set(masks), set(self.masks))
        for name, mask in self.masks.items():
            self.assertTrue(torch.equal(masks[name], mask), name)
        self.assertAlmostEqual(density(masks), 0.3, places=3)

    def test_masks_stay_exactly_fixed_through_steps(self):
        model, _, masks = read_package(REPO / self.cfg["package"])
        optimizer = make_optimizer(model, self.cfg)
        params = dict(model.named_parameters())
        before = {n: params[n].detach().clone() for n in masks}
        g = generator(0)
        for _ in range(4):
            ids = torch.randint(0, 258, (2, 16), generator=g)
            train_step(model, optimizer, masks, ids, torch.roll(ids, -1, 1), 1.0)
            for name, mask in masks.items():
                self.assertTrue(bool((params[name].detach()[~mask] == 0).all()), name)
        moved = sum(int((params[n].detach()[m] != before[n][m]).sum()) for n, m in masks.items())
        self.assertGreater(moved, 0, "active expert weights did not train")

    def test_finetune_exports_same_masks_and_resumes(self):
        result = finetune(FINETUNE_SMOKE, fresh=True)
        export = REPO / self.cfg["export_dir"]
        stored = safetensors.load(export / "model.safetensors")
        for name, mask in self.masks.items():
            self.assertNotIn(name, stored)  # kept in sparse-bitmask storage
            _, bits = unpack_bitmask(stored[f"{name}.compressed"], stored[f"{name}.bitmask"], stored[f"{name}.shape"])
            self.assertTrue(torch.equal(bits, mask), name)
        _, hf, masks = read_package(export)
        for name, mask in self.masks.items():
            self.assertTrue(torch.equal(masks[name], mask), name)  # the zeros of the exported weights
        self.assertEqual(hf["switchyard_finetune"]["steps"], self.cfg["steps"])
        self.assertEqual(hf["switchyard_pruning"]["method"], "magnitude")
        # An interrupted run resumed from its checkpoint reaches the same weights.
        run_dir = "training/runs/finetune-smoke-resume"
        shutil.rmtree(REPO / run_dir, ignore_errors=True)
        finetune(FINETUNE_SMOKE, fresh=True, export=False, stop_at=4, run_dir=run_dir)
        resumed = finetune(FINETUNE_SMOKE, export=False, run_dir=run_dir)["model"].state_dict()
        for name, tensor in result["model"].state_dict().items():
            torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)



SPARSE_SMOKE = REPO / "training/configs/sparse-smoke.json"


class SparseTrainingTest(unittest.TestCase):
    def run_method(self, method: str, tmp: Path, **kwargs) -> dict:
        cfg = json.loads(SPARSE_SMOKE.read_text())
        cfg["sparse"]["method"] = method
        cfg["run_dir"] = f"training/runs/sparse-smoke-{method}"
        cfg["export_dir"] = f"training/runs/sparse-smoke-{method}/package"
        path = tmp / f"sparse-smoke-{method}.json"
        path.write_text(json.dumps(cfg))
        return sparse_train(path, **kwargs), cfg, path

    def test_set_and_rigl_keep_density_and_export_their_masks(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("set", "rigl", "static"):
                result, cfg, path = self.run_method(method, Path(tmp), fresh=True)
                settings = sparse_settings(json.loads(path.read_text()), path)
                start = initial_masks(SwitchOlmoe(ModelConfig(**cfg["model"])), settings)
                masks = result["masks"]
                for name, mask in masks.items():
                    self.assertEqual(int(mask.sum()), int(start[name].sum()), f"{method} {name}: density changed")
                updates = result["history"]["updates"]
                if method == "static":
                    self.assertEqual(updates, [])
                    self.assertTrue(all(torch.equal(masks[n], start[n]) for n in masks))
                else:
                    self.assertEqual([u["step"] for u in updates], [3, 6])  # ΔT = 3, T_end = 9 of 12 steps
                    self.assertTrue(all(u["replaced"] > 0 for u in updates), updates)
                    self.assertFalse(all(torch.equal(masks[n], start[n]) for n in masks), "the topology never moved")
                params = dict(result["model"].named_parameters())
                for name, mask in masks.items():
                    self.assertTrue(bool((params[name].detach()[~mask] == 0).all()), name)
                _, hf, exported = read_package(REPO / cfg["export_dir"])
                self.assertEqual(hf["switchyard_sparse_training"]["method"], method)
                for name, mask in masks.items():
                    self.assertTrue(torch.equal(exported[name], mask), name)

    def test_rigl_resumes_with_its_masks(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            full, _, _ = self.run_method("rigl", Path(tmp), fresh=True, export=False)
            self.run_method("rigl", Path(tmp), fresh=True, export=False, stop_at=4)  # after the first update
            resumed, _, _ = self.run_method("rigl", Path(tmp), export=False)
            for name, mask in full["masks"].items():
                self.assertTrue(torch.equal(resumed["masks"][name], mask), name)
            for name, tensor in full["model"].state_dict().items():
                torch.testing.assert_close(resumed["model"].state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)



class LotteryTest(unittest.TestCase):
    def test_imp_rounds_ticket_and_control(self):
        import tempfile
        config = REPO / "training/configs/lottery-smoke.json"
        cfg = json.loads(config.read_text())
        result = lottery(config, fresh=True)
        self.assertEqual([r["expert_density"] for r in result["history"]["rounds"]], [1.0, 0.5, 0.25])
        # every round retrains steps k..T: T + 2 (T - k) steps in all
        self.assertEqual(result["history"]["tokens"], (8 + 2 * 6) * cfg["batch_size"] * cfg["seq_len"])
        params = dict(result["model"].named_parameters())
        for name, mask in result["masks"].items():
            self.assertTrue(bool((params[name].detach()[~mask] == 0).all()), name)
            # the survivors were rewound to θ_k and then trained: they moved away from θ_k
            self.assertFalse(torch.equal(params[name].detach()[mask], result["rewind"][name][mask]), name)
        _, hf, exported = read_package(REPO / cfg["export_dir"])
        self.assertEqual(hf["switchyard_lottery"]["rounds"], 2)
        for name, mask in result["masks"].items():
            self.assertTrue(torch.equal(exported[name], mask), name)
        # The control: the same final mask, a fresh initialisation.
        with tempfile.TemporaryDirectory() as tmp:
            control = json.loads((REPO / "training/configs/sparse-smoke.json").read_text())
            control["sparse"] = {"method": "static", "mask_from": f"{cfg['run_dir']}/final_masks.pt", "init_seed": 99}
            control["run_dir"] = "training/runs/lottery-smoke-control"
            path = Path(tmp) / "control.json"
            path.write_text(json.dumps(control))
            out = sparse_train(path, fresh=True, export=False)
            for name, mask in result["masks"].items():
                self.assertTrue(torch.equal(out["masks"][name], mask), name)



class DistillTest(unittest.TestCase):
    def test_student_with_and_without_teacher(self):
        import tempfile
        from training.export import hf_config
        config = REPO / "training/configs/distill-smoke.json"
        cfg = json.loads(config.read_text())
        torch.manual_seed(1)
        teacher = SwitchOlmoe(ModelConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_experts=2, max_position_embeddings=64))
        with torch.no_grad():
            teacher.lm_head.weight.mul_(100)  # confident, far from the student's near-uniform start
        write_package(teacher, {}, hf_config(teacher.cfg), REPO / cfg["distill"]["teacher"], "note", {})
        with tempfile.TemporaryDirectory() as tmp:
            # kd_weight 0: exactly the student trained without the teacher (the baseline's loop, same tokens)
            without = dict(cfg, distill=dict(cfg["distill"], kd_weight=0.0), run_dir="training/runs/distill-smoke-0")
            path = Path(tmp) / "kd0.json"
            path.write_text(json.dumps(without))
            alone = dict(cfg, sparse={"method": "dense"}, run_dir="training/runs/distill-smoke-alone")
            alone_path = Path(tmp) / "alone.json"
            alone_path.write_text(json.dumps(alone))
            a = distill(path, fresh=True, export=False)["model"].state_dict()
            b = sparse_train(alone_path, fresh=True, export=False)["model"].state_dict()
            for name, tensor in b.items():
                torch.testing.assert_close(a[name], tensor, rtol=0, atol=1e-6, msg=name)
        result = distill(config, fresh=True)
        kd = [row["kd"] for row in result["history"]["train"]]
        self.assertLess(kd[-1], kd[0], f"the student did not move toward the teacher: {kd}")
        _, hf, masks = read_package(REPO / cfg["export_dir"])
        self.assertEqual(hf["switchyard_distillation"]["kd_weight"], 0.5)
        self.assertNotIn("quantization_config", hf)


if __name__ == "__main__":
    unittest.main()
