"""ONNX graph surgery the exporters share: which outputs are heads, node names, compact names."""

from __future__ import annotations

from pathlib import Path


def compact_names(path: Path) -> None:
    """Replace the quantizer's long tensor and node names with short ones (graph input and outputs
    keep theirs) and drop opset imports no node uses. QDQ graphs of small models are mostly names:
    this takes a third off the file and changes no computation (tested: identical outputs)."""
    import onnx

    model = onnx.load(str(path))
    keep = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in model.graph.initializer:
        init.name = short(init.name)
    for node in model.graph.node:
        node.name = ""
        node.doc_string = ""
        for i, x in enumerate(node.input):
            node.input[i] = short(x)
        for i, x in enumerate(node.output):
            node.output[i] = short(x)
    del model.graph.value_info[:]
    model.doc_string = ""
    used = {n.domain or "" for n in model.graph.node} | {""}
    opsets = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    onnx.save(model, str(path))


#: Ops a graph output may pass through on its way back to the layer that makes it (a "head").
_HEAD_PASS_THROUGH = {"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _heads(model) -> list[tuple[str, object]]:
    """(graph output, the Gemm/MatMul node that makes it) for each output made by a layer directly
    or through a softmax or reshape: the model's heads."""
    producer = {o: node for node in model.graph.node for o in node.output}
    heads = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in _HEAD_PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ("Gemm", "MatMul"):
            heads.append((out.name, node))
    return heads


def head_outputs(path: Path) -> list[str]:
    """Names of the graph outputs of the ONNX model at ``path`` that heads make."""
    import onnx

    return [name for name, _ in _heads(onnx.load(str(path)))]


def name_nodes_and_find_heads(path: Path) -> list[str]:
    """Name every node of the model at ``path`` (the quantizer excludes nodes by name) and return the
    names of its head nodes. Their inputs are still int8; their weights and outputs stay float."""
    import onnx

    model = onnx.load(str(path))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    onnx.save(model, str(path))
    names: list[str] = []
    for _, node in _heads(model):
        if node.name not in names:
            names.append(node.name)
    return names


def float_graph_outputs(path: Path) -> None:
    """Where the quantizer made a graph output the dequantized copy of a float head's result (it does
    when a quantized layer also reads that output, as the decoder reads z1), give the graph the float
    result itself; the reading layer keeps the quantized copy."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = q.input[0]
        if producer.get(src) is None or producer[src].op_type not in ("Gemm", "MatMul"):
            continue
        copy = out.name + "_int8"
        for node in model.graph.node:
            node.input[:] = [copy if i == out.name else (out.name if i == src else i) for i in node.input]
        dq.output[0] = copy
        producer[src].output[:] = [out.name if o == src else o for o in producer[src].output]
    onnx.save(model, str(path))
