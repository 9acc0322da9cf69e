"""The model registry's pure parts: the name rule, `NAME:vN` / `NAME@alias`, choosing part of a tree without
copying, which jobs may be registered, final metrics and the lineage a version records."""

from __future__ import annotations

import pytest

from incl.artifacts import manifest as mf
from incl.artifacts.errors import NotFound as StoreNotFound
from incl.artifacts.select import select
from incl.controller.lineage import final_metrics, lineage, outputs_of
from incl.controller.models import aliases_in, names_in, version_key, versions_in
from incl.proto.errors import BadRequest, Conflict, NotFound
from incl.proto.messages import Attempt, Job, JobState, MetricBatch, MetricPoint, Node, TreeRef, TrialRef
from incl.proto.registry import MAX_METRICS, ModelRef, check_name, parse_ref
from incl.proto.spec import load_spec

S = JobState
OUT = TreeRef(digest="b" * 64, files=2, bytes=10)


@pytest.mark.parametrize("name", ["resnet", "ResNet-50", "bert_base.v2", "7b", "a.b.c", "x" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", ".dot", "_under", "a..b", "trailing.", "has space", "a/b", "a:b",
                                  "a@b", "ünï", "x" * 65, "a*"])
def test_invalid_names_are_refused_saying_the_rule(name: str) -> None:
    with pytest.raises(BadRequest, match="letters, digits"):
        check_name(name)


def test_refs_parse_latest_version_and_alias() -> None:
    assert parse_ref("resnet") == ModelRef("resnet")
    assert parse_ref("resnet:v12") == ModelRef("resnet", version=12)
    assert parse_ref("res.net@production") == ModelRef("res.net", alias="production")
    assert str(parse_ref("m:v3")) == "m:v3" and str(parse_ref("m@prod")) == "m@prod"


@pytest.mark.parametrize("text", ["m:3", "m:v0", "m:v", "m:v1x", "m:v1@prod", "m@", "m@bad alias", "bad name:v1",
                                  ":v1", "@prod"])
def test_bad_refs_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref(text)


def test_keys_of_one_model_never_match_another_whose_name_it_starts() -> None:
    keys = [version_key("m", 1), version_key("m", 10), version_key("m", 2), version_key("m.x", 1), "m/a/prod",
            "m.x/a/prod", version_key("mm", 5)]
    assert versions_in(keys, "m") == [1, 2, 10]
    assert versions_in(keys, "m.x") == [1]
    assert aliases_in(keys, "m") == ["prod"]
    assert names_in(keys) == ["m", "m.x", "mm"]


def tree() -> mf.Manifest:
    return mf.build([
        mf.Entry(path="model.pt", kind="file", size=5, digest="1" * 64),
        mf.Entry(path="ckpt", kind="dir", mode=0o755),
        mf.Entry(path="ckpt/a.bin", kind="file", size=3, digest="2" * 64, pack=1, offset=7),
        mf.Entry(path="ckpt/sub", kind="dir", mode=0o700),
        mf.Entry(path="ckpt/sub/b.bin", kind="file", size=2, digest="3" * 64),
        mf.Entry(path="ckpt2.txt", kind="file", size=1, digest="4" * 64, pack=0),
    ], packs=["p0" * 32, "p1" * 32])


def test_select_a_file_keeps_its_blob_and_nothing_else() -> None:
    chosen = select(tree(), ["model.pt"])
    assert [(e.path, e.digest) for e in chosen.entries] == [("model.pt", "1" * 64)]
    assert chosen.pack_ids == [] and chosen.version == 1


def test_select_a_folder_takes_what_it_holds_and_only_the_packs_used() -> None:
    """`ckpt` (not the file `ckpt2.txt` that merely starts with it); the packed file keeps its offset and now names
    pack 0 of a list holding only its pack."""
    for path in ("ckpt", "ckpt/", "/ckpt/"):
        chosen = select(tree(), [path])
        assert [e.path for e in chosen.entries] == ["ckpt", "ckpt/a.bin", "ckpt/sub", "ckpt/sub/b.bin"]
        assert chosen.pack_ids == ["p1" * 32]
        packed = next(e for e in chosen.entries if e.path == "ckpt/a.bin")
        assert (packed.pack, packed.offset, packed.digest) == (0, 7, "2" * 64)
        mf.check(chosen)


def test_select_a_nested_file_brings_the_folders_above_it() -> None:
    chosen = select(tree(), ["ckpt/sub/b.bin", "model.pt"])
    assert [e.path for e in chosen.entries] == ["ckpt", "ckpt/sub", "ckpt/sub/b.bin", "model.pt"]
    assert next(e for e in chosen.entries if e.path == "ckpt/sub").mode == 0o700


