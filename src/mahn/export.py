"""Export a trained run for serving without mahn: the history encoder as ONNX, the item table as .npy.

`mahn export RUN --format onnx --out DIR` writes DIR/encoder.onnx (left-padded histories -> user states),
DIR/items.npy (every item's row: trained, then added) and DIR/export.json (the inputs, the item keys in row
order, the pad id, max_len and how to score: states @ items.T with the history masked). docs/export.md has a
plain NumPy + ONNX Runtime snippet that recommends from these three files.

The exporter is torch.onnx's TorchScript one (dynamo=False): the dynamo exporter needs onnxscript, which mahn
does not install. It traces `encode`, so Python decisions in it are frozen at the traced shapes: MAHN, GRU4Rec
and Caser get export-time encoders below that compute the same states without them, attention layers are
exported with separate projections, and two patterns that ONNX Runtime runs wrongly are rewritten. Each export
is checked by onnx.checker and by ONNX Runtime against the model's own `encode` at two batch sizes and lengths.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import mahn
from mahn.errors import DataError
from mahn.io import atomic_dir, save_npy, write_json
from mahn.models.base import SequentialModel, left_to_right_padded

FORMATS = ("onnx",)
EXPORTED = ("mahn", "mgt", "sasrec", "bert4rec", "gru4rec", "caser")  # registry names export_onnx accepts
OPSET = 17
TOLERANCE = 1e-4  # largest difference between ONNX Runtime's states and the model's, relative to their size


def last_real(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, D) outputs over right-padded rows -> (B, D) at each row's last real position (an empty row: its
    first, as the models read an empty history as one pad item)."""
    index = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
    return outputs.gather(1, index).squeeze(1)


class Encoder(nn.Module):
    """The model's own encode: SASRec, BERT4Rec and MGT trace as they are (with separate_projections)."""

    def __init__(self, model: SequentialModel):
        super().__init__()
        self.model = model

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        return self.model.encode(histories)


class GRU4RecEncoder(Encoder):
    """GRU4Rec.encode without pack_padded_sequence, which the exporter refuses without a pad_packed_sequence: the
    GRU over right-padded rows, read at each row's last real position (the padding after it cannot change it)."""

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        m = self.model
        right, lengths = left_to_right_padded(histories, m.pad)
        outputs, _ = m.gru(m.item_embedding(right))
        final = last_real(outputs, lengths)
        return torch.cat([final, torch.ones_like(final[:, :1])], 1)  # len() would freeze the batch size


class MAHNEncoder(Encoder):
    """MAHN.encode (MAHN.run) over right-padded rows instead of packed ones, as GRU4RecEncoder. Each item's
    (v, e, t) is computed once here and looked up in the graph, as MAHN's own scoring cache does."""

    def __init__(self, model: SequentialModel):
        super().__init__(model)
        with torch.no_grad():
            v, t = model.project(None)  # every row, the pad row last
            e = model.id_vectors(torch.arange(model.n_items + 1, device=model.device))
        self.parts = [p.detach() if p is not None else None for p in (v, e, t)]

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        m = self.model
        right, lengths = left_to_right_padded(histories, m.pad)
        v, e, t = (p[right] if p is not None else None for p in self.parts)
        h, _ = m.lstm1(m.represent(v, e, t))
        v_bar = m.visual.gate(h, v) * v if m.visual else None
        t_bar = m.text.gate(h, t) * t if m.text else None
        out, _ = m.lstm2(m.fuse(m.op2, [p for p in (v_bar, h, t_bar) if p is not None]))
        return last_real(out, lengths)


