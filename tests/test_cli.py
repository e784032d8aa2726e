"""The ``sae-circuits`` command line, run in-process on the built-in tiny model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from sae_circuits.cli import main, read_direction
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.viewer.server import ViewerServer

from .tolerance import assert_close

PROMPT = "t5 t9 t3 t7 t2 t8 t11 t4 t6"
TINY = ["--model", "tiny", "--transcoders", "tiny"]
D_MODEL = 64  # the built-in tiny model's
HOOK = "blocks.1.hook_resid_mid"


@pytest.fixture(scope="module")
def attributed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One ``attribute`` run on the tiny model: (output folder, its stdout)."""
    out = tmp_path_factory.mktemp("cli") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(
            [
                "attribute",
                PROMPT,
                "--model",
                "tiny",
                "--transcoders",
                "tiny",
                "--node-threshold",
                "0.7",
                "--edge-threshold",
                "0.95",
                "--batch-size",
                "128",
                "--max-feature-nodes",
                "120",
                "-q",
                "-o",
                str(out),
            ]
        )
    assert code == 0
    return out, buf.getvalue()


def test_attribute_writes_graph_folder(attributed: tuple[Path, str]):
    out, _ = attributed
    graph = AttributionGraph.load(out / "graph.zip")
    pruned = AttributionGraph.load(out / "pruned.zip")
    assert graph.metadata["prompt"] == PROMPT
    assert graph.metadata["settings"]["batch_size"] == 128
    assert graph.metadata["settings"]["max_feature_nodes"] == 120
    assert pruned.metadata["pruning"]["node_threshold"] == 0.7
    assert pruned.metadata["pruning"]["edge_threshold"] == 0.95
    assert pruned.n_nodes < graph.n_nodes
    doc = json.loads((out / "graph.json").read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(doc)
    assert doc["metadata"]["prompt"] == PROMPT
    assert len(doc["links"]) == pruned.adjacency.nnz
    assert not (out / "annotations.json").exists()


def test_head_loadings_are_written_and_shown(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["attribute", PROMPT, *TINY, "--max-feature-nodes", "40", "-q", "-o", str(out)]
    assert main([*argv, "--head-loadings", "--qk-heads", "3"]) == 0
    stdout = capsys.readouterr().out
    pruned = AttributionGraph.load(out / "pruned.zip")
    n = pruned.adjacency.nnz
    assert f"head loadings: {n} of {n} edges of the pruned graph" in stdout
    loads = pd.read_csv(out / "head_loadings.csv")
    assert {"source", "target", "source_id", "target_id", "layer", "head", "loading"} <= set(loads)
    totals = loads.groupby(["source", "target"])["loading"].sum()
    weights = pruned.adjacency.tocsr()[
        totals.index.get_level_values("target"), totals.index.get_level_values("source")
    ]
    assert len(totals) == n
    assert_close(totals.to_numpy(), np.asarray(weights).ravel(), rtol=1e-4, what="loadings")
    doc = json.loads((out / "graph.json").read_text())
    assert all(1 <= len(link["heads"]) <= 5 for link in doc["links"])
    assert doc["metadata"]["sae_circuits"]["head_loadings"]["n_links"] == n
    # the QK attributions of the 3 (head, query <- key) carrying the most |loading|
    assert "QK attributions: 3 (head, query <- key)" in stdout
    heads = loads[loads["part"] == "head"]
    position = pruned.nodes["position"].to_numpy()
    summed = (
        heads.assign(
            query=position[heads["target"].to_numpy()],
            key=position[heads["source"].to_numpy()],
            size=heads["loading"].abs(),
        )
        .groupby(["layer", "head", "query", "key"])["size"]
        .sum()
        .sort_values(ascending=False, kind="stable")
    )
    records = json.loads((out / "attention.json").read_text())["records"]
    assert [(r["layer"], r["head"], r["query"], r["key"]) for r in records] == list(
        summed.index[:3]
    )
    for r in records:
        assert len(r["pairs"]) <= 20 and r["settings"]["top_pairs"] == 20
        listed = sum(x["contribution"] for x in r["pairs"])
        assert listed + r["residual"] == pytest.approx(r["score"], rel=1e-4)
        for side in ("query_side", "key_side"):
            total = sum(x["contribution"] for x in r[side]) + r[f"{side}_rest"]
            assert total == pytest.approx(r["score"], rel=1e-4)
    assert doc["metadata"]["sae_circuits"]["attention"]["n_records"] == 3
    # --qk-heads 0: loadings, no QK attributions (the loadings just written stand in for a
    # second computation of the same ones)
    saved = pd.read_csv(out / "head_loadings.csv", dtype={"layer": "Int64", "head": "Int64"})
    monkeypatch.setattr("sae_circuits.head_loadings", lambda *a, **k: saved)
    monkeypatch.setattr("sae_circuits.attribute_attention", None)  # never called
    assert main([*argv, "--head-loadings", "--qk-heads", "0", "--overwrite"]) == 0
    stdout = capsys.readouterr().out
    assert "head loadings: " in stdout and "QK attributions" not in stdout
    assert (out / "head_loadings.csv").exists() and not (out / "attention.json").exists()
    assert (
        json.loads((out / "graph.json").read_text())["metadata"]["sae_circuits"]["attention"]
        is None
    )
    # without the option (again, --overwrite): no loadings, the old ones removed
    assert main([*argv, "--overwrite"]) == 0
    assert "head loadings" not in capsys.readouterr().out
    assert not (out / "head_loadings.csv").exists()
    assert not any("heads" in x for x in json.loads((out / "graph.json").read_text())["links"])


def test_qk_heads_needs_head_loadings(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["attribute", PROMPT, *TINY, "--qk-heads", "2", "-o", str(out)]) == 2
    assert (
        "--qk-heads picks heads by their loadings: give --head-loadings" in capsys.readouterr().err
    )
    assert not out.exists()


def test_attribute_prints_a_summary(attributed: tuple[Path, str]):
    _, stdout = attributed
    for expected in (
        "[1/4] loading model 'tiny'",
        "top logits:",
        "graph: ",
        "pruned: ",
        "replacement",
        "completeness",
        "top features by influence",
        "sae-circuits serve",
    ):
        assert expected in stdout, expected


def test_attribute_refuses_to_overwrite(attributed: tuple[Path, str], capsys):
    out, _ = attributed
    before = (out / "graph.json").read_bytes()
    code = main(["attribute", PROMPT, "--model", "tiny", "--transcoders", "tiny", "-o", str(out)])
    assert code == 2
    assert "already holds a graph" in capsys.readouterr().err
    assert (out / "graph.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--node-threshold", "1.5"], "--node-threshold must be in [0, 1]"),
        (["--edge-threshold", "abc"], "--edge-threshold must be a number"),
        (["--max-feature-nodes", "0"], "expected a whole number >= 1"),
        (["--batch-size", "-3"], "expected a whole number >= 1"),
        (["--port", "70000"], "a port is a number in 0..65535"),
        (["--qk-heads", "-1"], "expected a whole number >= 0"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, capsys, args: list[str], message: str):
    argv = ["attribute", PROMPT, "--model", "tiny", "--transcoders", "tiny", "-o", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(argv + args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "model, transcoders, message",
    [
        ("no-such-model-xyz", "toy-facts", "cannot load model 'no-such-model-xyz'"),
        ("tiny", "/no/such/folder", "cannot load transcoders '/no/such/folder'"),
    ],
)
def test_unknown_model_or_transcoders_exit_2(
    tmp_path: Path, capsys, model: str, transcoders: str, message: str
):
    out = tmp_path / "out"
    code = main(
        ["attribute", PROMPT, "--model", model, "--transcoders", transcoders, "-o", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-circuits: error: ") and message in err
    assert not out.exists()


def test_tiny_transcoders_need_the_tiny_model(tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = main(["attribute", PROMPT, "--model", "gpt2", "--transcoders", "tiny", "-o", str(out)])
    assert code == 2
    assert "--transcoders tiny only fits --model tiny" in capsys.readouterr().err
    assert not out.exists()


def test_serve_refuses_non_local_hosts(attributed: tuple[Path, str], capsys, monkeypatch):
    out, _ = attributed
    started = []
    monkeypatch.setattr(ViewerServer, "serve_forever", lambda self, *a, **k: started.append(1))
    for host in ("0.0.0.0", "192.168.0.10", "::"):
        assert main(["serve", str(out), "--host", host, "--port", "0"]) == 2
        assert "--allow-remote" in capsys.readouterr().err
    # --serve on attribute checks the host before any work
    code = main(
        [
            *("attribute", PROMPT, "--model", "tiny", "--transcoders", "tiny"),
            *("-o", str(out / "x"), "--serve", "--host", "0.0.0.0"),
        ]
    )
    assert code == 2 and "refusing to serve" in capsys.readouterr().err
    assert not (out / "x").exists()
    assert not started


def test_serve_starts_on_localhost(attributed: tuple[Path, str], capsys, monkeypatch):
    out, _ = attributed

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ViewerServer, "serve_forever", interrupted)
    assert main(["serve", str(out), "--port", "0"]) == 0
    stdout = capsys.readouterr().out
    assert "serving" in stdout and "http://127.0.0.1:" in stdout and "stopped" in stdout


def test_serve_bad_folders_exit_2(tmp_path: Path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "no graph folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "holds no graph" in capsys.readouterr().err


def test_demo_writes_a_folder(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0  # no -q: stderr is no terminal here
    captured = capsys.readouterr()
    stdout = captured.out
    assert "\r" not in captured.err and "it/s" not in captured.err and "row/s" not in captured.err
    assert "texas (state of city)" in stdout and "sae-circuits serve" in stdout
    assert "top logit: austin" in stdout and "-> sacramento" in stdout
    for name in ("graph.zip", "pruned.zip", "graph.json"):
        assert (out / name).is_file(), name
    # the dashboards of every feature of the pruned graph, from the training corpus
    from sae_circuits.features import graph_features, read_feature_file

    assert "feature dashboards:" in stdout
    from sae_circuits.graph import AttributionGraph

    pruned = AttributionGraph.load(out / "pruned.zip")
    for layer, ids in graph_features(pruned).items():
        for f in ids:
            rec = read_feature_file(out / "features", layer=layer, feature=f)
            assert rec["label"] and rec["n_tokens"] > 0


def test_features_command_builds_dashboards(tmp_path: Path, capsys):
    from sae_circuits.features import read_feature_file, read_index
    from sae_circuits.toy.facts import load_toy_world

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(s.text for s in load_toy_world().split("train")[:60]))
    out = tmp_path / "f"
    args = ["features", "--model", "toy-facts", "--transcoders", "toy-facts", "--corpus"]
    assert main([*args, str(corpus), "-o", str(out), "--max-tokens", "300", "-q"]) == 0
    stdout = capsys.readouterr().out
    index = read_index(out)
    assert f"{index['n_files']} feature files" in stdout and index["n_files"] > 0
    layer, feature = next(iter(index["features"])).split("_")
    rec = read_feature_file(out, layer=int(layer), feature=int(feature))
    assert rec["density"] > 0 and rec["examples_quantiles"][0]["examples"]
    assert main([*args, str(tmp_path / "missing.txt"), "-o", str(out)]) == 2
    assert "cannot read corpus" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["attribute"], ["serve"], ["demo"], ["features"]])
def test_help(capsys, command: list[str]):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sae-circuits")
    if command == ["attribute"]:
        assert "--max-feature-nodes" in out and "--node-threshold" in out
        for option in ("--target TOKEN", "--logit-diff A B", "--direction LABEL FILE [HOOK]"):
            assert option in out, option
        assert "ignored when targets are given" in out
        assert "--head-loadings" in out and "--qk-heads N" in out


def test_missing_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --target, --logit-diff, --direction


@pytest.fixture(scope="module")
def directions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Direction files: d_model vectors as .npy / .pt / .safetensors, and bad ones."""
    folder = tmp_path_factory.mktemp("directions")
    gen = np.random.default_rng(0)
    files = {
        "npy": folder / "d.npy",
        "pt": folder / "d.pt",
        "safetensors": folder / "d.safetensors",
        "short": folder / "short.npy",
        "two": folder / "two.pt",
        "garbage": folder / "garbage.npy",
        "txt": folder / "d.txt",
    }
    np.save(files["npy"], gen.standard_normal(D_MODEL))
    torch.save(torch.from_numpy(gen.standard_normal(D_MODEL)).float(), files["pt"])
    save_file({"v": torch.from_numpy(gen.standard_normal(D_MODEL)).float()}, files["safetensors"])
    np.save(files["short"], gen.standard_normal(10))
    torch.save({"a": torch.ones(D_MODEL), "b": torch.ones(2)}, files["two"])
    files["garbage"].write_text("not an array")
    files["txt"].write_text(" ".join(["1.0"] * D_MODEL))
    return files


@pytest.fixture(scope="module")
def targeted(
    tmp_path_factory: pytest.TempPathFactory, directions: dict[str, Path]
) -> tuple[Path, str]:
    """``attribute`` with targets of every kind, in mixed order: (output folder, its stdout)."""
    out = tmp_path_factory.mktemp("cli-targets") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(
            [
                *("attribute", PROMPT, *TINY, "-q", "--max-feature-nodes", "16"),
                *("--target", "t7"),
                *("--direction", "unembed dir", str(directions["npy"])),
                *("--logit-diff", "t7", "3"),
                *("--target", "3"),
                *("--direction", "resid dir", str(directions["pt"]), HOOK),
                *("--target-position", "-2", "-o", str(out)),
            ]
        )
    assert code == 0
    return out, buf.getvalue()


def test_targets_are_attributed_in_the_order_given(
    targeted: tuple[Path, str], directions: dict[str, Path]
):
    out, _ = targeted
    graph = AttributionGraph.load(out / "graph.zip")
    table = graph.targets
    assert table["label"].tolist() == [
        "t7",
        "unembed dir",
        "logit(t7) - logit(3)",
        "t3",
        "resid dir",
    ]
    assert table["kind"].tolist() == ["logit", "direction", "logit_diff", "logit", "direction"]
    assert table["hook"].tolist()[4] == HOOK and table["hook"][:4].isna().all()
    n_pos = len(graph.metadata["tokens"])
    assert table["position"].tolist() == [n_pos - 2] * 5
    assert table["token_id"].tolist()[0] == 7 and table["token_id"].tolist()[3] == 3
    assert graph.metadata["settings"]["targets"] == "given"
    described = graph.metadata["targets"]
    np.testing.assert_array_equal(described[1]["direction"], np.load(directions["npy"]))
    np.testing.assert_array_equal(
        described[4]["direction"], torch.load(directions["pt"]).double().numpy()
    )
    pruned = AttributionGraph.load(out / "pruned.zip")
    assert pruned.targets["label"].tolist() == table["label"].tolist()


def test_logit_diff_row_is_the_difference_of_the_logit_rows(targeted: tuple[Path, str]):
    out, _ = targeted
    graph = AttributionGraph.load(out / "graph.zip")
    rows = graph.adjacency.tocsr()
    t7, _, diff, t3, _ = (rows[[int(i)]].toarray()[0] for i in graph.targets["node"])
    assert_close(diff, t7 - t3, what="--logit-diff row vs difference of --target rows")
    values = graph.targets["value"].to_numpy(dtype=float)
    assert values[2] == pytest.approx(values[0] - values[3], rel=1e-5)


def test_attribute_prints_the_targets(targeted: tuple[Path, str]):
    _, stdout = targeted
    assert "top logits:" not in stdout
    lines = stdout.split("targets:\n", 1)[1].splitlines()[:5]
    for line, (label, kind) in zip(
        lines,
        [
            ("t7", "logit"),
            ("unembed dir", "direction"),
            ("logit(t7) - logit(3)", "logit_diff"),
            ("t3", "logit"),
            ("resid dir", "direction"),
        ],
        strict=True,
    ):
        assert line.split()[0] == label.split()[0] and f" {kind} " in line and "value=" in line
    assert HOOK in lines[4] and "p=" in lines[0] and "p=" not in lines[2]
    assert "1 target" not in stdout and "3 target" in stdout  # node counts include targets


def test_no_targets_means_the_salient_logits(attributed: tuple[Path, str]):
    out, stdout = attributed
    graph = AttributionGraph.load(out / "graph.zip")
    assert graph.metadata["settings"]["targets"] == "salient logits"
    assert set(graph.targets["kind"]) == {"logit"}
    assert "top logits:" in stdout and "targets:" not in stdout


@pytest.mark.parametrize("kind", ["npy", "pt", "safetensors"])
def test_read_direction_reads_one_tensor(directions: dict[str, Path], kind: str):
    vec = torch.as_tensor(read_direction("d", str(directions[kind])))
    assert vec.shape == (D_MODEL,) and torch.isfinite(vec).all()


def test_read_direction_takes_a_dict_of_one_tensor(tmp_path: Path):
    path = tmp_path / "one.pt"
    torch.save({"direction": torch.arange(1.0, 5.0)}, path)
    assert read_direction("d", str(path)).tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "t5 t9"], "--target 't5 t9': 't5 t9' is 2 tokens"),
        (["--target", "999"], "--target 999: token id 999 is outside the vocabulary"),
        (["--logit-diff", "t5", "t1 t2"], "--logit-diff t5 't1 t2': 't1 t2' is 2 tokens"),
        (["--logit-diff", "t5", "5"], "of a token with itself is zero"),
        (["--direction", "d", "{missing}"], "--direction d {missing}: no such file"),
        (["--direction", "d", "{garbage}"], "--direction d {garbage}: cannot read"),
        (["--direction", "d", "{txt}"], "expected a .npy, .pt, .pth, .safetensors file"),
        (["--direction", "d", "{two}"], "holds 2 entries (a, b), not one tensor"),
        (
            ["--direction", "d", "{short}"],
            "--direction d {short}: target 'd': its direction has 10",
        ),
        (
            ["--direction", "d", "{npy}", "blocks.9.hook_nope"],
            "target hook 'blocks.9.hook_nope' is not a hook of this model",
        ),
        (["--direction", "d", "{npy}", "blocks.1.ln1.hook_scale"], "is frozen"),
        (["--target", "t3", "--target-position", "30"], "--target t3: position 30 is out of range"),
        (["--target-position", "3"], "--target-position applies to --target"),
    ],
)
def test_bad_targets_exit_2(
    tmp_path: Path, capsys, directions: dict[str, Path], args: list[str], message: str
):
    files = {k: str(v) for k, v in directions.items()} | {"missing": str(tmp_path / "no.npy")}
    out = tmp_path / "out"
    argv = ["attribute", PROMPT, *TINY, "-q", *(a.format(**files) for a in args), "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-circuits: error: ") and err.count("\n") == 1
    assert message.format(**files) in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--direction", "d"], "expected LABEL FILE [HOOK] (2 or 3 values), got 1"),
        (["--direction", "d", "f.npy", HOOK, "x"], "got 4: d f.npy blocks.1.hook_resid_mid x"),
        (["--logit-diff", "t5"], "--logit-diff: expected 2 arguments"),
        (["--target-position", "last"], "expected a whole number, got 'last'"),
    ],
)
def test_malformed_target_options_exit_2(tmp_path: Path, capsys, args: list[str], message: str):
    with pytest.raises(SystemExit) as exc:
        main(["attribute", PROMPT, *TINY, *args, "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_docs_reference_lists_every_command_and_option():
    """docs/viewer.md's command-line reference (docs/cli_reference.py) is the parser's."""
    import argparse
    from pathlib import Path

    from sae_circuits.cli import build_parser

    doc = (Path(__file__).resolve().parents[1] / "docs" / "viewer.md").read_text()
    ref = doc[doc.index("## Command-line reference") :]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, command in sub.choices.items():
        head = f"$ sae-circuits {name} --help"
        if head not in ref:
            missing.append(head)
            continue
        block = ref[ref.index(head) :].split("```")[0]
        for action in command._actions:
            missing += [f"{name} {o}" for o in action.option_strings if o not in block]
    assert missing == [], f"rerun docs/cli_reference.py: {missing}"
