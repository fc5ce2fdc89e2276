"""Trace a model by running it once: every tensor op and module call becomes a graph node.

Real execution (``TorchFunctionMode`` plus global module hooks) instead of ``torch.fx``
symbolic tracing: it records the path actually taken through Python control flow, sees
real shapes, and costs about one forward pass. It runs under ``torch.no_grad()`` because
nothing here needs autograd, and it restores everything the forward could have moved
(buffers such as BatchNorm running statistics, and the RNG state).
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any, Mapping

import networkx as nx
import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode

from .._walk import Walk, walk
from .._gc import paused_gc
from .._rng import preserved_rng
from .._progress import progress_bar
from ..errors import TraceError
from .caches import drop_derived
from .experts import every_expert
from .opnames import OpName, canonical_name, qualified_name
from .refs import Ref, iter_tensors, map_structure
from .sizes import new_call, note_read, sized_by
from .where import caller_line, owning_layer, size_attributes

log = logging.getLogger(__name__)
_SCALARS = (int, float, bool, str)

@dataclasses.dataclass(eq=False)
class Record:
    """One node of the trace, kept as a plain object until the graph is built."""

    name: str
    kind: str                      # input | param | buffer | constant | call | output
    op: str
    target: str = ""
    module: str = ""               # innermost module whose forward was running
    module_type: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    out_dtypes: list[str] = dataclasses.field(default_factory=list)
    inplace: bool = False
    order: int = -1                # position in forward order
    inputs: list[Ref] = dataclasses.field(default_factory=list)  # tensor arguments, in order
    slice: int | None = None       # a stacked parameter's slice ``param[slice]`` (see stack_slice)
    full_shape: tuple[int, ...] = ()  # of that stacked parameter
    where: str | None = None       # the model's line that made it (a source: the line that first used it)
    sized_by: dict = dataclasses.field(default_factory=dict)  # a reshape's sizes read from shapes (see .sizes)


class _Recorder(TorchFunctionMode):
    """Forwards every torch function call to :class:`_Trace` after running it."""

    def __init__(self, trace: "_Trace") -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.trace.record_call(func, args, kwargs, out)
        return out


class _Trace:
    """State of one tracing run: records, the tensor→ref table and the module scope stack."""

    def __init__(self, modules: Walk) -> None:
        self.records: list[Record] = []
        self.names: set[str] = set()
        self.suffix: dict[str, int] = {}
        self.tensors: dict[int, tuple[weakref.ref, Ref]] = {}
        self.module_names = modules.path_of  # first path of each module, by id
        self.by_path = modules.by_path
        self.leaf: set[int] = set()
        self.owned: dict[int, tuple[str, str]] = {}
        self.layers: dict[str, str] = {}  # parameter/buffer name -> layer name
        self.buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
        for path, mod in modules.items:
            leaf = not mod._modules
            if leaf:
                self.leaf.add(id(mod))
            owner = owning_layer(mod, path, leaf)
            for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
                for attr, tensor in table.items():
                    if kind == "buffer" and tensor is not None:
                        self.buffers.append((mod, attr, tensor))
                    if tensor is not None and id(tensor) not in self.owned:
                        name = f"{path}.{attr}" if path else attr
                        self.owned[id(tensor)] = (kind, name)
                        self.layers[name] = owner if owner is not None else name
        self.scopes: list[tuple[nn.Module, str, int]] = []
        self.reads: dict = {}  # call depth -> shapes that call read (see .sizes)
        self.scope: tuple[str, str] = ("", "")  # innermost module: path and type name
        self.calls: dict[str, int] = {}
        self.func_names: dict[Any, tuple[OpName, str]] = {}
        self.seen: list[Ref] = []
        self.where: str | None = None  # the model's line of the op being recorded
        self.bar = progress_bar(len(self.leaf), "tracing")  # one tick per leaf module call

    # -- naming -----------------------------------------------------------------------
    def unique(self, base: str) -> str:
        """``base``, or ``base_k`` with the next free k (a counter per base keeps this O(1))."""
        name, k = base, self.suffix.get(base, 0)
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.suffix[base] = k
        self.names.add(name)
        return name

    def _set_scope(self) -> None:
        self.scope = (self.scopes[-1][1], type(self.scopes[-1][0]).__name__) if self.scopes else ("", "")

    # -- tensors ----------------------------------------------------------------------
    def bind(self, tensor: torch.Tensor, ref: Ref) -> None:
        self.tensors[id(tensor)] = (weakref.ref(tensor), ref)

    def lookup(self, tensor: torch.Tensor) -> Ref | None:
        entry = self.tensors.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return None

    def ref_of(self, tensor: torch.Tensor) -> Ref:
        """The ref of ``tensor``, creating a param/buffer/constant node on first sight.

        Every ref handed out is also appended to :attr:`seen`, the current op's inputs.
        """
        ref = self.lookup(tensor)
        if ref is None:
            ref = self._new_source(tensor)
        self.seen.append(ref)
        return ref

    def _new_source(self, tensor: torch.Tensor) -> Ref:
        """A parameter, buffer or outside tensor seen for the first time becomes a node,
        placed at the line of the op that first uses it (:attr:`where`)."""
        kind, name = self.owned.get(id(tensor), ("constant", ""))
        record = self.add(Record(name=self.unique(name or "constant"), kind=kind, op=kind,
                                 target=name, out_shapes=[tuple(tensor.shape)],
                                 out_dtypes=[str(tensor.dtype)], where=self.where))
        ref = Ref(record, 0)
        self.bind(tensor, ref)
        return ref

    def add(self, record: Record) -> Record:
        record.order = len(self.records)
        self.records.append(record)
        return record

    # -- recording --------------------------------------------------------------------
    def add_inputs(self, example: Any) -> None:
        for i, tensor in enumerate(iter_tensors(example)):
            record = self.add(Record(name=self.unique(f"input_{i}"), kind="input", op="input",
                                     out_shapes=[tuple(tensor.shape)],
                                     out_dtypes=[str(tensor.dtype)]))  # no line: the caller's, not the model's
            self.bind(tensor, Ref(record, 0))

    def names_of(self, func) -> tuple[OpName, str]:
        """Canonical and qualified names of ``func``, cached: this runs for every op."""
        found = self.func_names.get(func)
        if found is None:
            found = self.func_names[func] = (canonical_name(func), qualified_name(func))
        return found

    def refs(self, values: tuple) -> tuple:
        """``values`` with tensors replaced by refs; scalars and tuples of ints (a conv's stride) kept as they are."""
        out = []
        for v in values:
            if isinstance(v, torch.Tensor):
                out.append(self.ref_of(v))
            elif v is None or type(v) in _SCALARS or (type(v) is tuple and all(type(e) is int for e in v)):
                out.append(v)
            else:
                out.append(map_structure(v, self.ref_of))
        return tuple(out)

    def stack_slice(self, op: str, args: tuple, out: Any) -> bool:
        """Record ``param[e]`` of a stacked parameter as a parameter of its own.

        A parameter of 3 or more dims indexed by an integer along dim 0 (a layer's experts
        stored as ``gate_up_proj[E, 2I, H]``) is a stack of separate weights: slice ``e`` is
        expert ``e``'s matrix, with channels of its own. The index may be a Python int or,
        as in transformers' eager expert loop, a 0-d integer tensor, whose value is read.
        """
        if op == "getitem" and len(args) == 2:
            index = args[1]
        elif op == "select" and len(args) == 3 and args[1] == 0:
            index = args[2]
        else:
            return False
        param = args[0]
        if not isinstance(param, nn.Parameter) or param.dim() < 3 or param.shape[0] < 2:
            return False
        if isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point() \
                and index.dtype != torch.bool:
            index = int(index)
        owned = self.owned.get(id(param))
        if type(index) is not int or owned is None or not isinstance(out, torch.Tensor):
            return False
        e = index % param.shape[0]
        record = self.add(Record(name=self.unique(f"{owned[1]}[{e}]"), kind="param", op="param",
                                 target=owned[1], out_shapes=[tuple(out.shape)], out_dtypes=[str(out.dtype)],
                                 slice=e, full_shape=tuple(param.shape), where=caller_line(2)))
        self.bind(out, Ref(record, 0))
        return True

    def record_call(self, func, args, kwargs, out) -> None:
        opname, target = self.names_of(func)
        if opname.op in ("getitem", "select") and not kwargs and self.stack_slice(opname.op, args, out):
            return
        inplace_target = args[0] if opname.inplace and args and isinstance(args[0], torch.Tensor) else None
        outputs = [out] if isinstance(out, torch.Tensor) else list(iter_tensors(out))
        if not outputs and inplace_target is None:
            note_read(self.reads, len(self.scopes), opname.op, args, self.lookup)
            return  # shape queries, ``bool(x)``, ``x.item()``: nothing flows on as a tensor
        if inplace_target is not None and not outputs:
            outputs = [inplace_target]
        if opname.reflected and len(args) >= 2:
            args = (args[1], args[0], *args[2:])
        self.seen, self.where = [], caller_line(2)  # one frame walk per op, shared with new sources
        rec_args = self.refs(args)
        rec_kwargs = dict(zip(kwargs, self.refs(tuple(kwargs.values())))) if kwargs else {}
        module, module_type = self.scope
        base = f"{module}:{opname.op}" if module else opname.op
        record = self.add(Record(
            name=self.unique(base), kind="call", op=opname.op, target=target,
            module=module, module_type=module_type, args=rec_args, kwargs=rec_kwargs,
            out_shapes=[tuple(t.shape) for t in outputs],
            out_dtypes=[str(t.dtype) for t in outputs], inplace=opname.inplace, inputs=self.seen,
            where=self.where, sized_by=sized_by(self.reads, len(self.scopes), opname.op, args,
                              self.scopes[-1][0] if self.scopes else None)))
        for i, t in enumerate(outputs):
            self.bind(t, Ref(record, i))
        if inplace_target is not None and inplace_target._base is not None:
            self.mark_view_write(inplace_target._base, record)

    def mark_view_write(self, base: torch.Tensor, writer: Record) -> None:
        """An in-place op wrote through a view: the base tensor changed behind our back.

        The base is re-pointed at a ``view_write`` node that no rule understands, so any
        channels it carries are reported as not prunable instead of being mis-tracked.
        """
        base_ref = self.lookup(base)
        if base_ref is None:
            return
        module, module_type = self.scope
        record = self.add(Record(
            name=self.unique(f"{module}:view_write" if module else "view_write"), kind="call",
            op="view_write", target="in-place write through a view", module=module,
            module_type=module_type, args=(base_ref, Ref(writer, 0)),
            out_shapes=[tuple(base.shape)], out_dtypes=[str(base.dtype)],
            inputs=[base_ref, Ref(writer, 0)], where=writer.where))
        self.bind(base, Ref(record, 0))

    def add_output(self, out: Any) -> None:
        """The output node; ``target`` names a ``ModelOutput``'s type (see the ``output`` rule)."""
        self.seen, self.where = [], None  # the output's line is the caller's, not the model's
        args, named = (map_structure(out, self.ref_of),), dataclasses.is_dataclass(out) and isinstance(out, Mapping)
        self.add(Record(name=self.unique("output"), kind="output", op="output",
                        target=type(out).__name__ if named else "", args=args, inputs=self.seen))

    # -- module hooks -----------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: Any) -> None:
        name = self.module_names.get(id(module))
        if name is None:  # a module created inside forward: keep the caller's scope
            name = self.scope[0]
        self.scopes.append((module, name, len(self.records)))
        new_call(self.reads, len(self.scopes))
        self._set_scope()

    def post_hook(self, module: nn.Module, args: Any, out: Any) -> None:
        # Unwind to this module's scope: a forward that caught an exception from a child
        # leaves that child's scope behind. On an uncaught exception no post hook runs, so
        # the stack still names the failing module for the error message.
        while self.scopes and self.scopes[-1][0] is not module:
            self.scopes.pop()
        if not self.scopes:
            return
        _, name, first = self.scopes.pop()
        self._set_scope()
        if id(module) in self.leaf:
            self.bar.update()
        first_out = out if isinstance(out, torch.Tensor) else next(iter_tensors(out), None)
        ref = self.lookup(first_out) if first_out is not None else None
        # Name the node that produced a module's output after the module, so the graph
        # reads like the model ("features.0.0" rather than "features.0.0:conv2d"). Only
        # leaf modules and single-op modules qualify, only for an op recorded during this
        # call, and only once: an inner module's name (no ':') wins.
        if (not name or ref is None or ref.index != 0 or ref.record.order < first
                or ":" not in ref.record.name):
            return
        if id(module) not in self.leaf and len(self.records) - first != 1:
            return
        count = self.calls.get(name, 0)
        self.calls[name] = count + 1
        new = name if count == 0 else f"{name}#{count}"
        if new not in self.names:
            self.names.discard(ref.record.name)
            self.names.add(new)
            ref.record.name = new


def _restore(state: "_Trace", saved: list[torch.Tensor]) -> None:
    """Put buffers back (a train-mode forward moves BatchNorm statistics)."""
    with torch.no_grad():
        for (module, attr, original), value in zip(state.buffers, saved):
            current = module._buffers.get(attr)
            if current is not original:  # a forward that rebinds a buffer: bind it back
                module._buffers[attr] = original
            original.copy_(value)


def _call(model: nn.Module, example: Any) -> Any:
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    if isinstance(example, torch.Tensor):
        return model(example)
    raise TraceError(f"example inputs must be a tensor, a tuple or a dict, got {type(example).__name__}")


def trace(model: nn.Module, example_inputs: Any) -> nx.DiGraph:
    """Run ``model`` once on ``example_inputs`` and return its op graph.

    ``example_inputs`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments. Nodes are named like ``features.0.0`` (a leaf module's op) or
    ``layer1.0:add`` (a function called inside ``layer1.0``); each carries ``kind``, ``op``,
    ``target``, ``module``, ``module_type``, ``args``/``kwargs`` (with :class:`Ref` in
    place of tensors), ``out_shapes``, ``out_dtypes`` and ``order``; a stacked parameter's
    slice (``experts.gate_up_proj[3]``) is a ``param`` node with ``slice`` set. Mixture-of-
    experts layers run every expert (:mod:`.experts`). An edge ``u -> v``
    means a tensor produced by ``u`` is an argument of ``v``. The model's mode, buffers,
    ``requires_grad`` flags and the global RNG are left exactly as they were.
    """
    modules = walk(model)
    drop_derived(model)  # a tensor the model kept would hide the parameter it comes from
    state = _Trace(modules)
    state.add_inputs(example_inputs)
    experts = every_expert(mod for _, mod in modules.items)
    saved = [b.detach().clone() for _, _, b in state.buffers]  # _restore puts them back
    pre = module_hooks.register_module_forward_pre_hook(state.pre_hook)
    post = module_hooks.register_module_forward_hook(state.post_hook)
    try:
        with paused_gc():
            with preserved_rng(), torch.no_grad(), experts, _Recorder(state):
                out = _call(model, example_inputs)
            state.add_output(out)
    except TraceError:
        raise
    except Exception as exc:
        where = state.scopes[-1][1] if state.scopes else ""
        mtype = type(state.scopes[-1][0]).__name__ if state.scopes else type(model).__name__
        raise TraceError(f"tracing failed in module '{where or '<root>'}' ({mtype}): "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        pre.remove()
        post.remove()
        state.bar.close()
        _restore(state, saved)
    with paused_gc():
        return _build_graph(state.records, model, state)


def _build_graph(records: list[Record], model: nn.Module, state: _Trace) -> nx.DiGraph:
    graph = nx.DiGraph(model=type(model).__name__)
    graph.add_nodes_from(rec.name for rec in records)
    nodes, edges = graph.nodes, {}
    for rec in records:
        attrs = nodes[rec.name]  # filled in place: (name, attrs) pairs cost networkx a copy and a caught TypeError each
        attrs.update(rec.__dict__)
        del attrs["name"], attrs["inputs"]
        for ref in rec.inputs:
            key = (ref.node, rec.name)
            edge = edges.get(key)
            if edge is None:
                edges[key] = {"index": ref.index, "uses": 1}
            else:
                edge["uses"] += 1
    graph.add_edges_from((u, v, attrs) for (u, v), attrs in edges.items())
    graph.graph["output"] = records[-1].name
    graph.graph["params"] = {rec.target: rec.full_shape if rec.slice is not None else rec.out_shapes[0]
                             for rec in records if rec.kind in ("param", "buffer")}
    graph.graph["layers"] = {name: state.layers[name] for name in graph.graph["params"]}
    graph.graph["sizes"] = size_attributes(state.by_path, {rec.module for rec in records if rec.kind == "call"})
    return graph
