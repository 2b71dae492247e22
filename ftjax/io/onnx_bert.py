"""BERT encoders exported to ONNX (sentence-transformers' paraphrase-MiniLM-L3-v2), read into
our BERT tree with onnx's numpy helpers.

Exporters keep the names of initializers that are graph constants as written (biases, layer
norms, embeddings: `...encoder.layer.0.attention.self.query.bias`) but give the Linear weights
that feed a MatMul anonymous names (`onnx::MatMul_470`), stored (in, out). Each such weight is
named from the graph itself: the Add that consumes its MatMul's output adds a named bias, and
the weight belongs to that bias's module. The weights then go through the same name map as a
Hugging Face BERT checkpoint (ftjax.io.hf.BERT_NAMES), so nothing is matched by number.

The architecture comes from the weights' shapes (vocabulary, width, layers, FFN width,
positions, token types) and from the graph: heads from the attention's 1/sqrt(head size)
scale, the layer-norm epsilon from a LayerNormalization node, the activation from its Erf
(exact GELU). The file holds no tokenizer and no pooler.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ftjax.io.hf import BERT_NAMES
from ftjax.io.loading import Checkpoint, CheckpointError
from ftjax.io.names import convert
from ftjax.models import BertConfig

# What precedes the BERT module's own names in an export (sentence-transformers: a module path).
_PREFIX = re.compile(r"^.*?(?=(embeddings|encoder|pooler)\.)")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def read_onnx_bert(path: str | os.PathLike) -> Checkpoint:
    """Config and tensors (under our names) of an ONNX BERT encoder."""
    import onnx  # noqa: PLC0415  (a heavy import, only for .onnx files)
    from onnx import numpy_helper  # noqa: PLC0415

    path = Path(path)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:  # onnx raises DecodeError and others for a file it cannot read
        raise CheckpointError(f"{path}: not a readable ONNX model ({err})") from None
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    tensors = {_PREFIX.sub("", name): value for name, value in initializers.items()
               if _PREFIX.match(name)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers or \
                _PREFIX.match(node.input[1]):
            continue
        biases = [name for add in consumers.get(node.output[0], []) if add.op_type == "Add"
                  for name in add.input if name in initializers and name.endswith(".bias")]
        if len(biases) != 1:
            raise CheckpointError(f"{path}: the weight {node.input[1]} feeds no Add of one named "
                                  f"bias, so its module cannot be named")
        weight = _PREFIX.sub("", biases[0]).removesuffix(".bias") + ".weight"
        tensors[weight] = np.ascontiguousarray(initializers[node.input[1]].T)  # torch: (out, in)
    config = _config(path, graph, tensors, numpy_helper)
    return Checkpoint(config=config, conversion=convert(tensors, BERT_NAMES))


def _config(path: Path, graph, tensors: dict, numpy_helper) -> BertConfig:
    try:
        vocab, hidden = tensors["embeddings.word_embeddings.weight"].shape
        positions = tensors["embeddings.position_embeddings.weight"].shape[0]
        types = tensors["embeddings.token_type_embeddings.weight"].shape[0]
        ffn = tensors["encoder.layer.0.intermediate.dense.bias"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{path}: no BERT tensor {err.args[0]!r}; not a BERT encoder "
                              f"export") from None
    layers = 1 + max(int(m.group(1)) for key in tensors if (m := _LAYER.search(key)))
    constants = {out: numpy_helper.to_array(a.t) for node in graph.node
                 if node.op_type == "Constant" for out in node.output for a in node.attribute
                 if a.name == "value"}
    scales = [float(constants[name]) for node in graph.node
              if node.op_type == "Div" and "attention" in node.name
              for name in node.input[1:] if name in constants]
    if not scales:
        raise CheckpointError(f"{path}: no attention scale (Div by sqrt(head size)) in the "
                              f"graph; cannot tell the number of heads")
    head_size = round(scales[0] ** 2)
    if not head_size or hidden % head_size or not math.isclose(scales[0], head_size ** 0.5,
                                                               rel_tol=1e-4):
        raise CheckpointError(f"{path}: attention scale {scales[0]} is not sqrt of a head size "
                              f"dividing {hidden}")
    eps = next((a.f for node in graph.node if node.op_type == "LayerNormalization"
                for a in node.attribute if a.name == "epsilon"), 1e-12)
    if not any(node.op_type == "Erf" for node in graph.node):
        raise CheckpointError(f"{path}: no Erf in the graph: not an exact-GELU BERT")
    return BertConfig(vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(ffn),
                      num_layers=layers, num_heads=hidden // head_size,
                      max_position_embeddings=int(positions), type_vocab_size=int(types),
                      layer_norm_eps=float(eps), hidden_act="gelu",
                      add_pooler="pooler.dense.weight" in tensors)
