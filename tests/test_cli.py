"""The ``sae-circuits`` command line, run in-process on the built-in tiny model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from sae_circuits.cli import main
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.viewer.server import ViewerServer

PROMPT = "t5 t9 t3 t7 t2 t8 t11 t4 t6"


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


@pytest.mark.parametrize("command", [[], ["attribute"], ["serve"], ["demo"]])
def test_help(capsys, command: list[str]):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sae-circuits")
    if command == ["attribute"]:
        assert "--max-feature-nodes" in out and "--node-threshold" in out


def test_missing_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err
