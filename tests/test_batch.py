"""attribute_many in this process: the graph store, resuming, failures, tables, the CLI.

Tiny random models (factories, as a Ray worker would get them); the Ray cluster and the
process-killing fault tests are in tests/test_batch_cluster.py (marker ``cluster``).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.batch import (
    GraphStore,
    StoreMismatchError,
    compare_groups,
    feature_occurrences,
    feature_table,
    plot_features,
    prompt_key,
    prompt_top_features,
)
from sae_circuits.toy import tiny_model, tiny_transcoders
from tests.tolerance import assert_close

MODEL = functools.partial(tiny_model, "llama", seed=0, n_layers=2, d_model=32, d_vocab=64)
TRANSCODERS = functools.partial(tiny_transcoders, kind="skip", d_sae=64)
PROMPTS = [[0, *[(i * 7 + j * 3) % 60 + 1 for j in range(5)]] for i in range(6)]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "store"
    result = sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, out)
    return out, result


def test_graphs_are_those_of_attribute(store_dir):
    out, result = store_dir
    assert (result.n_done, result.n_skipped, result.n_failed) == (len(PROMPTS), 0, 0)
    table = result.table
    assert list(table["key"]) == [prompt_key(p) for p in PROMPTS]
    assert set(table["status"]) == {"ok"}
    model = MODEL()
    transcoders = sc.load_transcoders(TRANSCODERS(model))
    store = GraphStore(out)
    for prompt in PROMPTS[:2]:
        key = prompt_key(prompt)
        expected = sc.attribute(model, prompt, transcoders, progress=False)
        got = store.load(key)
        assert got.nodes[["kind", "layer", "position", "feature"]].equals(
            expected.nodes[["kind", "layer", "position", "feature"]]
        )
        assert_close(got.adjacency.toarray(), expected.adjacency.toarray())
        row = table.set_index("key").loc[key]
        scores = expected.scores()
        assert_close(np.array([row["replacement"]]), np.array([scores.replacement]))
        assert (
            row["n_nodes"] == expected.n_nodes and row["top_token"] == expected.logits["token"][0]
        )
        pruned = store.load(key, pruned=True)
        assert pruned.n_nodes == row["pruned_nodes"] < expected.n_nodes
    on_disk = json.loads((out / "store.json").read_text())
    assert on_disk["knobs"] == {} and on_disk["keep"] == "both"
    assert (out / "index.csv").is_file()


def test_resume_redoes_only_missing_or_broken_files(store_dir, tmp_path):
    out, _ = store_dir
    copy = tmp_path / "store"
    import shutil

    shutil.copytree(out, copy)
    store = GraphStore(copy)
    keys = [prompt_key(p) for p in PROMPTS]
    store.graph_path(keys[0]).unlink()  # deleted
    data = store.pruned_path(keys[1]).read_bytes()
    store.pruned_path(keys[1]).write_bytes(data[: len(data) // 2])  # truncated
    (copy / "graphs" / f".{keys[2]}.zip.abc.tmp").write_bytes(b"half")  # a killed write
    with open(store.journal_path, "ab") as f:
        f.write(b'{"key": "torn')  # a driver killed mid-line
    again = sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, copy)
    assert (again.n_done, again.n_skipped) == (2, len(PROMPTS) - 2)
    assert not list((copy / "graphs").glob(".*.tmp"))
    index = store.index()
    assert sorted(index["key"]) == sorted(keys) and index["key"].is_unique
    assert all(store.is_done(r) for r in store.latest().values())
    lines = store.journal_path.read_bytes().split(b"\n")
    assert all(json.loads(line) for line in lines if line)  # the torn line was cut


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    import sae_circuits.batch._worker as worker

    real = worker.attribute
    bad = PROMPTS[1]

    def flaky(model, tokens, transcoders, **kw):
        if tokens.tolist() == bad:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tokens, transcoders, **kw)

    monkeypatch.setattr(worker, "attribute", flaky)
    prompts = [*PROMPTS[:3], [0, 99], [], [0, 1, 2]]  # id 99 >= d_vocab; empty
    result = sc.attribute_many(MODEL, TRANSCODERS, prompts, tmp_path / "s", keep="pruned")
    status = dict(zip(result.table["prompt"], result.table["status"], strict=True))
    errors = dict(zip(result.table["prompt"], result.table["error"], strict=True))
    assert result.n_done == 3 and result.n_failed == 3
    assert "out of memory" in errors[" ".join(map(str, bad))]
    assert "outside [0, d_vocab=64)" in errors["0 99"] and "empty" in errors[""]
    assert status["0 1 2"] == "ok"
    assert not list((tmp_path / "s" / "graphs").iterdir())  # keep="pruned"
    monkeypatch.setattr(worker, "attribute", real)
    again = sc.attribute_many(MODEL, TRANSCODERS, prompts, tmp_path / "s", keep="pruned")
    assert again.n_done == 1 and again.n_skipped == 3  # the OOM prompt retried


def test_bad_settings(store_dir, tmp_path):
    out, _ = store_dir
    with pytest.raises(StoreMismatchError, match="knobs"):
        sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, out, max_feature_nodes=5)
    with pytest.raises(ValueError, match=r"unknown attribute\(\) knobs.*valid knobs"):
        sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, tmp_path / "x", max_nodes=5)
    with pytest.raises(ValueError, match=r"valid choices: 'full', 'pruned', 'both'"):
        sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, tmp_path / "x", keep="all")  # type: ignore[arg-type]
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "mine.txt").write_text("keep me")
    with pytest.raises(StoreMismatchError, match="not empty"):
        sc.attribute_many(MODEL, TRANSCODERS, PROMPTS, tmp_path / "y")
    assert (tmp_path / "y" / "mine.txt").read_text() == "keep me"


def test_tables_against_the_graphs(store_dir):
    out, _ = store_dir
    store = GraphStore(out)
    occ = feature_occurrences(store)
    keys = store.keys()
    # what each pruned graph says, read directly
    per_graph = {}
    for key in keys:
        nodes = store.load(key, pruned=True).nodes
        feats = nodes[nodes["kind"] == "feature"]
        sums: dict[tuple[int, int], float] = {}
        for layer, feature, infl in zip(
            feats["layer"], feats["feature"], feats["influence"], strict=True
        ):
            sums[(int(layer), int(feature))] = sums.get((int(layer), int(feature)), 0.0) + float(
                infl
            )
        per_graph[key] = sums
    labels = {0: [f"f0-{i}" for i in range(64)], 1: [f"f1-{i}" for i in range(64)]}
    table = feature_table(occ, labels=labels)
    for row in table.head(10).to_dict("records"):
        f = (row["layer"], row["feature"])
        present = [g[f] for g in per_graph.values() if f in g]
        assert row["n_graphs"] == len(present)
        assert_close(
            np.array([row["mean_influence"]]), np.array([np.mean(present)]), ulps=1024, eps=2.0**-52
        )
        assert row["label"] == f"f{f[0]}-{f[1]}"
    assert table["total_influence"].is_monotonic_decreasing
    top = prompt_top_features(occ, k=2)
    assert set(top["key"]) == {k for k in keys if per_graph[k]}
    for key in (k for k in keys if per_graph[k]):
        first = top[(top["key"] == key) & (top["rank"] == 1)].iloc[0]
        assert (first["layer"], first["feature"]) == max(
            per_graph[key].items(), key=lambda kv: kv[1]
        )[0]
    a, b = keys[:3], keys[3:]
    comp = compare_groups(occ, a, b)
    row = comp.iloc[0]
    f = (int(row["layer"]), int(row["feature"]))
    mean_a = sum(per_graph[k].get(f, 0.0) for k in a) / len(a)
    mean_b = sum(per_graph[k].get(f, 0.0) for k in b) / len(b)
    assert_close(
        np.array([row["mean_a"], row["mean_b"]]),
        np.array([mean_a, mean_b]),
        ulps=1024,
        eps=2.0**-52,
    )
    assert comp["difference"].abs().is_monotonic_decreasing
    with pytest.raises(ValueError, match="both groups"):
        compare_groups(occ, a, a)
    with pytest.raises(ValueError, match="not finished graphs"):
        compare_groups(occ, ["nope"], b)
    fig = plot_features(table, top=5)
    assert len(fig.axes[0].patches) == min(5, len(table))
    fig = plot_features(comp, top=4)
    assert len(fig.axes[0].patches) == 2 * min(4, len(comp))


def test_cli_batch(tmp_path, capsys):
    from sae_circuits.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# tiny\nt5 t9 t3 t7\n\nt1 t2 t3\n")
    out = tmp_path / "store"
    args = ["batch", str(prompts), "--model", "tiny", "--transcoders", "tiny", "-o", str(out)]
    assert main([*args, "--tables", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "2 attributed, 0 already done, 0 failed" in printed
    assert (out / "tables" / "features.csv").is_file()
    assert main([*args, "-q"]) == 0
    assert "0 attributed, 2 already done" in capsys.readouterr().out
    assert main([*args, "-q", "--max-feature-nodes", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_text('"t1 t2"\n{"x": 1}\n')
    assert (
        main(
            [
                "batch",
                str(bad),
                "--model",
                "tiny",
                "--transcoders",
                "tiny",
                "-o",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "p.jsonl:2" in capsys.readouterr().err
