"""save() / load(): lossless round trips, clear errors on damaged files, atomic writes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sae_circuits as sc
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.graph._io import FORMAT_VERSION, GraphFileError

from .conftest import PROMPT, build

_GRAPH: list[AttributionGraph] = []


def graph() -> AttributionGraph:
    if not _GRAPH:
        model, tcs = build("llama", "skip")
        _GRAPH.append(sc.attribute(model, PROMPT, sc.load_transcoders(tcs)))
    return _GRAPH[0]


def assert_same_graph(a: AttributionGraph, b: AttributionGraph) -> None:
    assert type(a) is type(b)
    assert isinstance(b.adjacency, sp.csr_array)
    assert a.adjacency.shape == b.adjacency.shape and a.adjacency.dtype == b.adjacency.dtype
    assert (a.adjacency != b.adjacency).nnz == 0
    pd.testing.assert_frame_equal(a.nodes, b.nodes, check_exact=True, check_categorical=True)
    pd.testing.assert_frame_equal(a.logits, b.logits, check_exact=True)
    assert list(a.nodes.dtypes) == list(b.nodes.dtypes)
    assert dict(a.metadata) == dict(b.metadata)


@pytest.mark.parametrize("pruned", [False, True])
def test_round_trip_is_lossless(tmp_path, pruned):
    g = graph().prune() if pruned else graph()
    path = g.save(tmp_path / "graph.zip")
    assert path == tmp_path / "graph.zip" and os.listdir(tmp_path) == ["graph.zip"]
    back = AttributionGraph.load(path)
    assert_same_graph(g, back)
    assert back.metadata["tokens"] == g.metadata["tokens"]
    assert back.metadata["transcoders"] == g.metadata["transcoders"]
    assert back.scores() == g.scores()
    # strings paths work too, and the file is a plain ZIP of standard parts
    assert_same_graph(g, AttributionGraph.load(str(path)))
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"adjacency.npz", "nodes.json", "logits.json", "metadata.json"}
        header = json.loads(zf.read("metadata.json"))
        assert (
            header["format_version"] == FORMAT_VERSION
            and header["library_version"] == sc.__version__
        )
        a = sp.load_npz(io.BytesIO(zf.read("adjacency.npz")))
        assert (a != g.adjacency).nnz == 0


def test_round_trip_of_every_supported_dtype(tmp_path):
    g = graph()
    n = g.n_nodes
    rng = np.random.default_rng(0)
    f64 = rng.standard_normal(n)
    f64[:3] = [np.nan, np.inf, -np.inf]
    text = np.array([f"s{i}" if i % 3 else None for i in range(n)], dtype=object)
    nodes = g.nodes.assign(
        flag=rng.random(n) > 0.5,
        small=rng.integers(0, 255, n).astype(np.uint8),
        big=rng.integers(-(2**62), 2**62, n),
        f32=rng.standard_normal(n).astype(np.float32),
        f64=f64,
        nullable_bool=pd.array([True, False, pd.NA] * (n // 3) + [True] * (n % 3), dtype="boolean"),
        obj=pd.Series(text, dtype=object),
        default_str=pd.Series([f"é{i}" for i in range(n)], dtype="str"),
        nan_str=pd.Series([f"x{i}" if i % 2 else None for i in range(n)], dtype="str"),
        ordered=pd.Categorical(
            rng.choice(["lo", "mid", "hi"], n), categories=["lo", "mid", "hi"], ordered=True
        ),
        int_cat=pd.Categorical(rng.choice([3, 1, 2], n)),
        uint=pd.array(rng.integers(0, 9, n), dtype="UInt16"),
    )
    logits = g.logits.set_axis([f"row{i}" for i in range(len(g.logits))])
    exotic = dataclasses.replace(
        g,
        nodes=nodes,
        logits=logits,
        metadata={**g.metadata, "note": "ünïcode", "nested": {"a": [1, 2.5, None, True]}},
    )
    back = AttributionGraph.load(exotic.save(tmp_path / "g.zip"))
    assert_same_graph(exotic, back)
    assert np.isnan(back.nodes["f64"].iloc[0]) and back.nodes["f64"].iloc[1] == np.inf
    assert back.nodes["obj"].dtype == object and back.nodes["obj"].iloc[0] is None
    assert back.nodes["nan_str"].dtype == "str" and back.nodes["ordered"].cat.ordered


def test_metadata_numpy_values_become_json(tmp_path):
    meta = {
        **graph().metadata,
        "n": np.int64(3),
        "x": np.float32(0.5),
        "arr": np.arange(3),
        "t": (1, 2),
    }
    back = AttributionGraph.load(
        dataclasses.replace(graph(), metadata=meta).save(tmp_path / "g.zip")
    )
    assert back.metadata["n"] == 3 and type(back.metadata["n"]) is int
    assert (
        back.metadata["x"] == 0.5
        and back.metadata["arr"] == [0, 1, 2]
        and back.metadata["t"] == [1, 2]
    )


def test_load_gives_the_calling_class(tmp_path):
    class MyGraph(AttributionGraph):
        pass

    path = graph().save(tmp_path / "g.zip")
    assert type(MyGraph.load(path)) is MyGraph


def _rewrite(path: Path, change) -> None:
    """Rewrite the ZIP at ``path`` with ``change(members)`` applied (a valid ZIP again)."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file(tmp_path, keep):
    path = graph().save(tmp_path / "g.zip")
    data = path.read_bytes()
    cut = (
        keep
        if isinstance(keep, int) and keep >= 0
        else (len(data) - 1 if keep == -1 else int(len(data) * keep))
    )
    path.write_bytes(data[:cut])
    with pytest.raises(GraphFileError, match="truncated, corrupted or not a ZIP"):
        AttributionGraph.load(path)