class CaserEncoder(Encoder):
    """Caser.encode with its user ids: the last `window` items by one pad and slice (Caser's `if` on the length
    would be frozen), and its state [z, P_u, 1] with the 1 made from the batch (len() would freeze it too)."""

    def forward(self, histories: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        m = self.model
        window = m.config.window
        image = m.item_embedding(F.pad(histories, (window, 0), value=m.pad)[:, -window:]).unsqueeze(1)
        vertical = m.vertical(image).flatten(1)
        horizontal = [F.relu(conv(image).squeeze(3)).amax(2) for conv in m.horizontal]
        z = F.relu(m.fc(torch.cat([vertical, *horizontal], 1)))
        return torch.cat([z, m.user_embedding(users), torch.ones_like(z[:, :1])], 1)


def separate_projections(model: SequentialModel) -> SequentialModel:
    """A copy of `model` whose attention layers (nn.MultiheadAttention: SASRec, BERT4Rec, MGT) project the query,
    key and value by three weights instead of one packed weight: the same products, but the packed path (unflatten,
    transpose, squeeze) loses the history length in the exporter's shape inference, which then writes the traced
    length into the graph as a constant."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for attention in model.modules():
        if isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim:
            q, k, v = attention.in_proj_weight.detach().chunk(3)
            attention.register_parameter("in_proj_weight", None)
            attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight = map(nn.Parameter, (q, k, v))
            attention._qkv_same_embed_dim = False
    return model


ENCODERS = {"mahn": MAHNEncoder, "gru4rec": GRU4RecEncoder, "caser": CaserEncoder}


def needs_users(name: str) -> bool:
    """Whether the model's states depend on the user (Caser's P_u), so the encoder takes a `users` input."""
    return name == "caser"


def for_onnxruntime(model) -> None:
    """Rewrite two patterns of the traced graph that ONNX Runtime gets wrong into equal ones that it gets right.

    - torch.eye(dtype=bool) (the attention mask of SASRec and MGT) is an EyeLike of booleans, which has no kernel
      there: it is computed in int32, its input and output cast.
    - Gather(table, Range(start, limit, step)) is fused into Slice(table, start, limit, step) by ONNX Runtime's
      GatherToSliceFusion (extended optimisations, on by default), which is wrong for the positions
      arange(L - 1, -1, -1) of SASRec, BERT4Rec and MGT: Slice reads the end -1 as the last row, and returns no
      rows. Each Range(s, l, d) is computed as -Range(-s, -l, -d), which no fusion matches.
    """
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    nodes = []
    for node in list(model.graph.node):
        target = node.output[0]
        if node.op_type == "EyeLike" and types.get(target) == TensorProto.BOOL:
            source = node.input[0]
            node.input[0], node.output[0] = f"{source}_int", f"{target}_int"
            kept = [a for a in node.attribute if a.name != "dtype"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("dtype", TensorProto.INT32)])
            nodes += [helper.make_node("Cast", [source], [f"{source}_int"], to=TensorProto.INT32), node,
                      helper.make_node("Cast", [f"{target}_int"], [target], to=TensorProto.BOOL)]
        elif node.op_type == "Range":
            negated = [f"{target}_neg{i}" for i in range(3)]
            nodes += [helper.make_node("Neg", [x], [y]) for x, y in zip(node.input, negated, strict=True)]
            node.input[:], node.output[0] = negated, f"{target}_neg"
            nodes += [node, helper.make_node("Neg", [f"{target}_neg"], [target])]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def probes(pad: int, n_items: int, max_len: int) -> list[torch.Tensor]:
    """Histories to compare ONNX Runtime with torch on: one item (batch 1), and max_len, 2 and 1 items left-padded
    to max_len (batch 3; the trace's input)."""
    ids = torch.arange(3 * max_len) % n_items
    rows = [torch.cat([torch.full((max_len - n,), pad), ids[i * max_len : i * max_len + n]])
            for i, n in enumerate((max_len, min(2, max_len), 1))]
    return [ids[:1].view(1, 1), torch.stack(rows)]


def export_onnx(run: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write the folder `out` (encoder.onnx, items.npy, export.json) from the run's best weights and the items
    added to it; returns what export.json holds. `out` is built beside itself and renamed into place; an existing
    `out` that is not an empty folder is refused unless `force`."""
    run, out = Path(run), Path(out)
    if not (run / "config.json").is_file():
        raise DataError("not a training run (no config.json)", run)
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise DataError(f"export needs onnx and onnxruntime: pip install onnx onnxruntime ({error})") from None
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty and not force:
        raise DataError("output directory exists and is not empty (pass --force to replace it)", out)

    recommender = mahn.load(run, device="cpu", index="exact")
    name = recommender.record["model"]
    if name not in EXPORTED:
        raise DataError(f"{recommender.model.name} cannot be exported: export supports {', '.join(EXPORTED)}", run)
    items = recommender.items.current()
    reader = (items.reader or recommender.model).eval()  # the model that also reads the added items, if any
    table = recommender.item_table().float().cpu().numpy()
    encoder = ENCODERS.get(name, Encoder)(separate_projections(reader)).eval()
    with_users = needs_users(name)
    user_keys = recommender.dataset.user_keys() if with_users else []
    inputs = ["histories", "users"] if with_users else ["histories"]
    axes = {"histories": {0: "batch", 1: "length"}, "users": {0: "batch"}, "states": {0: "batch"}}

    def feed(histories: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (histories, torch.arange(len(histories)) % len(user_keys)) if with_users else (histories,)

    checks = probes(reader.pad, reader.n_items, recommender.max_len)
    with atomic_dir(out, force=out.exists()) as tmp:  # an existing `out` is empty, or forced, by now
        path = tmp / "encoder.onnx"
        # the fast path of nn.TransformerEncoderLayer (BERT4Rec) is one fused kernel with no ONNX form
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with warnings.catch_warnings():  # the tracer's warnings: the comparison below is what tells
                warnings.simplefilter("ignore")
                torch.onnx.export(encoder, feed(checks[1]), str(path), input_names=inputs, output_names=["states"],
                                  dynamic_axes={k: axes[k] for k in [*inputs, "states"]}, opset_version=OPSET,
                                  dynamo=False)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        graph = onnx.load(str(path))
        for_onnxruntime(graph)
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        with torch.no_grad():
            for histories in checks:
                args = feed(histories)
                expected = reader.encode(*args).float().numpy()
                got = session.run(None, {k: a.numpy() for k, a in zip(inputs, args, strict=True)})[0]
                worst = max(worst, float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max())))
        if not worst <= TOLERANCE:
            raise DataError(f"the exported {reader.name} encoder gives states {worst:.1e} away from the model's "
                            "(relative): nothing was written", run)
        save_npy(tmp / "items.npy", table)
        meta = {
            "format": "onnx", "opset": OPSET, "exporter": "torch.onnx, TorchScript (dynamo=False)",
            "mahn": mahn.__version__, "torch": torch.__version__, "run": str(run),
            "model": name, "model_name": reader.name, "encoder": "encoder.onnx", "items": "items.npy",
            "inputs": {"histories": "int64 (batch, length): item rows (indices into keys), oldest first, the last "
                                    "max_len items of each history, left-padded with pad"}
            | ({"users": "int64 (batch,): user rows (indices into users)"} if with_users else {}),
            "outputs": {"states": f"float32 (batch, {table.shape[1]})"},
            "dim": table.shape[1], "n_items": table.shape[0], "added": table.shape[0] - recommender.n_trained,
            "pad": reader.pad, "max_len": recommender.max_len,
            "scoring": "scores = states @ items.T; set the score of every item of the history (not only of its "
                       "last max_len) to -inf; recommend the items of the highest scores",
            "verified_difference": worst,  # largest relative difference of ONNX Runtime's states from torch's
            "keys": items.keys,  # row i of items.npy is the item keys[i]
        }
        if with_users:
            meta["users"] = user_keys  # user row i is the user keys[i] of the dataset
        write_json(tmp / "export.json", meta)
    return meta
