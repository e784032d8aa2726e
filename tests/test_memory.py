"""What attribution keeps after the clean pass: the active features' rows, never whole transcoders.

The CPU stands in for the model's device: the tensors a trace holds are counted by walking
everything reachable from it (its arrays, its vector-Jacobian products' closures and their
autograd graphs' saved tensors), and the transcoders' weights are shown to be freed, with the
trace still giving the same rows, once the caller lets go of them.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest
import torch

import sae_circuits as sc
from sae_circuits.attribution import trace
from sae_circuits.core.prompts import to_tokens
from sae_circuits.toy import tiny_model, tiny_transcoders
from sae_circuits.transcoders import check_compatible

from .conftest import KINDS, PROMPT


def held_bytes(root: object, exclude: set[int]) -> int:
    """Bytes of the tensor storages reachable from ``root`` (autograd graphs' saved tensors
    included), leaving out storages whose data pointer is in ``exclude``."""
    return sum(reachable_storages(root, exclude).values())


def reachable_storages(root: object, exclude: set[int] = frozenset()) -> dict[int, int]:  # type: ignore[assignment]
    """Data pointer -> bytes of every tensor storage reachable from ``root`` (see
    :func:`held_bytes`)."""
    seen: set[int] = set()
    storages: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a functorch wrapper: its value is inside
            return
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()

    def walk_graph(node: object) -> None:
        todo = [node]
        while todo:
            n = todo.pop()
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            for name in dir(n):
                if name.startswith("_saved_"):
                    try:
                        value = getattr(n, name)
                    except RuntimeError:
                        continue
                    for v in value if isinstance(value, (list, tuple)) else [value]:
                        if isinstance(v, torch.Tensor):
                            add(v)
            todo.extend(f for f, _ in getattr(n, "next_functions", ()))

    todo: list[object] = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            add(obj)
            if obj.grad_fn is not None:
                walk_graph(obj.grad_fn)
            continue
        if isinstance(obj, (type, type(sys))):
            continue
        if isinstance(obj, types.FunctionType):  # its closure, never its module's globals
            todo.extend(c.cell_contents for c in obj.__closure__ or () if _filled(c))
            todo.extend(obj.__defaults__ or ())
            continue
        if isinstance(obj, dict) and "__builtins__" in obj:  # a module's namespace
            continue
        todo.extend(gc.get_referents(obj))
    return storages


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _user_storages(model, transcoders) -> set[int]:
    tensors = [*model.parameters(), *model.buffers()]
    for tc in transcoders:
        tensors += [*tc.parameters(), *tc.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors}


@pytest.mark.parametrize("kind", [*KINDS, "clt"])
def test_trace_holds_no_transcoder_weights(kind):
    model = tiny_model("llama", seed=0)
    if kind == "clt":
        from sae_circuits.toy import tiny_clt

        tcs: list = [tiny_clt(tiny_transcoders(model, "relu", seed=0), seed=0)]
    else:
        tcs = tiny_transcoders(model, kind, seed=0)
    ts = sc.load_transcoders(tcs if kind != "clt" else tcs[0])
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    sel = torch.arange(tr.n_active)
    before = tr.rows(tr.feature_layer[sel], tr.feature_pos[sel], tr.encoder_vectors(sel))
    names = [n for n in ("W_enc", "W_dec", "b_enc", "threshold") if hasattr(tcs[0], n)]
    refs = {n: weakref.ref(getattr(tcs[0], n)) for n in names}
    skip = weakref.ref(tcs[0].W_skip) if hasattr(tcs[0], "W_skip") else None
    del ts, tcs
    gc.collect()
    assert {n: r() is None for n, r in refs.items()} == dict.fromkeys(names, True)
    # a skip transcoder's linear path is live in the frozen model: its W_skip is still needed
    assert skip is None or skip() is not None
    after = tr.rows(tr.feature_layer[sel], tr.feature_pos[sel], tr.encoder_vectors(sel))
    assert torch.equal(before, after)


def test_trace_bytes_follow_the_active_features_not_the_transcoders():
    """16x wider transcoders with about as many active features: the trace holds about the same."""
    model = tiny_model("llama", seed=0)
    tokens = to_tokens(model, PROMPT)
    figures = {}
    for d_sae, density in ((128, 0.05), (2048, 0.05 / 16)):
        tcs = tiny_transcoders(model, "relu", seed=0, d_sae=d_sae, density=density)
        ts = sc.load_transcoders(tcs)
        tr = trace(model, tokens, check_compatible(model, ts))
        weights = sum(p.numel() * p.element_size() for tc in tcs for p in tc.parameters())
        held = held_bytes(tr, _user_storages(model, tcs))
        per_feature = tr.n_active * model.cfg.d_model * 4  # one row of d_model float32
        figures[d_sae] = (weights, held, tr.n_active, per_feature)
    (w_small, h_small, n_small, _), (w_big, h_big, n_big, _) = figures[128], figures[2048]
    assert w_big >= 15 * w_small
    assert 0.5 < n_big / n_small < 2  # about as many active features
    assert h_big < 2 * h_small * max(1.0, n_big / n_small)
    assert h_big < w_big / 4  # far less than the transcoders


def _long_setup(kind: str, n: int = 200):
    """A tiny Llama-style model on an ``n``-token prompt, where features repeat over positions."""
    model = tiny_model("llama", seed=0, n_ctx=n)
    base = tiny_transcoders(model, "relu" if kind == "clt" else kind, seed=0)  # type: ignore[arg-type]
    if kind == "clt":
        from sae_circuits.toy import tiny_clt

        ts = sc.load_transcoders(tiny_clt(base, seed=0))
    else:
        ts = sc.load_transcoders(base)
    gen = torch.Generator().manual_seed(0)
    words = torch.randint(2, model.cfg.d_vocab, (n - 1,), generator=gen).tolist()
    tokens = to_tokens(model, " ".join(f"t{w}" for w in words))
    return model, ts, tokens


@pytest.mark.parametrize("kind", ("relu", "jumprelu_skip", "clt"))
def test_writer_table_form_gives_the_rows_of_stored_vectors(kind, monkeypatch):
    """The table form (one decoder vector per distinct feature, gathered per slice in small
    pieces) and the stored vectors give the same rows, on the explicit and the generic path."""
    from sae_circuits.attribution import _backward

    from .tolerance import assert_close

    model, ts, tokens = _long_setup(kind, n=64)
    rows = {}
    for generic in (False, True):
        for gain, gather in ((float("inf"), 1 << 25), (0.0, 1)):
            monkeypatch.setattr(_backward, "_TABLE_GAIN", gain)
            monkeypatch.setattr(_backward, "_GATHER_BYTES", gather)  # one position at a time
            if generic:
                monkeypatch.setattr(_backward, "_checked_transpose", lambda *args: None)
            tr = trace(model, tokens, check_compatible(model, ts))
            tabled = {g.table is not None for groups in tr._writers for g in groups}
            assert tabled == {gain == 0.0}
            sel = torch.arange(tr.n_active)
            rows[generic, gain] = tr.rows(
                tr.feature_layer[sel], tr.feature_pos[sel], tr.encoder_vectors(sel)
            )
    ref = rows[False, float("inf")]
    for key, value in rows.items():
        assert_close(value, ref, what=f"rows (generic, table gain) = {key}")


def test_long_prompt_trace_grows_with_distinct_features_not_positions():
    """On a long prompt the encoders and decoder vectors a trace holds are one per distinct
    (layer, feature), so its bytes stay near the transcoders' size, not n_active x d_model."""
    model, ts, tokens = _long_setup("relu", n=256)
    tr = trace(model, tokens, check_compatible(model, ts))
    distinct = len(set(zip(tr.feature_layer.tolist(), tr.feature_idx.tolist(), strict=True)))
    assert tr.n_active > 8 * distinct  # features repeat: the case this is about
    assert tr.encoders.shape[0] == distinct
    assert torch.equal(
        tr.encoder_vectors(torch.arange(tr.n_active)),
        torch.stack(
            [
                ts.encoder_vectors(int(ly), torch.tensor([int(f)]))[0]
                for ly, f in zip(tr.feature_layer, tr.feature_idx, strict=True)
            ]
        ),
    )
    assert all(g.table is not None for groups in tr._writers for g in groups)
    storages: dict[int, int] = {}
    for t in [tr.encoders, tr.encoder_index] + [
        x for groups in tr._writers for g in groups for x in (g.table, g.ids, g.acts)
    ]:
        assert t is not None
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    # what it used to hold: an encoder and a decoder row per active feature (each layer's
    # features write to one layer here)
    per_active = tr.n_active * model.cfg.d_model * 4
    assert sum(storages.values()) < 2 * per_active / 4