@pytest.mark.parametrize("path", ["missing.pt", "ckp", "model.pt/x", "..", "../etc/passwd", "", "/"])
def test_select_refuses_a_path_not_in_the_tree(path: str) -> None:
    with pytest.raises(StoreNotFound):
        select(tree(), [path])


def job(state: JobState = S.SUCCEEDED, attempts: list[Attempt] | None = None, **kw: object) -> Job:
    return Job(id="j-1", spec=load_spec({"run": "true", "name": "train", "image": "img:1", "env": {"LR": "0.1"}}),
               user="ann", state=state, submitted_at=0, updated_at=0,
               attempts=attempts if attempts is not None else [attempt(1, OUT)], **kw)  # type: ignore[arg-type]


def attempt(number: int, outputs: TreeRef | None, nodes: list[Node] | None = None) -> Attempt:
    return Attempt(number=number, agent_id="a1", state=S.SUCCEEDED, assigned_at=0, outputs=outputs,
                   nodes=nodes or [])


def test_outputs_come_from_the_last_attempt_that_left_any() -> None:
    other = TreeRef(digest="c" * 64)
    att, out = outputs_of(job(attempts=[attempt(1, other), attempt(2, OUT), attempt(3, None)]))
    assert (att.number, out) == (2, OUT)
    ranked = attempt(1, None, [Node(rank=1, agent_id="a2", state=S.SUCCEEDED, outputs=other),
                               Node(rank=0, agent_id="a1", state=S.SUCCEEDED, outputs=OUT)])
    assert outputs_of(job(attempts=[ranked]))[1] == OUT


@pytest.mark.parametrize("state", [S.QUEUED, S.ASSIGNED, S.STARTING, S.RUNNING, S.PREEMPTED, S.LOST])
def test_a_job_not_over_cannot_be_registered(state: JobState) -> None:
    with pytest.raises(Conflict, match="has not finished"):
        outputs_of(job(state))


@pytest.mark.parametrize("state", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_a_job_over_without_outputs_cannot_be_registered_and_one_with_them_can(state: JobState) -> None:
    with pytest.raises(NotFound, match="left no outputs"):
        outputs_of(job(state, attempts=[attempt(1, None)]))
    assert outputs_of(job(state))[1] == OUT


def batch(seq: int, *points: tuple[int, dict[str, float]], rank: int = 0) -> MetricBatch:
    return MetricBatch(job_id="j-1", attempt=1, seq=seq, rank=rank,
                       points=[MetricPoint(ts=float(s), step=s, values=v) for s, v in points])


def test_final_metrics_are_each_metrics_last_value_folded_batch_by_batch() -> None:
    batches = [batch(1, (1, {"loss": 0.9, "acc": 0.1}), (2, {"loss": 0.5})),
               batch(2, (3, {"acc": 0.8}), (3, {"lr": 1e-3})),
               batch(3, (4, {"loss": 99.0}), rank=1)]  # another rank's copy is not the job's value
    whole = final_metrics(batches)
    assert whole == {"loss": 0.5, "acc": 0.8, "lr": 1e-3}
    so_far: dict[str, float] = {}
    for b in batches:
        so_far = final_metrics([b], so_far)
    assert so_far == whole


def test_final_metrics_keep_at_most_max_names_and_still_update_them() -> None:
    many = batch(1, (1, {f"m{i}": float(i) for i in range(MAX_METRICS + 50)}))
    got = final_metrics([many, batch(2, (2, {"m0": -1.0, "new": 1.0}))])
    assert len(got) == MAX_METRICS and got["m0"] == -1.0 and "new" not in got


def test_lineage_records_the_job_its_code_image_params_and_metrics() -> None:
    code = TreeRef(digest="d" * 64, files=3, bytes=30)
    trial = TrialRef(study_id="s-1", number=4, params={"lr": 0.01, "opt": "adam"})
    j = job(S.FAILED, code=code, trial=trial)
    got = lineage(j, j.attempts[0], {"loss": 0.2})
    assert (got.job_id, got.job_name, got.job_state, got.attempt, got.user) == ("j-1", "train", S.FAILED, 1, "ann")
    assert (got.code, got.image, got.env) == (code, "img:1", {"LR": "0.1"})
    assert (got.params, got.study_id, got.metrics) == ({"lr": 0.01, "opt": "adam"}, "s-1", {"loss": 0.2})
