"""int8 quantization of an exported transformer encoder (ONNX): the candidate recipes.

One int8 scale per activation tensor (onnxruntime's quantize_dynamic) loses too much: the <s>
and </s> tokens carry activations 30-40x larger than the other tokens, so the shared scale
flattens everything else (mean cosine 0.73-0.88 to fp32 on real tweets). Two fixes, both int8:

- MatMuls that read a LayerNormalization output (query, key, value, feed-forward in: about 60%
  of the work) get one scale per token, after SmoothQuant (Xiao et al., 2023) has moved the
  outlier channels into the weights (x / s and s * w, s = amax(x)^alpha / amax(w)^(1 - alpha) per
  input channel, amax(x) measured on calibration texts); they run as MatMulIntegerToFloat,
  onnxruntime's fast u8 x s8 kernel.
- The other weight MatMuls (attention output, feed-forward out, whose inputs have the largest
  outliers) become MatMulNBits: 8-bit weights in blocks of `block` input channels, int8 compute
  that quantizes activations per token and block too (accuracy_level 4); slower, but exact enough.

Which recipe is right and fastest depends on the CPU (retrieval/embed/cpu.py): u8 x s8 saturates 16-bit
sums on x86 without VNNI, which 7-bit weights (`s7`) or u8 x u8 (`u8`) avoid. So a recipe is not
chosen here but on the machine itself, by retrieval/embed/recipes.py, among RECIPES.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Weights = Literal["s8", "s7", "u8"]


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: the MatMuls that read a LayerNormalization output (query, key, value,
    feed-forward in) get per-token int8 with these weights; `rest` says what the others become."""

    name: str
    weights: Weights
    """s8: u8 x s8 kernels; s7: s8 weights in 7 bits, so x86 without VNNI cannot saturate; u8: u8 x u8 kernels."""
    rest: Literal["nbits", "fp32"] = "nbits"
    """The other weight MatMuls: MatMulNBits 8-bit blockwise with int8 compute, or left in fp32."""


RECIPES = (
    Recipe("s8-nbits", "s8"),
    Recipe("s7-fp32", "s7", rest="fp32"),
    Recipe("u8-fp32", "u8", rest="fp32"),
)
"""The int8 candidates tried on every machine (the fp32 export itself is always the last resort):
s8-nbits was fastest with VNNI; on AVX2 alone u8 x s8 saturates and MatMulNBits ran slower than
fp32, so s7-fp32 and u8-fp32 keep the fast kernels only where they are exact enough. Others
(all MatMuls per-token, MatMulNBits alone) were measured and dropped: docs/benchmarks.md."""


def calibrate(src: Path, feeds: Iterable[Feed]) -> dict[str, np.ndarray]:
    """Per-channel activation peaks of the tensors every recipe quantizes; measured once, shared."""
    import onnx

    return _activation_amax(src, list(_layernorm_matmuls(onnx.load(str(src)))), feeds)


