"""The ``mixture`` datamodule: SynthFaces written in CelebA's and FER+'s layouts plus a SynthFaces
member, trained as one task with partial labels (union task, ``-1`` where a member lacks a target,
weighted sampling per (seed, epoch), DDP shards, clashes, per-dataset metrics end to end)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from facebench.datamodules.base import create_datamodule
from facebench.core.tasks import MISSING
from facebench.datamodules.mixture import MixtureConfigError, MixtureSampler, allocate

SYNTH_MEMBER = {"datamodule": "synthfaces", "args": {"n_identities": 12, "images_per_identity": 4, "render_size": 32,
                                                     "attributes": ["Young"]}}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    from facebench.datamodules.synthfaces import WRITERS, SynthFacesConfig, generate

    data = generate(SynthFacesConfig(n_identities=24, images_per_identity=5, image_size=32, seed=3, workers=1))
    base = tmp_path_factory.mktemp("mixture")
    return {"celeba": WRITERS["celeba"](data, base / "celeba"), "ferplus": WRITERS["ferplus"](data, base / "ferplus")}


def members(roots: dict[str, Path], rename: bool = True, only: tuple[str, ...] = ("celeba", "fer", "synth")) -> dict:
    spec = {"celeba": {"datamodule": "celeba", "args": {"root": str(roots["celeba"]), "attributes": ["Male", "Smiling", "Young"]}},
            "fer": {"datamodule": "ferplus", "args": {"root": str(roots["ferplus"]), "label_mode": "majority"}},
            "synth": {**SYNTH_MEMBER, **({"rename": {"Young": "synth_Young"}} if rename else {})}}
    return {k: v for k, v in spec.items() if k in only}


def mixture(roots: dict[str, Path], **kw):
    kw.setdefault("members", members(roots))
    dm = create_datamodule("mixture", batch_size=16, num_workers=0, image_size=32, **kw)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm(roots):
    return mixture(roots)


def member_rows(dm, split: str, name: str) -> np.ndarray:
    return np.flatnonzero(dm.tables[split].extra["member"] == name)


# ------------------------------------------------------------------------------------------------
# task and labels
# ------------------------------------------------------------------------------------------------
def test_union_task_in_member_order_with_missing_labels_elsewhere(dm):
    assert dm.task.names == ("Male", "Smiling", "Young", "emotion", "synth_Young")
    assert dm.task.target("emotion") == dm.members["fer"].task.target("emotion")     # classes, vote columns
    own = {"celeba": [0, 1, 2], "fer": [3], "synth": [4]}
    for split, tab in dm.tables.items():
        for name, cols in own.items():
            rows, member = member_rows(dm, split, name), dm.members[name].tables[split]
            assert len(rows) == len(member) > 0
            np.testing.assert_array_equal(tab.labels[np.ix_(rows, cols)], member.labels)
            others = [c for c in range(dm.task.n_label_slots) if c not in cols]
            assert (tab.labels[np.ix_(rows, others)] == MISSING).all()
            # ids trace back: <member>:<path in the member's table>, and the row it came from
            local = tab.extra["member_index"][rows]
            assert [tab.paths[r] for r in rows] == [f"{name}:{member.paths[i]}" for i in local]
    ids = dm.tables["train"].identities
    celeba, synth = (set(ids[member_rows(dm, "train", n)].tolist()) for n in ("celeba", "synth"))
    assert not celeba & synth and (ids[member_rows(dm, "train", "fer")] == -1).all()   # members never share one


def test_batches_have_one_input_and_votes_stay_with_their_target(dm):
    ds = dm.dataset("train")
    rows = {n: int(member_rows(dm, "train", n)[0]) for n in ("celeba", "fer", "synth")}
    for name, row in rows.items():
        s = ds[row]
        assert s["image"].shape == (3, 32, 32) and int(s["member"]) == dm.member_names.index(name)
        assert int(s["index"]) == row
        torch.testing.assert_close(s["label"], torch.as_tensor(dm.tables["train"].labels[row]))
        assert set(s["votes"]) == {"emotion", "synth_Young"} and set(s["soft_label"]) == {"emotion"}
    fer = ds[rows["fer"]]
    assert torch.equal(fer["image"][0], fer["image"][1]) and torch.equal(fer["image"][0], fer["image"][2])  # grey -> RGB
    local = int(dm.tables["train"].extra["member_index"][rows["fer"]])
    assert torch.equal(fer["votes"]["emotion"], torch.as_tensor(dm.members["fer"].tables["train"].votes["emotion"][local]))
    assert fer["votes"]["synth_Young"].sum() == 0 and ds[rows["celeba"]]["votes"]["emotion"].sum() == 0
    assert ds[rows["celeba"]]["soft_label"]["emotion"].sum() == 0 and ds[rows["synth"]]["votes"]["synth_Young"].sum() > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["votes"]["emotion"].shape == (16, 10)
    assert "box" not in batch and "landmarks" not in batch      # FER+ has no landmarks, CelebA no boxes


def test_losses_and_metrics_of_the_mixture_are_each_members_own(dm):
    from facebench.lightning_modules.losses import target_losses
    from facebench.lightning_modules.metrics import evaluate

    tab, task = dm.tables["test"], dm.task
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(tab), task.n_logits, generator=g)
    labels = torch.as_tensor(tab.labels)
    losses = target_losses(task, logits, labels)
    fer, celeba = member_rows(dm, "test", "fer"), member_rows(dm, "test", "celeba")
    em = task.logit_slices[task.names.index("emotion")]
    torch.testing.assert_close(losses[3], F.cross_entropy(logits[fer, em], labels[fer, 3]))
    torch.testing.assert_close(losses[0], F.binary_cross_entropy_with_logits(logits[celeba, 0], labels[celeba, 0].float()))
    probs = task.probabilities(logits).numpy()
    whole = evaluate(task, probs, tab.labels).set_index(["target", "class", "metric"])["value"]
    ftask = dm.members["fer"].task
    alone = evaluate(ftask, probs[fer][:, em], tab.labels[fer][:, [3]]).set_index(["target", "class", "metric"])["value"]
    pd.testing.assert_series_equal(whole.loc[["emotion"]], alone, check_names=False)


def test_shared_target_is_one_target_and_a_clash_names_both_members(roots):
    dm = mixture(roots, members=members(roots, rename=False))
    assert dm.task.names == ("Male", "Smiling", "Young", "emotion") and dm.report["mixture"]["shared_targets"] == ["Young"]
    young = dm.tables["train"].labels[:, 2]
    for name in ("celeba", "synth"):
        assert (young[member_rows(dm, "train", name)] >= 0).all()
    assert (young[member_rows(dm, "train", "fer")] == MISSING).all()
    assert dm.task.target("Young").has_votes                                            # SynthFaces' raters
    clash = members(roots)
    clash["fer"]["rename"] = {"emotion": "Male"}
    with pytest.raises(MixtureConfigError, match=r"target 'Male' of member 'celeba' and target 'Male' of member 'fer'"):
        mixture(roots, members=clash)


def test_configuration_errors_are_clear(roots):
    with pytest.raises(MixtureConfigError, match="sampling weights must give every member"):
        mixture(roots, sampling={"celeba": 1.0})
    bad = members(roots)
    bad["fer"]["args"]["image_size"] = 48
    with pytest.raises(MixtureConfigError, match=r"members.fer.args sets \['image_size'\]"):
        mixture(roots, members=bad)
    bad = members(roots)
    bad["synth"]["rename"] = {"Old": "x"}
    with pytest.raises(MixtureConfigError, match="rename names"):
        mixture(roots, members=bad)
    with pytest.raises(ValueError, match="unknown option"):
        mixture(roots, members={"c": {"datamodule": "celeba", "args": {"root": str(roots["celeba"]), "colour": 1}}})


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def test_balanced_sampling_proportions_and_determinism(dm, roots):
    loader = dm.train_dataloader()
    sampler, n = loader.sampler, len(dm.tables["train"])
    assert isinstance(sampler, MixtureSampler) and len(sampler) == n
    member = dm.tables["train"].extra["member"]
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert all(epoch * n <= k < (epoch + 1) * n for k in keys)                       # epoch-encoded keys
        counts = Counter(member[np.asarray(keys) % n])
        for name in dm.member_names:
            assert abs(counts[name] - n / 3) <= 1, counts                               # balanced: a third each
    sampler.set_epoch(3)
    again = MixtureSampler([len(p) for p in loader.dataset.parts], dm.sampling_weights(), n, seed=dm.augment_seed)
    again.set_epoch(3)
    assert list(again) == list(sampler)                                                 # (seed, epoch) -> order
    again.set_epoch(4)
    assert list(again) != list(sampler)
    other = MixtureSampler(again.sizes, again.weights, n, seed=dm.augment_seed + 1)
    other.set_epoch(3)
    assert list(other) != list(sampler)
    proportional = mixture(roots, sampling="proportional", epoch_size=200)
    sizes = proportional.train_sizes()
    assert list(proportional.train_dataloader().sampler.counts) == list(allocate(200, sizes))


def test_member_streams_cover_every_image_before_repeating():
    sampler = MixtureSampler([10, 25, 7], [0.2, 0.5, 0.3], 40, seed=5, encode_epoch=False)
    assert list(sampler.counts) == [8, 20, 12]
    seen = {m: [] for m in range(3)}
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for m in range(3):
            seen[m] += sampler.member_draws(m).tolist()
    for m, n in enumerate(sampler.sizes):
        draws = seen[m]
        for start in range(0, len(draws) - n + 1, n):            # each full cycle is a permutation
            assert sorted(draws[start:start + n]) == list(range(n))


def test_ddp_ranks_get_disjoint_shards(monkeypatch):
    import facebench.datamodules.epoch_sampler as epoch_sampler

    sampler = MixtureSampler([60, 40, 30], [1, 1, 1], 90, seed=2, encode_epoch=False)
    sampler.set_epoch(0)       # 30 draws per member: no member's stream wraps within this epoch
    full = sampler.order()
    assert len(set(full)) == 90
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(epoch_sampler, "_rank_world", lambda rank=rank: (rank, 2))
        assert len(sampler) == 45
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 45
    assert not set(shards[0]) & set(shards[1])                 # no image drawn twice in this epoch: disjoint items
    assert shards[0] == full[0::2] and shards[1] == full[1::2]   # every position of the order on exactly one rank


# ------------------------------------------------------------------------------------------------
# inspect and end to end
# ------------------------------------------------------------------------------------------------
def test_describe_and_facebench_inspect_list_members(dm, roots, capsys):
    from facebench.benchmarks.cli import main

    info = dm.describe()
    assert info["split"]["fer"] == {s: len(t) for s, t in dm.members["fer"].tables.items()}
    assert set(info["members"]) == {"celeba", "fer", "synth"} and info["splits"]["test"]["samples"] == len(dm.tables["test"])
    assert dm.data_checks()["skipped_files"] == 0
    spec = yaml.safe_dump(members(roots), default_flow_style=True, width=10_000).strip()
    assert main(["inspect", "--dataset", "mixture", "--set", f"members={spec}", "num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert "dataset mixture" in out and "synth_Young" in out and "'celeba': {'train'" in out


@pytest.mark.slow
def test_mcnn_and_timm_on_the_mixture_and_on_one_member_end_to_end(roots, tmp_path):
    from facebench.benchmarks.runner import run_suite

    common = {"batch_size": 16, "num_workers": 0}
    suite = {"name": "mix", "results_dir": str(tmp_path / "results"), "seeds": [0],
             "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1},
             "datasets": {"faces": {"datamodule": "mixture", "args": {**common, "members": members(roots)}},
                          "fer_alone": {"datamodule": "mixture", "args": {**common, "members": members(roots, only=("fer",))}}},
             "methods": {"mcnn": {"method": "mcnn", "args": {"input_size": 32, "unlisted_group": "Other"}},
                         "timm": {"method": "timm", "args": {"backbone": "test_resnet", "input_size": 32}}}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    outcomes = run_suite(str(path), in_process=True, report=False)
    assert [o.state for o in outcomes] == ["done"] * 4, [o.message for o in outcomes]
    runs = tmp_path / "results" / "runs"
    for method in ("mcnn", "timm"):
        m = pd.read_csv(runs / f"{method}--faces--s0" / "metrics.csv")
        m["class"] = m["class"].fillna("")
        test = m[(m["split"] == "test") & (m["metric"] == "accuracy") & (m["class"] == "")]
        assert set(test["target"]) == {"Male", "Smiling", "Young", "emotion", "synth_Young"}   # every member's targets
        assert test["value"].between(0, 1).all()
        with np.load(runs / f"{method}--faces--s0" / "predictions_test.npz") as z, \
                np.load(runs / f"{method}--fer_alone--s0" / "predictions_test.npz") as alone:
            fer_ids = [i for i in z["ids"] if i.startswith("fer:")]
            assert fer_ids == list(alone["ids"])                                     # the same FER+ test images
            assert {i.split(":", 1)[0] for i in z["ids"]} == {"celeba", "fer", "synth"}
