"""A small helper that writes ONNX nodes and initializers with unique names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10  # read by onnxruntime >= 1.20 and onnxruntime-web


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs, then makes an onnx.ModelProto."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = 0
        self._constants: dict[tuple[str, bytes], str] = {}
        self.uses_contrib = False

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def initializer(self, name: str, array: np.ndarray) -> str:
        # np.asarray rather than np.ascontiguousarray, which turns 0-d scalars into 1-d arrays.
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def const(self, values: float | Sequence[int] | Sequence[float] | np.ndarray, dtype: Any = np.int64) -> str:
        """A small constant, deduplicated by value."""
        array = np.asarray(values, dtype=dtype)
        key = (str(array.dtype) + str(array.shape), array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(self.fresh("const"), array)
        return self._constants[key]

    def op(self, op_type: str, inputs: Sequence[str], *, domain: str = "", **attrs: Any) -> str:
        """Append a node with one output and return the output's name."""
        return self.ops(op_type, inputs, n_out=1, domain=domain, **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], *, n_out: int, domain: str = "", **attrs: Any) -> list[str]:
        """Append a node with several outputs and return their names."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        if domain == "com.microsoft":
            self.uses_contrib = True
        return outs

    def rename_output(self, value: str, name: str) -> str:
        """Give a computed value a public name (graph outputs need stable names)."""
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        return name

    def add_input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def model(self, *, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.uses_contrib:
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="compute-market")
        model.ir_version = IR_VERSION
        for key, value in sorted(metadata.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