def quantize_int8(
    src: Path, out: Path, amax: dict[str, np.ndarray], recipe: Recipe, *, alpha: float, block: int
) -> None:
    """Write the int8 version of the fp32 model at `src` to `out`; `amax` comes from `calibrate`."""
    import onnx

    model = onnx.load(str(src))
    groups = _layernorm_matmuls(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for source, nodes in groups.items():
        _per_token_int8(model.graph, source, nodes, amax[source], alpha, opset, recipe.weights)
    if recipe.rest == "nbits":
        model = _blockwise_int8(model, block)
    onnx.save(model, str(out))


def _layernorm_matmuls(model) -> dict[str, list]:  # onnx.ModelProto -> {tensor: [MatMul nodes]}
    """Weight MatMuls grouped by the LayerNormalization output they read (q, k and v share one)."""
    weights = {init.name for init in model.graph.initializer}
    made_by = {output: node.op_type for node in model.graph.node for output in node.output}
    groups: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and made_by.get(node.input[0]) == "LayerNormalization":
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _activation_amax(src: Path, tensors: list[str], feeds: Iterable[Feed]) -> dict[str, np.ndarray]:
    """Largest |activation| per channel of each tensor over the calibration inputs (fp32 model)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(tensors, session.run(tensors, feed)):
            peak = np.abs(value[real]).max(axis=0)
            amax[name] = np.maximum(amax[name], peak) if name in amax else peak
    if not amax:
        raise ValueError("no calibration inputs")
    return amax


def _per_token_int8(graph, source: str, nodes: list, amax: np.ndarray, alpha: float, opset: int, kind: Weights) -> None:
    """Replace `nodes` (MatMuls reading `source`) by one shared per-token u8 quantization of the
    smoothed input and one MatMulIntegerToFloat each."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {init.name: init for init in graph.initializer}
    weights = [numpy_helper.to_array(inits[node.input[1]]) for node in nodes]
    w_amax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    smooth = (np.maximum(amax, 1e-5) ** alpha / np.maximum(w_amax, 1e-5) ** (1 - alpha)).astype(np.float32)
    p = f"{source}/int8"
    constants = {
        f"{p}/inv_smooth": 1 / smooth,
        f"{p}/c127": np.array(127, dtype=np.float32),
        f"{p}/tiny": np.array(1e-12, dtype=np.float32),
        f"{p}/c128": np.array(128, dtype=np.float32),
        f"{p}/zero_point": np.array(128, dtype=np.uint8),
    }
    quantize = [
        helper.make_node("Mul", [source, f"{p}/inv_smooth"], [f"{p}/x"]),
        helper.make_node("Abs", [f"{p}/x"], [f"{p}/abs"]),
        _reduce_max_last_axis(f"{p}/abs", f"{p}/max", constants, opset),
        helper.make_node("Div", [f"{p}/max", f"{p}/c127"], [f"{p}/scale0"]),
        helper.make_node("Max", [f"{p}/scale0", f"{p}/tiny"], [f"{p}/scale"]),
        helper.make_node("Div", [f"{p}/x", f"{p}/scale"], [f"{p}/xs"]),
        helper.make_node("Round", [f"{p}/xs"], [f"{p}/xr"]),
        helper.make_node("Add", [f"{p}/xr", f"{p}/c128"], [f"{p}/xo"]),
        helper.make_node("Cast", [f"{p}/xo"], [f"{p}/xq"], to=TensorProto.UINT8),
    ]
    replaced = {}
    top = 63 if kind == "s7" else 127
    for node, weight in zip(nodes, weights):
        smoothed = weight * smooth[:, None]
        w_scale = np.maximum(np.abs(smoothed).max(axis=0) / top, 1e-12).astype(np.float32)
        wq = np.round(smoothed / w_scale).clip(-top, top)
        inputs = [f"{p}/xq", f"{node.name}/wq", f"{p}/scale", f"{node.name}/w_scale", f"{p}/zero_point"]
        if kind == "u8":
            constants[f"{node.name}/wq"] = (wq + 128).astype(np.uint8)
            constants[f"{node.name}/w_zero_point"] = np.full(wq.shape[1], 128, dtype=np.uint8)
            inputs.append(f"{node.name}/w_zero_point")
        else:
            constants[f"{node.name}/wq"] = wq.astype(np.int8)
        constants[f"{node.name}/w_scale"] = w_scale
        replaced[node.name] = helper.make_node(
            "MatMulIntegerToFloat",
            inputs,
            list(node.output),
            name=f"{node.name}/int8",
            domain="com.microsoft",
        )
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    rebuilt = []
    for node in graph.node:
        if node.name in replaced:
            rebuilt.append(replaced[node.name])
            continue
        rebuilt.append(node)
        if source in node.output:
            rebuilt.extend(quantize)
    graph.ClearField("node")
    graph.node.extend(rebuilt)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def _reduce_max_last_axis(x: str, out: str, constants: dict[str, np.ndarray], opset: int):  # -> NodeProto
    from onnx import helper

    if opset < 18:
        return helper.make_node("ReduceMax", [x], [out], axes=[-1], keepdims=1)
    constants[f"{out}/axes"] = np.array([-1], dtype=np.int64)
    return helper.make_node("ReduceMax", [x, f"{out}/axes"], [out], keepdims=1)


def _blockwise_int8(model, block: int):  # onnx.ModelProto -> onnx.ModelProto
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # this module calls logging.basicConfig(level=INFO) when imported; undo that, and its chatter
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level
    chatty = logging.getLogger("onnxruntime.quantization")
    chatty_level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
        quantizer.process()
    finally:
        chatty.setLevel(chatty_level)
    if not any(node.domain == "com.microsoft" for node in quantizer.model.model.graph.node):
        log.warning("no MatMul was quantized: is this a transformer encoder?")
    return quantizer.model.model
