"""What a compiled, SPMD-partitioned program does per device, read from its HLO text: bytes each
collective kind moves, the FLOPs of its matrix products and its HBM traffic, loops counted by
their trip counts.

Why parse the text: `compiled.cost_analysis()` counts a `while` body once (GradCache's chunk
loop runs it n times) and reports no collectives at all. Every instruction of the per-device
program is `%name = SHAPE opcode(%operands), attributes`; computations a loop runs n times have
their instructions counted n times. XLA:CPU writes n on the loop (`backend_config={...
"known_trip_count":{"n":"N"}}`); the TPU compiler does not, and its loops stop when the counter
compares LT with a constant N (`compare(%counter, %N), direction=LT` as the condition's root),
which is read as n = N (counters start at 0 and step by 1 in the loops JAX and XLA emit).

Matrix products are `dot`s on CPU and GPU; the TPU compiler writes them as `convolution`s whose
spatial dimensions carry batch-like axes, often with a padded window (a size-2 window over a
zero-padded size-1 axis). A convolution's FLOPs count only the multiply-adds that meet real
input: per spatial axis, the (output position, window position) pairs that land inside the
unpadded input.

HBM traffic: every instruction outside a fusion reads its operands from memory and writes its
result (a fusion is one kernel: what happens inside stays in registers / VMEM); tuple plumbing,
parameters, constants and bitcasts move nothing. Only buffers in HBM count: the TPU compiler
places some in VMEM (memory space S(1) in their layout) and moves them with async copies and
slices, each counted once, on its HBM side. Slicing reads only the slice (`dynamic-slice`,
`gather`: the result's bytes read and written), and an in-place update writes only the update
(`dynamic-update-slice`, `scatter`, or a fusion ending in one: GradCache's loops fill their
output buffers this way). A lower bound on the bytes of the step
(caches and re-reads inside a kernel are not seen), used for the roofline's memory time.

Collective bytes are the data one device sends over the interconnect with the usual ring
algorithms on a group of n devices: all-gather and reduce-scatter (n-1)/n of the full array,
all-reduce 2(n-1)/n of it, collective-permute and all-to-all the array (all-to-all (n-1)/n).
XLA:CPU writes a reduce-scatter as an all-reduce followed by a dynamic slice (TPU and GPU
compilers fuse the pair into one reduce-scatter); an all-reduce whose every user slices it
(directly, or after converting a float32-promoted bf16 sum back to bf16) is counted as the
reduce-scatter those backends run.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_LAYOUT = re.compile(r"\{([^}]*)\}")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
# TPU custom calls that move no data: buffer allocation, bitcasts, an index-range promise, and
# the wait of an async collective (its start wrote the result).
_NO_TRAFFIC_TARGETS = frozenset({"AllocateBuffer", "ConcatBitcast", "AssumeGatherIndicesInBound",
                                 "AsyncCollectiveDone"})
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\([^)]*\))?\s*\{([^}]*)\}")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str        # result shape text, e.g. "f32[64,128]{1,0}" or a "(...)" tuple
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    literal: str = ""  # a constant's value, e.g. "256"


@dataclasses.dataclass(frozen=True)
class ProgramStats:
    """Per-device totals of one compiled step: collective bytes sent by kind, and matmul FLOPs."""

    collective_bytes: dict[str, float]
    matmul_flops: float
    unknown_trip_counts: int  # while loops without a known trip count (counted once)
    hbm_bytes: float = 0.0    # read + written by the kernels (see module docstring)


# Instructions that launch no kernel: no HBM traffic of their own.
_NO_TRAFFIC = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call",
                         "conditional", "after-all", "partition-id", "replica-id", "opt-barrier", "domain"})


def _arrays(shape: str) -> list[tuple[int, bool]]:
    """(bytes, in HBM) of each array in a shape text, in order (tuples flattened). The TPU
    compiler writes a buffer's memory space into its layout (`{1,0:T(8,128)S(1)}`): S(1) is VMEM,
    the core's own memory; higher spaces hold scalars and semaphores. Unmarked is HBM."""
    out = []
    for found in _ARRAY.finditer(shape):
        layout = _LAYOUT.match(shape, found.end())
        space = _MEMORY_SPACE.search(layout.group(1)) if layout else None
        size = _DTYPE_BYTES.get(found.group(1), 0) * math.prod(int(d) for d in found.group(2).split(",") if d)
        out.append((size, space is None or space.group(1) == "0"))
    return out


def array_bytes(shape: str) -> int:
    """Bytes of every array in a shape text (a tuple sums its elements; tokens count 0)."""
    return sum(size for size, _ in _arrays(shape))


def hbm_bytes(shape: str) -> int:
    """Bytes of the arrays of a shape text that live in HBM (see `_arrays`)."""
    return sum(size for size, in_hbm in _arrays(shape) if in_hbm)