def test_corrupted_bytes(tmp_path):
    path = graph().save(tmp_path / "g.zip")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("adjacency.npz")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 20, start + 20 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GraphFileError, match="corrupted"):
        AttributionGraph.load(path)


def test_member_not_matching_its_checksum(tmp_path):
    path = graph().save(tmp_path / "g.zip")

    def tamper(members):
        table = json.loads(members["nodes.json"])
        table["columns"][1]["values"][0] = 2  # a layer changed behind the header's back
        members["nodes.json"] = json.dumps(table).encode()

    _rewrite(path, tamper)
    with pytest.raises(GraphFileError, match=r"corrupted: nodes\.json does not match its checksum"):
        AttributionGraph.load(path)


def test_future_format_version(tmp_path):
    path = graph().save(tmp_path / "g.zip")

    def bump(members):
        header = json.loads(members["metadata.json"])
        header["format_version"] = FORMAT_VERSION + 1
        members["metadata.json"] = json.dumps(header).encode()

    _rewrite(path, bump)
    with pytest.raises(
        GraphFileError, match=rf"format version {FORMAT_VERSION + 1}.*upgrade sae_circuits"
    ):
        AttributionGraph.load(path)


def test_foreign_and_incomplete_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(GraphFileError, match="not a ZIP"):
        AttributionGraph.load(text)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.md", "hi")
    with pytest.raises(GraphFileError, match="not a sae_circuits graph file"):
        AttributionGraph.load(other)
    path = graph().save(tmp_path / "g.zip")
    _rewrite(path, lambda m: m.pop("logits.json"))
    with pytest.raises(GraphFileError, match=r"incomplete: it lacks logits\.json"):
        AttributionGraph.load(path)
    with pytest.raises(FileNotFoundError, match="no graph file"):
        AttributionGraph.load(tmp_path / "missing.zip")
    with pytest.raises(IsADirectoryError):
        AttributionGraph.load(tmp_path)
    assert issubclass(GraphFileError, ValueError)


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    g = graph()
    path = g.save(tmp_path / "g.zip")
    old = path.read_bytes()
    calls = []
    real = zipfile.ZipFile.writestr

    def fail_midway(self, name, data, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        g.prune().save(path)
    assert calls and os.listdir(tmp_path) == ["g.zip"] and path.read_bytes() == old
    monkeypatch.undo()

    def no_rename(*_args):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        g.prune().save(tmp_path / "new.zip")
    assert os.listdir(tmp_path) == ["g.zip"] and path.read_bytes() == old


def test_unstorable_content_is_refused_before_writing(tmp_path):
    g = graph()
    with pytest.raises(TypeError, match=r"graph\.metadata\['extra'\]\['s'\] is a set"):
        dataclasses.replace(g, metadata={**g.metadata, "extra": {"s": {1, 2}}}).save(
            tmp_path / "a.zip"
        )
    with pytest.raises(TypeError, match="keys must be strings"):
        dataclasses.replace(g, metadata={1: "x"}).save(tmp_path / "a.zip")
    dated = g.nodes.assign(when=pd.Timestamp("2025-01-01"))
    with pytest.raises(TypeError, match=r"column 'when' has dtype datetime64.*supported"):
        dataclasses.replace(g, nodes=dated).save(tmp_path / "a.zip")
    mixed = g.nodes.assign(obj=[object()] * g.n_nodes)
    with pytest.raises(TypeError, match="object column holding a object"):
        dataclasses.replace(g, nodes=mixed).save(tmp_path / "a.zip")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        g.save(tmp_path / "no" / "such" / "g.zip")
    with pytest.raises(IsADirectoryError):
        g.save(tmp_path)
