"""A missing modality removes every expert that reads it; modality dropout trains for that, per row.

The tests that train real runs (about a minute together on 2 busy CPUs) are marked slow.

On a model trained on real (built-in) data: I2M2 with modality m missing gives exactly the product of
the remaining unimodal experts, never reads m's input, and the missing-modality table (built from real
final runs and a ledger) reports that model beside the unimodal model of the remaining modality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from i2m2_ray.data.format import load_manifest
from i2m2_ray.data.memory import InMemoryData
from i2m2_ray.errors import ConfigError
from i2m2_ray.models import build_model, modality_dropout_keep
from i2m2_ray.train import load_train_config, train
from i2m2_ray.train.epoch import nll, predict, train_epoch
from i2m2_ray.train.metrics import classification_metrics
from i2m2_ray.tune.analysis import expert_ablation_table, missing_modality_table
from i2m2_ray.tune.state import FINAL, FINAL_STAGE2
from tests.models.helpers import feature_manifest, random_inputs, random_labels

CPU = torch.device("cpu")
STAGE1 = {"image": "unimodal:image", "audio": "unimodal:audio", "inter": "inter:lf"}


def _train(run_dir: Path, dataset: Path, variant: str, *extra: str, init: dict[str, str] | None = None) -> dict:
    cfg = load_train_config(None, [f"run_dir={run_dir}", f"dataset.path={dataset}", f"variant={variant}",
                                   "tensorboard=false", "epochs=1", "patience=null", "optim.lr=0.02",
                                   "optim.momentum=0.9", "keep_checkpoints=1", *extra],
                            extra={"init": init or {}})
    return train(cfg, console=False)


def _load(run_dir: Path, dataset: Path, variant: str) -> torch.nn.Module:
    model = build_model(load_manifest(dataset), variant)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_dataset(dataset_factory) -> Path:
    return dataset_factory(train_size=80, val_size=40, test_size=60)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """Real final runs on the built-in data: the stage-1 models, then I2M2 LF initialised from them,
    recorded in a ledger as the experiment's final phases record them."""
    root = tmp_path_factory.mktemp("missing")
    finals = {}
    for variant in STAGE1.values():
        finals[variant] = _train(root / variant.replace(":", "-"), tiny_dataset, variant)
    init = {e: str(root / v.replace(":", "-") / "model.pt") for e, v in STAGE1.items()}
    finals["i2m2:lf"] = _train(root / "i2m2-lf", tiny_dataset, "i2m2:lf", init=init)
    runs = {v: {"variant": v, "seed": 0, "trial_dir": str(root / v.replace(":", "-")), "final": f, "error": None}
            for v, f in finals.items()}
    exp = root / "exp"
    exp.mkdir()
    ledger = {"phases": {FINAL: {"runs": [runs[v] for v in STAGE1.values()], "wall_s": 1.0},
                         FINAL_STAGE2: {"runs": [runs["i2m2:lf"]], "wall_s": 1.0}}}
    (exp / "state.json").write_text(json.dumps(ledger))
    return root, exp, finals


def _test_batches(dataset: Path):
    manifest = load_manifest(dataset)
    return list(InMemoryData(dataset, manifest, list(manifest.modalities)).eval_batches("test", 50))


@pytest.mark.slow
def test_i2m2_without_a_modality_is_the_product_of_the_remaining_experts(trained, tiny_dataset):
    root, _, _ = trained
    model = _load(root / "i2m2-lf", tiny_dataset, "i2m2:lf")
    batches = _test_batches(tiny_dataset)
    full, _, _ = predict(model, batches, CPU)
    for absent, remaining in (("image", "audio"), ("audio", "image")):
        got, experts, _ = predict(model, batches, CPU, missing=frozenset({absent}))
        assert set(experts) == {remaining}  # the inter expert reads the absent modality: dropped too
        with torch.no_grad():
            expected = torch.cat([F.log_softmax(model.experts[remaining](x), dim=-1) for x, _ in batches]).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert not np.allclose(got, full, atol=1e-3)
        ablated, ablated_experts, _ = predict(model, batches, CPU, leave_out=frozenset({absent}))
        assert set(ablated_experts) == {remaining, "inter"} and not np.allclose(ablated, got, atol=1e-3)
        # the absent modality's input is never read: the model runs without it; the ablation cannot
        x = {m: v for m, v in batches[0][0].items() if m != absent}
        with torch.no_grad():
            torch.testing.assert_close(model(x, missing=frozenset({absent})).log_probs,
                                       torch.from_numpy(expected[:len(batches[0][1])]), rtol=0, atol=1e-6)
            with pytest.raises(KeyError, match=absent):
                model(x, leave_out=frozenset({absent}))


def test_with_three_modalities_one_missing_leaves_the_product_of_the_other_two():
    manifest = feature_manifest(3)
    torch.manual_seed(0)
    model = build_model(manifest, "i2m2:lrtf").eval()
    x = random_inputs(manifest, 5)
    with torch.no_grad():
        out = model({m: v for m, v in x.items() if m != "m1"}, missing=frozenset({"m1"}))
        expected = F.log_softmax(model.experts["m0"](x) + model.experts["m2"](x), dim=-1)
    assert set(out.expert_logits) == {"m0", "m2"}
    assert torch.equal(out.log_probs, expected)
    assert model.droppable() == ("m0", "m1", "m2")
    assert build_model(manifest, "inter:lf").droppable() == ()  # nothing would remain