def _dims(shape: str) -> list[int]:
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []


def _split_instruction(line: str) -> Instruction | None:
    """`[ROOT] %name = SHAPE opcode(operands), attributes` -> Instruction (None for other lines)."""
    text = line.strip()
    if text.startswith("ROOT "):
        text = text[5:]
    if not text.startswith("%") or " = " not in text:
        return None
    name, rest = text[1:].split(" = ", 1)
    if rest.startswith("("):  # tuple shape: up to its matching parenthesis
        depth = 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        shape, rest = rest[: end + 1], rest[end + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    opcode, _, rest = rest.partition("(")
    depth, end = 1, 0
    for end, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            break
    operands = tuple(op.strip().lstrip("%") for op in rest[:end].split(",") if op.strip().startswith("%"))
    literal = rest[:end].strip() if opcode == "constant" else ""
    return Instruction(name, shape, opcode, operands, rest[end + 1:], literal)


def parse_computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """(computation name -> its instructions, the ENTRY computation's name)."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line.strip()) if "=" not in line.split("(", 1)[0] else None
        if header:
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
            continue
        instruction = _split_instruction(line) if current is not None else None
        if instruction is not None:
            computations[current].append(instruction)
    return computations, entry


def _multipliers(computations: dict[str, list[Instruction]], entry: str) -> tuple[dict[str, int], int]:
    """How often each computation runs per call of ENTRY, and how many loops had no trip count."""
    times: dict[str, int] = {}
    unknown = 0

    def visit(name: str, count: int) -> None:
        nonlocal unknown
        times[name] = times.get(name, 0) + count
        for inst in computations.get(name, ()):
            trip = _trip_count(inst, computations) if inst.opcode == "while" else None
            if inst.opcode == "while" and trip is None:
                unknown += 1
            callees = [(kind, callee) for kind, callee in _CALLEE.findall(inst.attributes)]
            branches = _BRANCHES.search(inst.attributes)
            if branches:
                callees += [("branch", b.strip().lstrip("%")) for b in branches.group(1).split(",") if b.strip()]
            for kind, callee in callees:
                if kind == "to_apply" and inst.opcode not in ("call", "map"):
                    continue  # reductions' scalar combiners
                loops = trip if kind in ("body", "condition") and trip else 1
                visit(callee, count * loops)

    visit(entry, 1)
    return times, unknown


def _trip_count(loop: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
    """Iterations of a `while`: XLA's known_trip_count, else N of a `counter < N` condition."""
    known = _TRIP.search(loop.attributes)
    if known:
        return int(known.group(1))
    condition = re.search(r"\bcondition=%([\w.\-]+)", loop.attributes)
    insts = computations.get(condition.group(1), []) if condition else []
    constants = {i.name: i.literal for i in insts if i.opcode == "constant"}
    root = insts[-1] if insts else None
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attributes or len(root.operands) != 2:
        return None
    bound = constants.get(root.operands[1], "")
    return int(bound) if bound.isdigit() else None


def _group_size(attributes: str, default: int) -> int:
    """Devices in each replica group of a collective (`default` when none is written: all)."""
    mesh = _MESH_GROUPS.search(attributes)
    if mesh:
        sizes = {k.strip().strip("'"): int(v) for k, v in (p.split("=") for p in mesh.group(1).split(",") if p)}
        return math.prod(sizes[a.strip().strip("'")] for a in mesh.group(2).split(",") if a.strip())
    listed = _LIST_GROUPS.search(attributes)
    if listed:
        return len([d for d in listed.group(1).split(",") if d])
    iota = _IOTA_GROUPS.search(attributes)
    return int(iota.group(2)) if iota else default


def _element_users(inst: Instruction, element: int | None, users: dict[str, list[Instruction]]) -> list[Instruction]:
    """Users of `inst`'s result, or of tuple element `element` (through its get-tuple-elements)."""
    if element is None:
        return users.get(inst.name, [])
    picks = [u for u in users.get(inst.name, []) if u.opcode == "get-tuple-element"
             and re.search(rf"\bindex={element}\b", u.attributes)]
    return [user for pick in picks for user in users.get(pick.name, [])]


def _slices_only(found: list[Instruction], computations: dict[str, list[Instruction]],
                 users: dict[str, list[Instruction]]) -> bool:
    """Every user is a dynamic slice (or a fusion computing one): the all-reduce is a reduce-scatter.

    A dtype conversion in between is looked through: XLA:CPU all-reduces bf16 in float32 and
    converts the sum back before slicing it (TPU/GPU reduce-scatter the bf16 array directly).
    """
    def fused(user: Instruction) -> list[str]:
        called = _CALLEE.search(user.attributes)
        return [i.opcode for i in computations.get(called.group(2), ())] if user.opcode == "fusion" and called else []

    def slicing(user: Instruction) -> bool:
        if user.opcode == "dynamic-slice" or "dynamic-slice" in fused(user):
            return True
        converting = user.opcode == "convert" or set(fused(user)) - {"parameter"} == {"convert"}
        return converting and _slices_only(users.get(user.name, []), computations, users)
    return bool(found) and all(slicing(u) for u in found)


def _collective_bytes(inst: Instruction, n: int, shapes: dict[str, str], users: dict[str, list[Instruction]],
                      computations: dict[str, list[Instruction]]) -> dict[str, float]:
    """Bytes one device sends for one collective instruction, by kind (see the module docstring)."""
    kind = inst.opcode.removesuffix("-start")
    elements = [m.group(0) for m in _ARRAY.finditer(inst.shape)]
    if kind == "reduce-scatter":
        sizes = {kind: float(array_bytes(shapes.get(inst.operands[0], inst.shape)))}
    elif kind == "all-reduce":  # element-wise: a tuple all-reduce may hold reduce-scatters too
        sizes = {"all-reduce": 0.0, "reduce-scatter": 0.0}
        tupled = inst.shape.startswith("(")
        for k, element in enumerate(elements):
            sliced = _slices_only(_element_users(inst, k if tupled else None, users), computations, users)
            sizes["reduce-scatter" if sliced else "all-reduce"] += array_bytes(element)
    else:  # async starts return (operand, result) tuples: the largest is the full array
        sizes = {kind: float(max((array_bytes(e) for e in elements), default=0))}
    factor = {"all-gather": (n - 1) / n, "reduce-scatter": (n - 1) / n, "all-reduce": 2 * (n - 1) / n,
              "collective-permute": 1.0, "all-to-all": (n - 1) / n}
    return {k: factor[k] * v for k, v in sizes.items()}


def program_stats(hlo_text: str, num_devices: int) -> ProgramStats:
    """Collective bytes sent per device by kind, and dot FLOPs, of one compiled program."""
    computations, entry = parse_computations(hlo_text)
    times, unknown = _multipliers(computations, entry)
    shapes = {i.name: i.shape for insts in computations.values() for i in insts}
    users: dict[str, list[Instruction]] = {}
    for insts in computations.values():
        for inst in insts:
            for op in inst.operands:
                users.setdefault(op, []).append(inst)
    sent = dict.fromkeys(COLLECTIVE_KINDS, 0.0)
    flops = hbm = 0.0
    kernels = _fusion_bodies(computations)
    sent_channels: set[str] = set()
    moved_channels: set[str] = set()
    for comp, insts in computations.items():
        count = times.get(comp, 0)
        for inst in insts:
            if count and comp not in kernels and inst.opcode not in _NO_TRAFFIC:
                hbm += count * _traffic(inst, shapes, computations, moved_channels)
            if (inst.opcode.removesuffix("-start") in COLLECTIVE_KINDS and count
                    and (comp not in kernels or _first(inst, sent_channels))):
                n = _group_size(inst.attributes, num_devices)
                for kind, sent_bytes in _collective_bytes(inst, n, shapes, users, computations).items():
                    sent[kind] += count * sent_bytes
            elif inst.opcode in ("dot", "convolution") and count:
                flops += count * _matmul_flops(inst, shapes)
    return ProgramStats(sent, flops, unknown, hbm)


def _traffic(inst: Instruction, shapes: dict[str, str], computations: dict[str, list[Instruction]],
             channels: set[str]) -> float:
    """HBM bytes one kernel reads and writes (see the module docstring); `channels`: the
    collectives already counted."""
    kind, target = inst.opcode, ""
    if kind == "fusion":
        target, body = _root_target(inst, computations)
        kind = body[-1].opcode if body else kind
        collectives = [i for i in body if i.opcode.removesuffix("-start") in COLLECTIVE_KINDS]
        if collectives and target != "AsyncCollectiveDone":
            # the TPU compiler's collective kernels pass the collective's buffers through their
            # outputs (aliased): the traffic is the collective's read and write, counted once
            return float(sum(hbm_bytes(c.shape) + sum(hbm_bytes(shapes.get(op, "")) for op in c.operands)
                             for c in collectives if _first(c, channels)))
    elif kind == "custom-call":
        found = _TARGET.search(inst.attributes)
        target = found.group(1) if found else ""
    if target in _NO_TRAFFIC_TARGETS or inst.opcode.endswith("-done"):
        return 0.0  # an async op's data moves in its -start
    if inst.opcode in ("copy-start", "slice-start"):
        return _moved(inst.shape, inst.opcode)
    if inst.opcode.endswith("-start") and inst.shape.startswith("("):
        return float(hbm_bytes(inst.shape))  # (operand, result, contexts): one read, one write
    if kind in ("dynamic-slice", "gather"):  # the slice is read (sources this big live in HBM), then written
        return float(array_bytes(inst.shape) + hbm_bytes(inst.shape))
    if kind in ("dynamic-update-slice", "scatter"):
        updates = [hbm_bytes(shapes.get(op, "")) for op in inst.operands[1:]]
        return 2.0 * max(updates, default=0)
    return float(hbm_bytes(inst.shape) + sum(hbm_bytes(shapes.get(op, "")) for op in inst.operands))


def _moved(shape: str, opcode: str) -> float:
    """An async copy between memories (`copy-start`: (destination, source, context)) or a slice
    fetched into one (`slice-start`: ((source), destination, context)): the moved bytes are read
    from the source and written to the destination, HBM traffic on whichever side is HBM."""
    arrays = _arrays(shape)
    if len(arrays) < 2:
        return 0.0
    destination, source = (arrays[0], arrays[1]) if opcode == "copy-start" else (arrays[1], arrays[0])
    return float(destination[0] * (int(source[1]) + int(destination[1])))


def _root_target(inst: Instruction, computations: dict[str, list[Instruction]]) -> tuple[str, list[Instruction]]:
    """(custom-call target of a fusion's root, or "", the fusion's body) of a fusion."""
    body = _CALLEE.search(inst.attributes)
    insts = computations.get(body.group(2), []) if body else []
    target = _TARGET.search(insts[-1].attributes) if insts and insts[-1].opcode == "custom-call" else None
    return (target.group(1) if target else ""), insts


def _first(collective: Instruction, seen: set[str]) -> bool:
    """Whether this is the first time the channel of `collective`, inside a kernel, is met. The
    TPU compiler splits an async collective into kernels (start, compute that overlaps it, done)
    that each repeat the collective with the same channel_id; it runs once. (Only kernels' copies
    are matched: XLA:CPU gives distinct collectives of a GradCache step one channel id.)"""
    channel = _CHANNEL.search(collective.attributes)
    if channel is not None and channel.group(1) in seen:
        return False
    seen.update([channel.group(1)] if channel else [])
    return True


def _fusion_bodies(computations: dict[str, list[Instruction]]) -> set[str]:
    """Computations that run inside a kernel: fusion bodies and everything they call
    (reductions' combiners included)."""
    inside: set[str] = set()
    pending = [callee for insts in computations.values() for inst in insts if inst.opcode == "fusion"
               for _, callee in _CALLEE.findall(inst.attributes)]
    while pending:
        name = pending.pop()
        if name not in inside:
            inside.add(name)
            pending += [callee for inst in computations.get(name, ()) for _, callee in _CALLEE.findall(inst.attributes)]
    return inside


def _matmul_flops(inst: Instruction, shapes: dict[str, str]) -> float:
    """2 x the multiply-adds of one `dot` or `convolution` (padding excluded, see module docstring)."""
    operands = [_dims(shapes.get(op, "")) for op in inst.operands[:2]]
    if inst.opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attributes)
        lhs = operands[0] if operands else []
        k = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting and lhs else 1
        return 2.0 * math.prod(_dims(inst.shape)) * k
    labels = _DIM_LABELS.search(inst.attributes)
    if labels is None or len(operands) != 2:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    lhs, rhs, out = operands[0], operands[1], _dims(inst.shape)
    macs = out[out_labels.index("b")] * out[out_labels.index("f")] * rhs[rhs_labels.index("i")]
    window = _WINDOW.search(inst.attributes)
    fields = dict(f.split("=", 1) for f in window.group(1).split()) if window else {}
    for axis in sorted(c for c in out_labels if c.isdigit()):
        k = int(axis)
        macs *= _window_pairs(lhs[lhs_labels.index(axis)], rhs[rhs_labels.index(axis)], out[out_labels.index(axis)],
                              *(_window_field(fields, name, k, default) for name, default in
                                (("pad", "0_0"), ("stride", "1"), ("lhs_dilate", "1"), ("rhs_dilate", "1"))))
    return 2.0 * macs


def _window_field(fields: dict[str, str], name: str, axis: int, default: str) -> str:
    """Spatial axis `axis`'s entry of a window field ("1_1" of pad=0_0x1_1), or `default`."""
    values = fields.get(name, "").split("x")
    return values[axis] if axis < len(values) and values[axis] else default


def _window_pairs(size: int, window: int, out: int, pad: str, stride: str, lhs_dilate: str, rhs_dilate: str) -> int:
    """(output position, window position) pairs of one spatial axis that read real input."""
    low, dilate = int(pad.split("_")[0]), int(lhs_dilate)
    index = (np.arange(out)[:, None] * int(stride) + np.arange(window)[None, :] * int(rhs_dilate) - low)
    inside = (index >= 0) & (index <= (size - 1) * dilate) & (index % dilate == 0)
    return int(inside.sum())