@pytest.mark.slow
def test_missing_modality_table_reads_the_final_runs(trained, tiny_dataset):
    root, exp, finals = trained
    model = _load(root / "i2m2-lf", tiny_dataset, "i2m2:lf")
    batches = _test_batches(tiny_dataset)
    labels = torch.cat([y for _, y in batches]).numpy()
    table = missing_modality_table(exp, "accuracy")
    assert table["missing"].to_list() == ["(none)", "image", "audio"]
    rows = {r["missing"]: r for r in table.iter_rows(named=True)}
    assert rows["(none)"]["accuracy_mean"] == pytest.approx(finals["i2m2:lf"]["test/accuracy"], abs=1e-12)
    assert rows["(none)"]["experts"] == "image + audio + inter" and rows["(none)"]["unimodal"] is None
    for absent, remaining in (("image", "audio"), ("audio", "image")):
        with torch.no_grad():
            lp = torch.cat([F.log_softmax(model.experts[remaining](x), dim=-1) for x, _ in batches]).numpy()
        row = rows[absent]
        assert row["experts"] == remaining and row["modality_dropout"] == 0.0 and row["seeds"] == 1
        assert row["accuracy_mean"] == pytest.approx(classification_metrics(lp, labels)["accuracy"], abs=1e-12)
        assert row["unimodal"] == f"unimodal:{remaining}"
        assert row["unimodal_accuracy_mean"] == pytest.approx(finals[f"unimodal:{remaining}"]["test/accuracy"])
    ablation = expert_ablation_table(exp, "accuracy")
    assert ablation["left_out"].to_list() == ["(none)", "image", "audio", "inter"]
    assert ablation["accuracy_mean"][0] == pytest.approx(finals["i2m2:lf"]["test/accuracy"], abs=1e-12)


def test_dropout_masks_remove_a_modality_per_row():
    manifest = feature_manifest(3)
    torch.manual_seed(0)
    model = build_model(manifest, "i2m2:lf").eval()
    keep = modality_dropout_keep(model, 4000, 0.5, torch.Generator().manual_seed(3))
    again = modality_dropout_keep(model, 4000, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(keep[e], again[e]) for e in keep)
    dropped = ~keep["inter"]  # the inter expert reads every modality: out whenever a row loses one
    assert abs(dropped.float().mean().item() - 0.5) < 0.03
    lost = torch.stack([~keep[m] for m in ("m0", "m1", "m2")], dim=1)
    assert torch.equal(lost.sum(dim=1), dropped.long())  # exactly one modality per dropped row
    assert all(abs(lost[:, i].float().mean().item() - 0.5 / 3) < 0.03 for i in range(3))
    small = {e: k[:6] for e, k in keep.items()}
    x = random_inputs(manifest, 6)
    with torch.no_grad():
        out = model(x, keep=small)
        for row in range(6):
            present = [e for e in model.experts if small[e][row]]
            expected = F.log_softmax(sum(out.expert_logits[e][row] for e in present), dim=-1)
            torch.testing.assert_close(out.log_probs[row], expected, rtol=0, atol=1e-6)
    assert modality_dropout_keep(build_model(manifest, "inter:lf"), 4, 0.5, torch.Generator()) is None


def _epoch(variant: str, p: float, seed: int = 0, reference: bool = False) -> dict[str, torch.Tensor]:
    manifest = feature_manifest(2)
    torch.manual_seed(0)
    model = build_model(manifest, variant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(random_inputs(manifest, 8, seed=i), random_labels(manifest, 8, seed=i)) for i in range(5)]
    if reference:  # the training step as it was before modality dropout existed
        model.train()
        for x, y in batches:
            loss = nll(model(x).log_probs, y, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 8.0)
            opt.step()
    else:
        gen = torch.Generator().manual_seed(seed)
        train_epoch(model, opt, batches, None, 8.0, CPU, p, gen)
        if p == 0:
            assert torch.equal(gen.get_state(), torch.Generator().manual_seed(seed).get_state())  # no draws
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_zero_is_the_old_step_and_dropout_is_seeded():
    old = _epoch("i2m2:lf", 0.0, reference=True)
    assert _same(_epoch("i2m2:lf", 0.0), old)
    dropped = _epoch("i2m2:lf", 0.5)
    assert _same(_epoch("i2m2:lf", 0.5), dropped) and not _same(dropped, old)
    assert not _same(_epoch("i2m2:lf", 0.5, seed=1), dropped)
    assert _same(_epoch("inter:lf", 0.5), _epoch("inter:lf", 0.0))  # nothing to drop: unchanged


@pytest.mark.slow
def test_modality_dropout_run_is_a_function_of_its_seed(tmp_path, tiny_dataset):
    """Whole runs: the same seed gives bit-identical weights, and p changes them (p = 0 is the default)."""
    def weights(name: str, *extra: str) -> dict[str, torch.Tensor]:
        _train(tmp_path / name, tiny_dataset, "intra", "seed=3", *extra)
        return torch.load(tmp_path / name / "model.pt", weights_only=True)

    a, b = weights("a", "modality_dropout=0.4"), weights("b", "modality_dropout=0.4")
    assert _same(a, b)
    assert not _same(a, weights("off"))
    with pytest.raises(ConfigError, match=r"^modality_dropout: must be in \[0, 1\), got 1.0$"):
        load_train_config(None, ["modality_dropout=1.0"])
